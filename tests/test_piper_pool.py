"""The Piper worker pool with real worker processes: a worker that dies and cannot be
replaced must not leave synthesis waiting forever (every session would go silent); it
fails fast with an EngineError while no worker runs, and service comes back when a
replacement starts."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from parley.config import TTSSettings
from parley.engines import EngineError, tts_piper
from parley.engines.tts_piper import PiperTTS

pytest.importorskip("piper", reason="piper-tts (the `piper` extra) runs the worker")


def piper_worker_pids() -> set[int]:
    """This process's Piper worker children, from /proc (no handle into the pool)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == os.getpid() and b"parley.engines.piper_worker" in cmdline:
            pids.add(int(entry.name))
    return pids


async def speak(tts: PiperTTS, text: str = "Hello there.") -> int:
    samples = 0
    async for chunk in tts.synthesize(text):
        samples += chunk.size
    return samples


async def test_a_worker_that_cannot_be_replaced_fails_fast_then_recovers(
    monkeypatch: Any, caplog: Any
) -> None:
    monkeypatch.setattr(tts_piper, "RESPAWN_FIRST_DELAY_SECS", 0.2, raising=False)
    tts = PiperTTS(TTSSettings(workers=1))
    others = piper_worker_pids()  # another pool's (a session-wide fixture's) are not ours
    await tts.start()
    try:
        assert await speak(tts) > 0
        (pid,) = piper_worker_pids() - others
        # Every worker started from now on dies at once: Python cannot even start.
        monkeypatch.setenv("PYTHONHOME", "/nonexistent")
        os.kill(pid, signal.SIGKILL)

        # Synthesis fails with a clear EngineError instead of waiting for a worker...
        async with asyncio.timeout(20):
            while True:
                try:
                    await speak(tts)
                except EngineError as exc:
                    if "no text-to-speech worker" in str(exc):
                        break
                except OSError:
                    pass  # the dead worker's pipe, before the pool noticed the death
                await asyncio.sleep(0.05)
        # ...every time, not once, while no worker can start.
        for _ in range(3):
            async with asyncio.timeout(5):
                with pytest.raises(EngineError, match="no text-to-speech worker"):
                    await speak(tts)
        failures = [
            r for r in caplog.records if r.getMessage().startswith("piper worker could not be")
        ]
        assert failures and failures[0].levelno == logging.ERROR
        assert "failed to start" in failures[0].fields["error"]

        # The replacement keeps being retried: once workers can start, service is back.
        monkeypatch.delenv("PYTHONHOME")
        async with asyncio.timeout(60):
            while True:
                try:
                    samples = await speak(tts)
                    break
                except EngineError:
                    await asyncio.sleep(0.1)
        assert samples > 0
        assert len(piper_worker_pids() - others) == 1
    finally:
        await tts.close()
