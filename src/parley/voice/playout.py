"""Paced outbound audio that knows which words the user actually heard."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from parley.audio.pcm import FRAME_SAMPLES, SAMPLE_RATE
from parley.voice.echo import EchoReference
from parley.voice.events import SessionSink

FRAME_SECS = FRAME_SAMPLES / SAMPLE_RATE


@dataclass
class PlayedSentence:
    text: str
    total_samples: int
    played_samples: int = 0
    mark: str | None = None
    """The transport's mark after this sentence, where the transport has marks (a phone
    line): echoed once the listener has heard all of it."""

    def heard_text(self) -> str:
        """The words heard, pro rata to the audio played (word timing is not known)."""
        if self.played_samples >= self.total_samples:
            return self.text
        words = self.text.split()
        n = int(len(words) * self.played_samples / max(1, self.total_samples))
        return " ".join(words[:n])


@dataclass
class AudioPlayout:
    """Sends 20 ms frames in real time, ``lead_secs`` ahead of the listener.

    Sending no faster than real time keeps unplayed audio on the server, where a
    barge-in can drop it, instead of in a client buffer the server cannot reach.
    """

    sink: SessionSink
    lead_secs: float
    sentences: list[PlayedSentence] = field(default_factory=list)
    first_frame_at: float | None = None
    """Loop time of the first frame sent."""
    echo: EchoReference | None = None
    """Where every frame sent is kept a moment, to recognise it if the microphone hears it."""
    gain: float = 1.0
    """The volume frames go out at from now on: lowered ("ducked") while the caller may
    be interrupting, restored if they were not."""
    _sent_gain: float = 1.0
    _next_at: float | None = None
    _carry: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype="<i2"))

    def _send(self, frame: np.ndarray, now: float) -> None:
        if self.echo is not None:
            self.echo.add(now, frame)
        start, end = self._sent_gain, self.gain
        if start != 1.0 or end != 1.0:
            # A ramp over the frame when the gain changes: a step would click.
            ramp = np.linspace(start, end, frame.size, dtype=np.float32)
            frame = (frame.astype(np.float32) * ramp).astype("<i2")
        self._sent_gain = end
        self.sink.send_audio(frame.tobytes())

    async def play(self, text: str, audio: np.ndarray) -> None:
        """Play one sentence's audio; returns when its last frame has been sent."""
        loop = asyncio.get_running_loop()
        sentence = PlayedSentence(text, int(audio.size))
        self.sentences.append(sentence)
        # The previous sentence's last partial frame leaves with this one's first.
        lead_in = self._carry.size
        carried = self.sentences[-2] if lead_in and len(self.sentences) > 1 else None
        pcm = np.concatenate([self._carry, audio.astype("<i2")])
        n_frames = pcm.size // FRAME_SAMPLES
        self._carry = pcm[n_frames * FRAME_SAMPLES :]
        for i in range(n_frames):
            now = loop.time()
            if self._next_at is None or self._next_at < now:
                # Start, or restart after a gap (the next sentence was late): no burst.
                self._next_at = now
            delay = self._next_at - self.lead_secs - now
            if delay > 0:
                await asyncio.sleep(delay)
            self._send(pcm[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES], loop.time())
            if self.first_frame_at is None:
                self.first_frame_at = loop.time()
            if carried is not None:
                # Its end went out in that frame: it was sent whole (else its last word
                # would never count as heard).
                carried.played_samples = carried.total_samples
                carried = None
            self._next_at += FRAME_SECS
            sent = (i + 1) * FRAME_SAMPLES - lead_in
            sentence.played_samples = min(sentence.total_samples, max(0, sent))
        sentence.played_samples = max(0, sentence.total_samples - self._carry.size)
        mark = getattr(self.sink, "mark", None)
        if mark is not None:
            sentence.mark = mark()

    async def finish(self) -> None:
        """Send the last partial frame (zero-padded) and wait until it has been heard."""
        if self._carry.size:
            frame = np.zeros(FRAME_SAMPLES, dtype="<i2")
            frame[: self._carry.size] = self._carry
            self._send(frame, asyncio.get_running_loop().time())
            if self.sentences:
                self.sentences[-1].played_samples = self.sentences[-1].total_samples
            self._carry = self._carry[:0]
        if self._next_at is not None:
            remaining = self._next_at - asyncio.get_running_loop().time()
            if remaining > 0:
                await asyncio.sleep(remaining)

    def recent_text(self) -> str:
        """Every word of the reply sent so far (what an echo of it could repeat)."""
        return " ".join(s.text for s in self.sentences if s.played_samples)

    def heard_text(self) -> str:
        """What the listener heard, allowing for the ``lead_secs`` still in flight; on a
        transport with marks, from the marks it echoed."""
        played_at = getattr(self.sink, "played_at", None)
        if played_at is not None and any(s.mark for s in self.sentences):
            return self._heard_by_marks(played_at)
        loop = asyncio.get_running_loop()
        in_flight = 0
        if self._next_at is not None:
            in_flight = int(max(0.0, self._next_at - loop.time()) * SAMPLE_RATE)
        parts: list[str] = []
        for sentence in reversed(self.sentences):
            unheard = min(in_flight, sentence.played_samples)
            in_flight -= unheard
            heard = PlayedSentence(
                sentence.text, sentence.total_samples, sentence.played_samples - unheard
            )
            parts.append(heard.heard_text())
        return " ".join(p for p in reversed(parts) if p)

    def _heard_by_marks(self, played_at: Callable[[str], float | None]) -> str:
        """Every sentence whose mark came back was heard whole; of the one after, the
        words pro rata to the time since the mark before it (or since its first frame)."""
        now = asyncio.get_running_loop().time()
        since = self.first_frame_at if self.first_frame_at is not None else now
        parts: list[str] = []
        for sentence in self.sentences:
            echoed = played_at(sentence.mark) if sentence.mark else None
            if echoed is not None:
                parts.append(sentence.text)
                since = echoed
                continue
            heard = min(sentence.played_samples, int(max(0.0, now - since) * SAMPLE_RATE))
            parts.append(PlayedSentence(sentence.text, sentence.total_samples, heard).heard_text())
            break
        return " ".join(p for p in parts if p)
