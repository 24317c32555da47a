"""Audio tracks between aiortc and the voice loop."""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import AsyncIterator
from typing import Any

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from parley.audio.pcm import FRAME_SAMPLES, SAMPLE_RATE

FRAME_SECS = FRAME_SAMPLES / SAMPLE_RATE
SILENCE = bytes(FRAME_SAMPLES * 2)
OPUS_RATE = 48_000
OPUS_FRAME_SAMPLES = FRAME_SAMPLES * OPUS_RATE // SAMPLE_RATE
"""One 20 ms frame at Opus's own rate (960)."""


def pcm_frame(pcm: bytes, pts: int, rate: int = SAMPLE_RATE) -> av.AudioFrame:
    """PCM16LE mono at ``rate`` as an ``av.AudioFrame`` stamped ``pts`` (in samples)."""
    frame = av.AudioFrame.from_ndarray(
        np.frombuffer(pcm, dtype="<i2").reshape(1, -1), format="s16", layout="mono"
    )
    frame.sample_rate = rate
    frame.pts = pts
    frame.time_base = fractions.Fraction(1, rate)
    return frame


class OpusRateFrames:
    """16 kHz PCM in, 20 ms frames at 48 kHz out, cut from one continuous resampled stream.

    Why not hand aiortc 16 kHz frames: its Opus encoder resamples them into exact 960-sample
    frames, and a resampler's filter delay leaves each 960 a few samples short until the
    *next* frame comes, so every frame leaves one frame (20 ms) late. Here frames are
    resampled as they are pushed — the voice loop's playout pushes ``lead_secs`` ahead —
    so a whole 48 kHz frame is ready when the encoder asks, and aiortc's own resampler,
    given its own rate, passes it through."""

    def __init__(self) -> None:
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=OPUS_RATE)
        self._pending = np.zeros(0, dtype="<i2")

    def clear(self) -> None:
        """Drop what is buffered (a barge-in); the next push starts a fresh stream."""
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=OPUS_RATE)
        self._pending = np.zeros(0, dtype="<i2")

    def push(self, pcm: bytes) -> None:
        frame = pcm_frame(pcm, 0)
        frame.pts = None  # a continuous stream: the resampler keeps its own time
        chunks = [self._pending]
        for out in self._resampler.resample(frame):
            chunks.append(out.to_ndarray().reshape(-1).astype("<i2"))
        self._pending = np.concatenate(chunks)

    def pop(self) -> bytes | None:
        """The next 20 ms at 48 kHz (zero-padded at the end of a stream), or None."""
        if not self._pending.size:
            return None
        out = np.zeros(OPUS_FRAME_SAMPLES, dtype="<i2")
        take = self._pending[:OPUS_FRAME_SAMPLES]
        out[: take.size] = take
        self._pending = self._pending[take.size :]
        return out.tobytes()

    @property
    def buffered_secs(self) -> float:
        return self._pending.size / OPUS_RATE


OPUS_SILENCE = bytes(OPUS_FRAME_SAMPLES * 2)


class AgentAudioTrack(MediaStreamTrack):
    """The agent's voice as an outbound track: 20 ms frames (48 kHz, see
    :class:`OpusRateFrames`) from the voice loop's paced playout, silence between replies
    (Opus needs a steady stream).

    The playout already sends no faster than real time, so this buffer holds only its
    small lead; :meth:`clear` empties it on barge-in."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._frames = OpusRateFrames()
        self._start: float | None = None
        self._pts = 0

    def push(self, pcm: bytes) -> None:
        self._frames.push(pcm)

    def clear(self) -> None:
        self._frames.clear()

    @property
    def buffered_secs(self) -> float:
        return self._frames.buffered_secs

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._pts += OPUS_FRAME_SAMPLES
            delay = self._start + self._pts / OPUS_RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        return pcm_frame(self._frames.pop() or OPUS_SILENCE, self._pts, OPUS_RATE)


async def pcm_from(track: MediaStreamTrack) -> AsyncIterator[bytes]:
    """A remote audio track as PCM16LE mono 16 kHz chunks, until the track ends."""
    resampler = InboundResampler()
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        pcm = resampler.convert(frame)
        if pcm:
            yield pcm


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
