"""A provider's failures on demand: an ASGI middleware in front of an OpenAI-compatible
app (the engine server, or any other) that makes its ``/v1`` endpoints hang, answer an
HTTP error, drop the connection mid-response or answer garbage — the ways a remote STT,
LLM or TTS provider fails in production, made real over real sockets for the failover
tests and the chaos benchmark. (A provider that refuses connections is a stopped server.)

Driven over HTTP on the same server, so a test can steer a provider in another process:

* ``POST /_faults`` ``{"mode": "none" | "hang" | "status" | "drop_after" | "malformed",
  "status": 500, "retry_after": 2.5, "chunks": 3, "paths": ["/v1/chat/completions"]}``
  (every field optional; each POST replaces the whole plan),
* ``GET /_faults``: the plan and the requests seen per path, breaker probes (requests
  carrying ``X-Parley-Probe: 1``) counted apart from traffic,
* ``POST /_faults/reset``: the counters back to zero.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

Mode = Literal["none", "hang", "status", "drop_after", "malformed"]
MODES: tuple[Mode, ...] = ("none", "hang", "status", "drop_after", "malformed")
CONTROL_PATH = "/_faults"
RESET_PATH = "/_faults/reset"
PROBE_HEADER = b"x-parley-probe"


@dataclass(frozen=True, slots=True)
class FaultPlan:
    mode: Mode = "none"
    status: int = 500
    """``status``: the HTTP status answered."""
    retry_after: float | None = None
    """``status``: a ``Retry-After`` header, in seconds (a 429's, typically)."""
    chunks: int = 1
    """``drop_after``: body chunks (SSE events, PCM chunks) passed before the cut."""
    paths: tuple[str, ...] | None = None
    """Only these paths fail (default: every ``/v1`` path)."""

    @classmethod
    def from_json(cls, body: object) -> FaultPlan:
        """The plan a control request asks for; ``ValueError`` says what is wrong."""
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        unknown = set(body) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}")
        mode = body.get("mode", "none")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}")
        status = body.get("status", 500)
        if not _is_int(status) or not 100 <= status <= 599:
            raise ValueError("status must be an HTTP status code")
        retry_after = body.get("retry_after")
        if retry_after is not None and (not _is_number(retry_after) or retry_after < 0):
            raise ValueError("retry_after must be a number of seconds")
        chunks = body.get("chunks", 1)
        if not _is_int(chunks) or chunks < 0:
            raise ValueError("chunks must be a non-negative integer")
        paths = body.get("paths")
        if paths is not None and (
            not isinstance(paths, list) or not all(isinstance(p, str) for p in paths)
        ):
            raise ValueError("paths must be an array of paths")
        return cls(
            mode,
            status,
            None if retry_after is None else float(retry_after),
            chunks,
            None if paths is None else tuple(paths),
        )

    def applies_to(self, path: str) -> bool:
        return self.mode != "none" and (self.paths is None or path in self.paths)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class _Cut(Exception):
    """Raised into the app's ``send`` to abandon its response mid-body."""


