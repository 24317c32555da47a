"""WAV reading and writing (any rate/channels in, 16 kHz mono PCM16 out)."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from parley.audio.pcm import SAMPLE_RATE, resample


def read_wav(path: str | Path) -> np.ndarray:
    """Read a PCM WAV file as int16 mono at 16 kHz."""
    with wave.open(str(path), "rb") as wf:
        if wf.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported")
        rate, channels = wf.getframerate(), wf.getnchannels()
        data = np.frombuffer(wf.readframes(wf.getnframes()), dtype="<i2")
    if channels > 1:
        data = data.reshape(-1, channels).mean(axis=1).astype("<i2")
    if rate != SAMPLE_RATE:
        f = resample(data.astype(np.float32) / 32768.0, rate, SAMPLE_RATE)
        data = (np.clip(f, -1, 1) * 32767).astype("<i2")
    return data


def write_wav(path: str | Path, pcm: np.ndarray | bytes, sample_rate: int = SAMPLE_RATE) -> None:
    raw = pcm if isinstance(pcm, bytes) else np.asarray(pcm, dtype="<i2").tobytes()
    with wave.open(str(path), "wb") as wf:
        wf.setnchannels(1)
        wf.setsampwidth(2)
        wf.setframerate(sample_rate)
        wf.writeframes(raw)
