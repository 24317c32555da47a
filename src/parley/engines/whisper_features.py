"""Whisper-style log-mel features (80 mels, 25 ms window, 10 ms hop) in NumPy.

Smart Turn v3 was trained on the features of HuggingFace's WhisperFeatureExtractor with
``chunk_length=8`` and waveform normalisation; this computes the same without importing
transformers or torch.
"""

from __future__ import annotations

import functools

import numpy as np

N_FFT = 400
HOP = 160
N_MELS = 80
SAMPLE_RATE = 16_000


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    # Slaney scale: linear below 1 kHz, logarithmic above.
    f = np.asarray(f, dtype=np.float64)
    mel = 3.0 * f / 200.0
    step = np.log(6.4) / 27.0
    return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-9) / 1000.0) / step, mel)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    step = np.log(6.4) / 27.0
    return np.where(m >= 15.0, 1000.0 * np.exp(step * (m - 15.0)), 200.0 * m / 3.0)


@functools.cache
def mel_filterbank() -> np.ndarray:
    """Slaney-normalised triangular filters, shape (n_fft/2+1, n_mels)."""
    fft_freqs = np.linspace(0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    mel_points = np.linspace(
        _hz_to_mel(np.array(0.0)), _hz_to_mel(np.array(SAMPLE_RATE / 2)), N_MELS + 2
    )
    hz = _mel_to_hz(mel_points)
    widths = np.diff(hz)
    ramps = hz[None, :] - fft_freqs[:, None]
    lower = -ramps[:, :-2] / widths[:-1]
    upper = ramps[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(lower, upper))
    return filters * (2.0 / (hz[2:] - hz[:-2]))[None, :]


@functools.cache
def _hann() -> np.ndarray:
    return np.hanning(N_FFT + 1)[:-1]  # periodic, as torch.hann_window


def log_mel_features(audio: np.ndarray, *, seconds: int = 8, normalize: bool = True) -> np.ndarray:
    """(80, 100*seconds) float32 features of exactly ``seconds`` of 16 kHz audio."""
    n = seconds * SAMPLE_RATE
    x = np.asarray(audio, dtype=np.float32)[:n]
    if x.size < n:
        x = np.pad(x, (0, n - x.size))
    if normalize:
        x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    padded = np.pad(x.astype(np.float64), (N_FFT // 2, N_FFT // 2), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    power = np.abs(np.fft.rfft(frames * _hann(), axis=-1)) ** 2
    mel = np.maximum(power @ mel_filterbank(), 1e-10).T
    log_spec = np.log10(mel)[:, :-1]
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)