class FaultInjector:
    """Wraps ``app``; faults apply to HTTP requests whose path is under ``/v1``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.plan = FaultPlan()
        self.requests: Counter[str] = Counter()
        self.probes: Counter[str] = Counter()

    # -- the Python side of the control API (what /_faults calls) --

    def set(self, **plan: Any) -> FaultPlan:
        """Replace the plan (``FaultPlan``'s fields; ``ValueError`` if one is wrong)."""
        self.plan = FaultPlan.from_json(plan)
        return self.plan

    def reset_counters(self) -> None:
        self.requests.clear()
        self.probes.clear()

    def snapshot(self) -> dict[str, Any]:
        plan = asdict(self.plan)
        plan["paths"] = None if self.plan.paths is None else list(self.plan.paths)
        return {**plan, "requests": dict(self.requests), "probes": dict(self.probes)}

    # -- ASGI --

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if path in (CONTROL_PATH, RESET_PATH):
            await self._control(scope, receive, send)
            return
        if path != "/v1" and not path.startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        probe = any(k.lower() == PROBE_HEADER and v == b"1" for k, v in scope["headers"])
        (self.probes if probe else self.requests)[path] += 1
        plan = self.plan  # the plan when the request arrived, whatever is set meanwhile
        if not plan.applies_to(path):
            await self.app(scope, receive, send)
        elif plan.mode == "hang":
            await _hang(receive)
        elif plan.mode == "status":
            await _answer_status(send, plan)
        elif plan.mode == "drop_after":
            await self._drop_after(scope, receive, send, plan.chunks)
        else:
            await _answer_malformed(path, receive, send)

    async def _control(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        if path == RESET_PATH and method == "POST":
            self.reset_counters()
        elif path == CONTROL_PATH and method == "POST":
            try:
                self.plan = FaultPlan.from_json(json.loads(await _read_body(receive) or b"{}"))
            except ValueError as exc:  # JSONDecodeError included
                await _send_json(send, 400, _error(str(exc), "invalid_request_error"))
                return
        elif method != "GET" or path != CONTROL_PATH:
            await _send_json(send, 405, _error("method not allowed", "invalid_request_error"))
            return
        await _send_json(send, 200, self.snapshot())

    async def _drop_after(self, scope: Scope, receive: Receive, send: Send, chunks: int) -> None:
        """The real response, cut after ``chunks`` body chunks — and always before its end:
        a response that would end sooner loses the second half of its last chunk. The
        app returns with its response unfinished, so the server closes the connection
        without the terminating chunk (the client sees an incomplete body, not an end)."""
        passed = 0
        cut = False

        async def cutting_send(message: Message) -> None:
            nonlocal passed, cut
            if cut:
                raise _Cut
            if message["type"] != "http.response.body":
                await send(message)
                return
            body = message.get("body", b"")
            if passed >= chunks:
                cut = True
                raise _Cut
            if not message.get("more_body", False):
                if len(body) > 1:
                    part = body[: len(body) // 2]
                    await send({"type": "http.response.body", "body": part, "more_body": True})
                cut = True
                raise _Cut
            await send(message)
            passed += 1 if body else 0

        try:
            await self.app(scope, receive, cutting_send)
        except Exception:  # the app's own error, or ours wrapped in an exception group
            if not cut:
                raise


async def _hang(receive: Receive) -> None:
    """Never answer: return (still without a response) once the client has gone —
    its timeout, or the server stopping — so other requests are never held up."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _answer_status(send: Send, plan: FaultPlan) -> None:
    kind = {429: "rate_limit_error", 401: "authentication_error", 404: "not_found_error"}.get(
        plan.status, "server_error" if plan.status >= 500 else "invalid_request_error"
    )
    headers = []
    if plan.retry_after is not None:
        headers.append((b"retry-after", f"{plan.retry_after:g}".encode()))
    body = _error(f"injected fault: HTTP {plan.status}", kind)
    await _send_json(send, plan.status, body, headers)


async def _answer_malformed(path: str, receive: Receive, send: Send) -> None:
    """200 with a body that is not what the endpoint promises: each client must notice."""
    if path.endswith("/chat/completions"):
        try:
            streaming = bool(json.loads(await _read_body(receive)).get("stream"))
        except (ValueError, AttributeError):
            streaming = False
        if streaming:
            events = b'data: {"choices": [{"delta": {"content": "Hel\n\ndata: [DONE]\n\n'
            await _send(send, 200, events, b"text/event-stream")
            return
    if path.endswith("/audio/speech"):
        await _send(send, 200, b"this is not audio", b"text/plain; charset=utf-8")
        return
    await _send(send, 200, b'{"text": "unterminated', b"application/json")


def _error(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


async def _read_body(receive: Receive) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    return bytes(body)


async def _send_json(
    send: Send, status: int, body: object, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await _send(send, status, json.dumps(body).encode(), b"application/json", headers)


async def _send(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    head = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        *(headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})
