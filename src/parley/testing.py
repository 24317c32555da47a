"""Tools for driving a real Parley server from tests and benchmarks.

* :class:`ServerProcess` runs ``parley serve`` in a child process, as a user would.
* :class:`EngineServerProcess` runs ``parley engine-server`` (the embedded engines behind
  the OpenAI-compatible API, with fault injection) in a child process, and
  :func:`serve_engine_app` serves engines the test already holds, in its own event loop:
  real remote providers for failover tests, each able to hang, fail, drop or stop.
* :func:`caller_speech` makes caller audio with espeak-ng (Debian package), a voice
  unlike the agent's, so Whisper hears a different speaker from the one that answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np

from parley.audio import read_wav, trim_leading_silence

if TYPE_CHECKING:
    from parley.engine_server import StageEngines

_SPEECH_CACHE = Path(tempfile.gettempdir()) / "parley-caller-speech"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``parley serve`` (or ``command``: ``worker``) in a child process, on a free port,
    logging to ``log_path``."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        cwd: Path | None = None,
        port: int | None = None,
        command: str = "serve",
    ) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, **env, "PARLEY_SERVER__PORT": str(self.port)}
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "parley", command],
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
        wait_until_answers(self.proc, f"{self.http}/health", timeout, self.log_path)

    def health(self) -> dict[str, object]:
        return dict(httpx.get(f"{self.http}/health", timeout=5).json())

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when a machine or container dies."""
        self.proc.kill()
        self.proc.wait(timeout=15)
        self._log.close()

    def stop(self) -> None:
        """SIGINT: a prompt, graceful stop (SIGTERM would drain first: live sessions
        could hold it for ``server.drain_deadline_secs``)."""
        terminate(self.proc, signal.SIGINT)
        self._log.close()

    def drain(self) -> None:
        """SIGTERM, as an orchestrator stops a process: it drains, then exits."""
        self.proc.send_signal(signal.SIGTERM)


class RedisServer:
    """A ``redis-server`` of a test's own on a free port (no persistence): to stop and
    start again on the same port, as when Redis goes down and comes back."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


def wait_until_answers(
    proc: subprocess.Popen[bytes], url: str, timeout: float, log_path: Path
) -> None:
    """Until ``url`` answers 200; the child exiting first, or ``timeout``, is an error."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early; see {log_path}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"server not ready in {timeout}s; see {log_path}")


def terminate(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """``sig`` (SIGTERM), then SIGKILL if it is still there after 15 s."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)


class EngineServerProcess:
    """``parley engine-server`` in a child process on ``port`` (default: a free one),
    serving the embedded engines of ``stages`` (``"llm,stt"`` or ``["llm", "stt"]``);
    ready once ``GET /v1/models`` answers. ``kill()`` then ``start()`` is a provider
    that crashed and came back on the same address; while it is down, connections are
    refused. ``faults``: the fault injector's control API (``set_faults``)."""

    def __init__(
        self,
        stages: str | Iterable[str],
        port: int | None = None,
        faults: bool = True,
        *,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        cwd: Path | None = None,
        ready_timeout: float = 180.0,
    ) -> None:
        self.stages = stages if isinstance(stages, str) else ",".join(stages)
        self.port = port or free_port()
        self.with_faults = faults
        self.log_path = log_path or Path(tempfile.gettempdir()) / f"parley-engines-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._env = {**os.environ, **(env or {})}
        self._cwd = cwd
        self._ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The API root, as a provider's ``base_url``."""
        return f"{self.http}/v1"

    def start(self) -> None:
        """Start the server (again, after ``kill`` or ``stop``) and wait until it answers."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("the engine server is already running")
        command = [sys.executable, "-m", "parley", "engine-server", "--stages", self.stages]
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--faults"] if self.with_faults else []
        with open(self.log_path, "a") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                command, env=self._env, cwd=self._cwd, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            wait_until_answers(self.proc, f"{self.url}/models", self._ready_timeout, self.log_path)
        except TimeoutError:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, open connections die with the process."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=15)

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)

    def set_faults(self, **plan: Any) -> dict[str, Any]:
        """Replace the fault plan (``parley.provider_faults.FaultPlan``'s fields)."""
        return self._control("POST", "/_faults", plan)

    def faults(self) -> dict[str, Any]:
        """The plan and the counters: ``requests`` and ``probes`` per path."""
        return self._control("GET", "/_faults")

    def reset_faults(self) -> dict[str, Any]:
        """The counters back to zero (the plan stays)."""
        return self._control("POST", "/_faults/reset")

    def _control(
        self, method: str, path: str, plan: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        if not self.with_faults:
            raise RuntimeError("started without faults=True: there is no /_faults")
        response = httpx.request(method, self.http + path, json=plan, timeout=5)
        response.raise_for_status()
        return dict(response.json())

    def __enter__(self) -> EngineServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class EngineAppServer:
    """The engine app served in the test's own event loop (see :func:`serve_engine_app`)."""

    asgi: Any
    port: int
    injector: Any = None
    """The ``FaultInjector`` in front of the app (None without faults)."""
    _server: Any = field(default=None, repr=False)
    _task: Any = field(default=None, repr=False)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The API root, as a provider's ``base_url``."""
        return f"{self.http}/v1"

    @property
    def running(self) -> bool:
        return self._server is not None

    def set_faults(self, **plan: Any) -> dict[str, Any]:
        """Replace the fault plan (``parley.provider_faults.FaultPlan``'s fields)."""
        self._faults().set(**plan)
        return self.faults()

    def faults(self) -> dict[str, Any]:
        return dict(self._faults().snapshot())

    def reset_faults(self) -> dict[str, Any]:
        self._faults().reset_counters()
        return self.faults()

    def _faults(self) -> Any:
        if self.injector is None:
            raise RuntimeError("served without faults=True")
        return self.injector

    async def start(self) -> None:
        """Listen on ``port`` (again, after ``stop``)."""
        import uvicorn

        class Server(uvicorn.Server):
            def capture_signals(self) -> Any:
                return nullcontext()  # Ctrl-C is the test runner's, not this server's

        if self._server is not None:
            raise RuntimeError("already listening")
        config = uvicorn.Config(
            self.asgi,
            host="127.0.0.1",
            port=self.port,
            log_config=None,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        server = Server(config)
        task = asyncio.create_task(server.serve())
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("the engine app did not start")
                await asyncio.sleep(0.01)
        self._server, self._task = server, task

    async def stop(self) -> None:
        """As a provider that died: the port refuses connections at once, and every open
        connection (a hung request, a stream mid-way) is cut."""
        server, task = self._server, self._task
        if server is None:
            return
        self._server = self._task = None
        for listener in server.servers:
            listener.close()
        for connection in list(server.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()
        server.should_exit = True
        await task


@asynccontextmanager
async def serve_engine_app(
    engines: StageEngines,
    stages: str | Iterable[str],
    *,
    faults: bool = True,
    port: int | None = None,
) -> AsyncIterator[EngineAppServer]:
    """``engines`` (loaded by the test: doubles, or the embedded ones) behind the
    OpenAI-compatible API on 127.0.0.1, in this event loop; stopped on exit."""
    from parley.engine_server import create_engine_app
    from parley.provider_faults import FaultInjector

    app = create_engine_app(engines, stages)
    injector = FaultInjector(app) if faults else None
    server = EngineAppServer(injector or app, port or free_port(), injector)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


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
