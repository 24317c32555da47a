"""How the Python callers (:class:`~parley.client.CallClient`, the WebRTC one) get back to
their session after a drop: which drops are worth a reconnect, the token refresh through
the control plane (``POST /v1/sessions/{id}/tokens``: in a fleet it sends the session to
a live worker, from a plain ``parley serve`` it answers that same server), and bounded
retries with backoff that honour ``Retry-After`` and end in a clear error.

Nothing here knows a transport: the clients give :func:`retry` one attempt to make (a
refresh, then a connect) and say which failures are worth another try.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import httpx

T = TypeVar("T")

RECONNECT_CLOSE_CODES = frozenset({1001, 1005, 1006, 1011, 1012, 4503})
"""WebSocket close codes after which the session is still there to resume: the server
went away (1001), the connection was lost with no close frame (1005, 1006: a killed
worker), the server failed on this connection (1011), is restarting (1012: a drain's
deadline) or had no room at connect (4503). Every other code is final: 1000 (the session
ended), 4401/4403/4404 (refused), 4408/4410 (ended by the server), 4409 (another
connection took the session), 4429 (audio too fast)."""

FINAL_ERROR_CODES = frozenset(
    {
        "session_ended",
        "session_expired",
        "idle_timeout",
        "session_taken_over",
        "audio_too_fast",
        "unauthorized",
        "forbidden",
        "unknown_session",
    }
)
"""``error`` event codes after which a connection without close codes (WebRTC) is not
reconnected: the session is over, or is someone else's now."""

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


def should_reconnect(close_code: int | None) -> bool:
    """Whether a WebSocket that closed with ``close_code`` (None: no close frame came)
    should be reconnected."""
    return close_code is None or close_code in RECONNECT_CLOSE_CODES


def ended_for_good(events: list[dict[str, Any]]) -> bool:
    """Whether ``events`` (those of one connection) show the server ending the session or
    refusing it, rather than a drop."""
    for ev in events:
        if ev.get("type") == "session.ended":
            return True
        if ev.get("type") == "error" and ev.get("code") in FINAL_ERROR_CODES:
            return True
    return False


@dataclass(frozen=True)
class ReconnectPolicy:
    """How hard a client tries: ``attempts`` tries, the n-th after ``delays[n]`` seconds
    (the last delay repeats; the browser page uses the same schedule), or after the
    server's ``Retry-After`` when it gave one (at most ``max_retry_after``)."""

    delays: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 3.0)
    attempts: int = 12
    max_retry_after: float = 30.0
    connect_timeout: float = 10.0
    """How long one attempt may take to connect and hear from the session."""

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        base = self.delays[min(attempt, len(self.delays) - 1)] if self.delays else 0.0
        if retry_after is None:
            return base
        return max(base, min(retry_after, self.max_retry_after))


class RetryLater(Exception):
    """One attempt failed in a way another may not: a 503, a refused connection, a worker
    not yet gone from the registry. ``retry_after``: the server's ``Retry-After``."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SessionRefused(Exception):
    """The server will not take the session back (ended, expired, unknown, a token it
    refuses): no further attempt can succeed."""


class ReconnectFailed(ConnectionError):
    """The client gave up reconnecting: the reason, the attempts made and the last error."""


def retry_after_secs(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare here, the default backoff will do


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = None
    return f"HTTP {response.status_code}" + (f": {detail}" if isinstance(detail, str) else "")


def check_response(response: httpx.Response, what: str) -> None:
    """Raise :class:`RetryLater` (503, 5xx, 429; with ``Retry-After``) or
    :class:`SessionRefused` (any other error) for an unsuccessful answer."""
    if response.is_success:
        return
    message = f"{what}: {_detail(response)}"
    if response.status_code in RETRY_STATUS:
        raise RetryLater(message, retry_after_secs(response))
    raise SessionRefused(message)


def session_token(session: Mapping[str, Any] | None, url: str) -> str | None:
    """The session's current token: from its token answer, else from ``url``'s query."""
    if session and session.get("token"):
        return str(session["token"])
    tokens = parse_qs(urlsplit(url).query).get("token")
    return tokens[0] if tokens else None


async def refresh_token(control_url: str, session_id: str, token: str) -> dict[str, Any]:
    """A fresh token answer for the session from ``control_url`` (an ``http(s)://host``
    base): in a fleet it names the worker the session is dispatched to now."""
    try:
        async with httpx.AsyncClient(base_url=control_url, timeout=10) as http:
            response = await http.post(
                f"/v1/sessions/{session_id}/tokens",
                json={},
                headers={"Authorization": f"Bearer {token}"},
            )
    except httpx.TransportError as exc:
        raise RetryLater(f"refreshing the token at {control_url}: {exc!r}") from exc
    check_response(response, f"refreshing the token at {control_url}")
    return dict(response.json())


def absolute(url: str, http_base: str, *, websocket: bool = False) -> str:
    """A token answer's URL made absolute: a plain server answers paths on itself,
    a control plane absolute URLs on a worker. ``websocket``: as ``ws(s)://``."""
    if "://" not in url:
        url = http_base.rstrip("/") + url
    if websocket:
        url = url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    return url


Attempt = Callable[[], Awaitable[T]]


async def retry(
    attempt: Attempt[T],
    policy: ReconnectPolicy,
    what: str,
    *,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> tuple[T, int]:
    """Run ``attempt`` until it succeeds, waiting as ``policy`` says before each try; its
    result and the number of tries. :class:`RetryLater`, :class:`OSError`,
    :class:`TimeoutError` and ``httpx.TransportError`` are worth another try;
    :class:`SessionRefused` ends at once. Gives up with :class:`ReconnectFailed`."""
    started = time.monotonic()
    retry_after: float | None = None
    last: BaseException | None = None
    for n in range(policy.attempts):
        await sleep(policy.delay(n, retry_after))
        retry_after = None
        try:
            return await attempt(), n + 1
        except SessionRefused as exc:
            raise ReconnectFailed(f"{what}: the server refused the session ({exc})") from exc
        except RetryLater as exc:
            retry_after, last = exc.retry_after, exc
        except (OSError, TimeoutError, httpx.TransportError) as exc:
            last = exc
    elapsed = time.monotonic() - started
    raise ReconnectFailed(
        f"{what}: gave up after {policy.attempts} attempts in {elapsed:.1f} s "
        f"(last error: {last!r})"
    ) from last
