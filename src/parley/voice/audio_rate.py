"""A bound on how fast one session's caller may send audio.

Every session's audio goes through the VAD lane all sessions share: a client sending
ten times faster than real time would take ten sessions' share of it (and starve the
rest). Audio is admitted from a bucket of audio seconds that fills at ``rate`` × real
time up to ``burst_secs`` (network bursts, a reconnecting client's backlog); what does
not fit is dropped. A client that keeps sending too fast for ``close_after_secs`` is
persistently over the limit: the transport closes it.
"""

from __future__ import annotations

from dataclasses import dataclass

SAMPLE_RATE = 16_000
CALM_SECS = 1.0
"""A client whose audio fit for this long (no drop) is no longer over the limit."""


@dataclass(frozen=True)
class AudioVerdict:
    admitted: bool
    first_drop: bool = False
    """The first drop of an episode of sending too fast (say so once per episode)."""
    persistent: bool = False
    """Over the limit for ``close_after_secs`` or more: end the connection."""


class InboundAudioBudget:
    """Pure logic on a clock given by the caller (seconds, monotonic)."""

    def __init__(self, rate: float, burst_secs: float, close_after_secs: float) -> None:
        self.rate = rate
        self.burst_secs = burst_secs
        self.close_after_secs = close_after_secs
        self._available = burst_secs
        self._last: float | None = None
        self._over_since: float | None = None
        self._last_drop = 0.0
        self.dropped_secs = 0.0

    def admit(self, pcm_bytes: int, now: float) -> AudioVerdict:
        secs = pcm_bytes / 2 / SAMPLE_RATE
        if self._last is not None:
            self._available = min(self.burst_secs, self._available + (now - self._last) * self.rate)
        self._last = now
        if secs <= self._available:
            self._available -= secs
            if self._over_since is not None and now - self._last_drop >= CALM_SECS:
                self._over_since = None
            return AudioVerdict(True)
        self.dropped_secs += secs
        first = self._over_since is None
        if first:
            self._over_since = now
        self._last_drop = now
        assert self._over_since is not None
        return AudioVerdict(
            False,
            first_drop=first,
            persistent=now - self._over_since >= self.close_after_secs,
        )
