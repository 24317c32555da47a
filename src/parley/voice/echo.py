"""Echo guard: is the speech the microphone hears the agent's own voice played back (a
speakerphone, a browser without echo cancellation)?

The playout keeps the last seconds of what it sent; speech heard while the agent talks is
compared with it by normalised cross-correlation over every plausible delay (the client's
playout lead, the room, the uplink). An echo is a delayed, attenuated (and, in a room,
filtered) copy of that audio: its correlation with it is high at one delay; a caller's
own voice is unrelated to it.
"""

from __future__ import annotations

from collections import deque

import numpy as np

SAMPLE_RATE = 16_000
DECIMATE = 2  # compare at 8 kHz: speech energy is below 4 kHz, and half the work
REFERENCE_SECS = 2.0
PROBE_SECS = 0.4


class EchoReference:
    """The agent audio sent in the last ``REFERENCE_SECS``, with the loop time it was sent."""

    def __init__(self) -> None:
        self._frames: deque[tuple[float, np.ndarray]] = deque()

    def add(self, sent_at: float, pcm: np.ndarray) -> None:
        self._frames.append((sent_at, pcm.astype(np.float32) / 32768.0))
        while self._frames and sent_at - self._frames[0][0] > REFERENCE_SECS:
            self._frames.popleft()

    def recent(self) -> np.ndarray:
        if not self._frames:
            return np.zeros(0, np.float32)
        return np.concatenate([pcm for _, pcm in self._frames])

    def clear(self) -> None:
        self._frames.clear()


def echo_similarity(heard: np.ndarray, reference: np.ndarray) -> float:
    """The peak normalised cross-correlation (0..1) between the last ``PROBE_SECS`` of
    ``heard`` and any stretch of ``reference`` (both float32 16 kHz)."""
    probe = heard[-int(PROBE_SECS * SAMPLE_RATE) :: DECIMATE].astype(np.float64)
    n = probe.size
    if n < 400 or reference.size == 0:
        return 0.0
    # Silence before the reference: the probe may begin before the agent's first frame
    # (an echo of a reply's first words follows the caller's silence).
    ref = np.concatenate([np.zeros(n), reference[::DECIMATE].astype(np.float64)])
    probe = probe - probe.mean()
    probe_norm = float(np.sqrt(np.dot(probe, probe)))
    if probe_norm < 1e-6:
        return 0.0
    size = 1 << int(np.ceil(np.log2(ref.size + n)))
    # Correlation at every lag at once: FFT of the reference times the conjugate probe.
    corr = np.fft.irfft(np.fft.rfft(ref, size) * np.conj(np.fft.rfft(probe, size)), size)
    corr = corr[: ref.size - n + 1]
    # Each lag's reference window energy, from running sums (mean removed).
    csum = np.concatenate([[0.0], np.cumsum(ref)])
    csq = np.concatenate([[0.0], np.cumsum(ref * ref)])
    win_sum = csum[n:] - csum[:-n]
    win_sq = csq[n:] - csq[:-n]
    # A floor on it: near-silent reference (pauses between sentences) must not divide a
    # small correlation into a large one. An echo is never much louder than its source.
    energy = np.maximum(win_sq - win_sum * win_sum / n, 0.1 * probe_norm**2)
    score = np.abs(corr) / (probe_norm * np.sqrt(energy))
    return float(np.clip(score.max(), 0.0, 1.0))
