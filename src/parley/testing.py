"""Tools for driving a real Parley server from tests and benchmarks.

* :class:`ServerProcess` runs ``parley serve`` in a child process, as a user would.
* :func:`caller_speech` makes caller audio with espeak-ng (Debian package), a voice
  unlike the agent's, so Whisper hears a different speaker from the one that answers.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from parley.audio import read_wav, trim_leading_silence

_SPEECH_CACHE = Path(tempfile.gettempdir()) / "parley-caller-speech"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``parley serve`` in a child process, on a free port, logging to ``log_path``."""

    def __init__(
        self, env: dict[str, str], log_path: Path, cwd: Path | None = None, port: int | None = None
    ) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, **env, "PARLEY_SERVER__PORT": str(self.port)}
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "parley", "serve"],
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
        )
        self._wait_ready()

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    def _wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early; see {self.log_path}")
            try:
                if httpx.get(f"{self.http}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"server not ready in {timeout}s; see {self.log_path}")

    def health(self) -> dict[str, object]:
        return dict(httpx.get(f"{self.http}/health", timeout=5).json())

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when a machine or container dies."""
        self.proc.kill()
        self.proc.wait(timeout=15)
        self._log.close()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


def caller_speech(text: str, *, speed: int = 160, voice: str = "en-us") -> np.ndarray:
    """``text`` spoken by espeak-ng, as int16 mono 16 kHz."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError(
            "espeak-ng is required to generate caller speech (apt install espeak-ng)"
        )
    _SPEECH_CACHE.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha1(f"{voice}|{speed}|{text}".encode()).hexdigest()[:16]
    path = _SPEECH_CACHE / f"{key}.wav"
    if not path.exists():
        tmp = path.with_suffix(".tmp.wav")
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(tmp), text],
            check=True,
            capture_output=True,
        )
        tmp.rename(path)
    return read_wav(path)


def trim_silence(pcm: np.ndarray) -> np.ndarray:
    """Trim near-silence at both ends of a clip."""
    head = trim_leading_silence(pcm, keep_secs=0.0)
    return trim_leading_silence(head[::-1], keep_secs=0.0)[::-1].copy()


class OTLPReceiver:
    """A stand-in OpenTelemetry collector: accepts OTLP/HTTP trace exports on a free port
    of 127.0.0.1 and keeps every span, decoded (``spans``: protobuf ``Span`` messages)."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        self.spans: list[Any] = []
        self.requests = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.requests += 1
                for resource in request.resource_spans:
                    for scope in resource.scope_spans:
                        receiver.spans.extend(scope.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass  # the test's output is not the place for access lines

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
