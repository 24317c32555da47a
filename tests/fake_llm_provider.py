"""An OpenAI-compatible chat completions server that answers from a script, over real
HTTP: for tests that need the model's output fixed (tool calls, a provider that hangs).

It is a test double for the model only; everything on Parley's side of the HTTP
connection — the provider client, the orchestrator, the ledger — is the real code."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHARS_PER_TOKEN = 4


@dataclass
class ProviderScript:
    replies: list[str]
    """Content of each reply in turn (the last one repeats)."""
    delay_secs: float = 0.0
    status: int = 200
    requests: list[dict[str, Any]] = field(default_factory=list)
    hold_when: str | None = None
    """Requests whose last message contains this wait for ``release`` before answering."""
    held: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    cut_at_max_tokens: bool = False
    """Stop a JSON-mode reply at the request's ``max_tokens`` (a token taken as
    ``CHARS_PER_TOKEN`` characters) and say ``length``, as a real provider does."""
    finish_reason: str = "stop"
    """Reported for a JSON-mode reply that was not cut."""

    def next_reply(self) -> str:
        return self.replies[min(len(self.requests), len(self.replies)) - 1]


@contextmanager
def fake_provider(script: ProviderScript) -> Iterator[str]:
    """Serve ``script``; yields the base URL (``…/v1``)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            script.requests.append(body)
            reply = script.next_reply()
            time.sleep(script.delay_secs)
            if script.hold_when and script.hold_when in body["messages"][-1]["content"]:
                script.held.set()
                script.release.wait(30)
            if script.status != 200:
                self._send(script.status, b'{"error": "scripted failure"}', "application/json")
            elif body.get("stream"):
                words = reply.split(" ")
                chunks = [
                    {"choices": [{"delta": {"content": w if i == 0 else " " + w}}]}
                    for i, w in enumerate(words)
                ]
                sse = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
                self._send(200, sse.encode(), "text/event-stream")
            else:
                content, reason = reply, script.finish_reason
                budget = body.get("max_tokens")
                if script.cut_at_max_tokens and isinstance(budget, int):
                    if len(reply) > budget * CHARS_PER_TOKEN:
                        content, reason = reply[: budget * CHARS_PER_TOKEN], "length"
                message = {"role": "assistant", "content": content}
                answer = {"choices": [{"message": message, "finish_reason": reason}]}
                self._send(200, json.dumps(answer).encode(), "application/json")

        def _send(self, status: int, payload: bytes, kind: str) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up waiting (a timeout test)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
