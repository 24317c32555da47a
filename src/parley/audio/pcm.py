"""PCM16 mono 16 kHz: the one audio format inside Parley."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soxr

SAMPLE_RATE = 16_000
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000  # 320
FRAME_BYTES = FRAME_SAMPLES * 2


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """A slice of PCM16LE mono audio at 16 kHz (20 ms on the way out)."""

    pcm: bytes

    @property
    def samples(self) -> int:
        return len(self.pcm) // 2

    @property
    def duration(self) -> float:
        return self.samples / SAMPLE_RATE


def pcm16_to_float(pcm: bytes | np.ndarray) -> np.ndarray:
    data = np.frombuffer(pcm, dtype="<i2") if isinstance(pcm, bytes | bytearray) else pcm
    return data.astype(np.float32) / 32768.0


def float_to_pcm16(audio: np.ndarray) -> np.ndarray:
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")


def dbfs(audio: np.ndarray) -> float:
    """RMS level in dBFS of float audio in [-1, 1] (or int16, scaled)."""
    if audio.size == 0:
        return -120.0
    x = audio.astype(np.float64)
    if audio.dtype.kind == "i":
        x /= 32768.0
    rms = float(np.sqrt(np.mean(x * x)))
    return 20.0 * np.log10(max(rms, 1e-6))


def resample(audio: np.ndarray, src_rate: int, dst_rate: int = SAMPLE_RATE) -> np.ndarray:
    if src_rate == dst_rate:
        return audio
    return np.asarray(soxr.resample(audio, src_rate, dst_rate, quality="HQ"))


def trim_leading_silence(
    audio: np.ndarray,
    *,
    sample_rate: int = SAMPLE_RATE,
    threshold_dbfs: float = -40.0,
    keep_secs: float = 0.02,
    window_secs: float = 0.01,
) -> np.ndarray:
    """Drop leading near-silence, keeping ``keep_secs`` before the first loud window.

    Piper voices open every utterance with 0.3-0.45 s of near-silence; on the first
    sentence of a reply that is pure added latency.
    """
    win = max(1, int(window_secs * sample_rate))
    n_windows = audio.size // win
    if n_windows == 0:
        return audio
    x = audio[: n_windows * win].astype(np.float64)
    if audio.dtype.kind == "i":
        x /= 32768.0
    rms = np.sqrt(np.mean(x.reshape(n_windows, win) ** 2, axis=1))
    loud = np.flatnonzero(20.0 * np.log10(np.maximum(rms, 1e-6)) > threshold_dbfs)
    if loud.size == 0:
        return audio[:0]
    start = max(0, int(loud[0]) * win - int(keep_secs * sample_rate))
    return audio[start:]
