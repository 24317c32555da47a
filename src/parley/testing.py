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
import time
from pathlib import Path

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
