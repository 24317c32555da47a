"""A local endpoint standing in for the system that receives Parley's handoff webhook: it
records each request's headers and exact body bytes, with its ``time.monotonic()``
arrival time (asyncio's loop clock), and answers ``status``."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Delivery:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HandoffReceiver:
    url: str = ""
    status: int = 200
    deliveries: list[Delivery] = field(default_factory=list)


@contextmanager
def handoff_receiver() -> Iterator[HandoffReceiver]:
    receiver = HandoffReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            receiver.deliveries.append(Delivery(time.monotonic(), self.path, headers, body))
            self.send_response(receiver.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/handoff"
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
