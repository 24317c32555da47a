"""Paced outbound audio that knows which words the user actually heard."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import numpy as np

from parley.audio.pcm import FRAME_SAMPLES, SAMPLE_RATE
from parley.engines.fallback_tts import DEFAULT_SECS_PER_CHAR
from parley.voice.echo import EchoReference
from parley.voice.events import SessionSink

FRAME_SECS = FRAME_SAMPLES / SAMPLE_RATE


@dataclass
class PlayedSentence:
    text: str
    total_samples: int
    """Its audio's length; while it still streams in, what has arrived so far."""
    played_samples: int = 0
    mark: str | None = None
    """The transport's mark after this sentence, where the transport has marks (a phone
    line): echoed once the listener has heard all of it."""
    complete: bool = True
    """Whether all its audio has arrived (a streamed sentence plays as it comes)."""

    def heard_text(self, played: int | None = None) -> str:
        """The words heard after ``played`` samples (default: all played so far), pro rata
        to the audio (word timing is not known)."""
        played = self.played_samples if played is None else played
        total = self.total_samples
        if not self.complete:
            # Its length is not known yet: at least as long as the text at an ordinary
            # pace, so a word is counted as heard late rather than early.
            total = max(total, int(len(self.text) * DEFAULT_SECS_PER_CHAR * SAMPLE_RATE))
        elif played >= total:
            return self.text
        words = self.text.split()
        n = int(len(words) * min(played, total) / max(1, total))
        if not self.complete:
            # A slower voice than the estimate outruns it: the last word is only heard
            # once the sentence's whole audio is in and played.
            n = min(n, len(words) - 1)
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
        await self.play_stream(text, _whole(audio), total_samples=int(audio.size))

    async def play_stream(
        self, text: str, chunks: AsyncIterator[np.ndarray], total_samples: int | None = None
    ) -> None:
        """Play one sentence's audio as its chunks arrive (a streaming TTS's first chunk is
        heard without waiting for the rest); returns when its last frame has been sent."""
        loop = asyncio.get_running_loop()
        sentence = PlayedSentence(text, total_samples or 0, complete=total_samples is not None)
        self.sentences.append(sentence)
        # The previous sentence's last partial frame leaves with this one's first.
        lead_in = self._carry.size
        carried = self.sentences[-2] if lead_in and len(self.sentences) > 1 else None
        received = 0
        frames_sent = 0
        async for audio in chunks:
            if not audio.size:
                continue
            received += int(audio.size)
            if not sentence.complete:
                sentence.total_samples = received
            pcm = np.concatenate([self._carry, audio.astype("<i2")])
            n_frames = pcm.size // FRAME_SAMPLES
            self._carry = pcm[n_frames * FRAME_SAMPLES :]
            for i in range(n_frames):
                now = loop.time()
                if self._next_at is None or self._next_at < now:
                    # Start, or restart after a gap (the next audio was late): no burst.
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
                frames_sent += 1
                sent = frames_sent * FRAME_SAMPLES - lead_in
                sentence.played_samples = min(received, max(0, sent))
        sentence.total_samples = received
        sentence.complete = True
        sentence.played_samples = max(0, received - self._carry.size)
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
            parts.append(sentence.heard_text(sentence.played_samples - unheard))
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
            parts.append(sentence.heard_text(heard))
            break
        return " ".join(p for p in parts if p)


async def _whole(audio: np.ndarray) -> AsyncIterator[np.ndarray]:
    yield audio
