"""Shared fixtures: a real Parley server process on the embedded models, caller speech
generated with espeak-ng (a different voice from the agent's Piper voice), and a
full-window Whisper to check what the agent said."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from parley.audio import read_wav

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``parley serve`` in a child process, as a user runs it."""

    def __init__(self, env: dict[str, str], log_name: str = "server.log") -> None:
        self.port = free_port()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.log_path = ARTIFACTS / log_name
        full_env = {**os.environ, **env, "PARLEY_SERVER__PORT": str(self.port)}
        full_env.setdefault("PARLEY_CONFIG", str(ROOT / "tests" / "parley.test.toml"))
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "parley", "serve"],
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
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

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


@pytest.fixture(scope="session")
def server() -> Iterator[ServerProcess]:
    srv = ServerProcess({})
    yield srv
    srv.stop()


_SPEECH_CACHE = Path(tempfile.mkdtemp(prefix="parley-speech-"))


def synthesize_caller(text: str, *, speed: int = 160, voice: str = "en-us") -> np.ndarray:
    """Caller speech with espeak-ng, as int16 mono 16 kHz."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is required (make test installs it)")
    path = _SPEECH_CACHE / f"{abs(hash((text, speed, voice)))}.wav"
    if not path.exists():
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text],
            check=True,
            capture_output=True,
        )
    return read_wav(path)


@pytest.fixture(scope="session")
def caller() -> Callable[..., np.ndarray]:
    return synthesize_caller


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * 16_000), dtype="<i2")


def cough(seconds: float = 0.25, seed: int = 1) -> np.ndarray:
    """A cough-like burst: loud band-limited noise with a fast attack and decay."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 16_000)
    noise = rng.standard_normal(n)
    # Crude low-pass (moving average) for the throaty colour of a cough.
    noise = np.convolve(noise, np.ones(6) / 6, mode="same")
    t = np.linspace(0, 1, n)
    envelope = np.minimum(1.0, t * 12) * np.exp(-3.5 * t)
    burst = noise / np.abs(noise).max() * envelope * 0.6
    return (burst * 32767).astype("<i2")


@pytest.fixture(scope="session")
def whisper_checker():  # type: ignore[no-untyped-def]
    """Standard (30 s window) Whisper in the test process, to read back agent audio."""
    from parley.config import STTSettings
    from parley.engines.stt_whisper import WhisperSTT

    stt = WhisperSTT(STTSettings(min_window_secs=30, cpu_threads=1))
    yield stt
    stt.close()
