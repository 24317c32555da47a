"""A local HTTP endpoint standing in for a downstream system a webhook tool calls: it
records each request's Idempotency-Key and body, and answers from ``answer``."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Seen = list[tuple[str, dict[str, Any]]]


@contextmanager
def webhook_recorder(
    answer: Callable[[Seen], dict[str, Any]] = lambda seen: {"ok": True},
) -> Iterator[tuple[str, Seen]]:
    """Yields (base URL, the requests seen so far)."""
    seen: Seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.headers["Idempotency-Key"], body))
            payload = json.dumps(answer(seen)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
