"""Audio tracks between aiortc and the voice loop."""

from __future__ import annotations

import asyncio
import fractions
import time
from collections import deque
from typing import Any

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from parley.audio.pcm import FRAME_SAMPLES, SAMPLE_RATE

FRAME_SECS = FRAME_SAMPLES / SAMPLE_RATE
SILENCE = bytes(FRAME_SAMPLES * 2)


def pcm_frame(pcm: bytes, pts: int) -> av.AudioFrame:
    """PCM16LE mono 16 kHz as an ``av.AudioFrame`` stamped ``pts`` (in samples)."""
    frame = av.AudioFrame.from_ndarray(
        np.frombuffer(pcm, dtype="<i2").reshape(1, -1), format="s16", layout="mono"
    )
    frame.sample_rate = SAMPLE_RATE
    frame.pts = pts
    frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
    return frame


class AgentAudioTrack(MediaStreamTrack):
    """The agent's voice as an outbound track: 20 ms PCM16 16 kHz frames from the voice
    loop's paced playout, silence between replies (Opus needs a steady stream).

    The playout already sends no faster than real time, so this buffer holds only its
    small lead; :meth:`clear` empties it on barge-in."""

    kind = "audio"

    def __init__(self, max_frames: int = 500) -> None:
        super().__init__()
        self._frames: deque[bytes] = deque(maxlen=max_frames)
        self._start: float | None = None
        self._pts = 0

    def push(self, pcm: bytes) -> None:
        self._frames.append(pcm)

    def clear(self) -> None:
        self._frames.clear()

    @property
    def buffered_secs(self) -> float:
        return len(self._frames) * FRAME_SECS

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._pts += FRAME_SAMPLES
            delay = self._start + self._pts / SAMPLE_RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        return pcm_frame(self._frames.popleft() if self._frames else SILENCE, self._pts)


class InboundResampler:
    """Decoded remote frames (Opus: 48 kHz, usually stereo) → PCM16LE mono 16 kHz."""

    def __init__(self) -> None:
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)

    def convert(self, frame: Any) -> bytes:
        """``frame``: an ``av.AudioFrame`` (typed loosely: aiortc's ``recv`` is declared
        to return any frame or packet)."""
        out = bytearray()
        for resampled in self._resampler.resample(frame):
            out += resampled.to_ndarray().astype("<i2").tobytes()
        return bytes(out)
