"""What the voice loop knows about the user's speech: segments and the turn they form."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from parley.engines import Transcript

TURN_AUDIO_SECS = 8.0  # Smart Turn reads the last 8 s


@dataclass
class Segment:
    """One stretch of user speech (with pre-roll), from VAD start to VAD stop."""

    index: int
    audio: list[np.ndarray]
    overlap: bool
    """Began while the agent was replying: a barge-in candidate, not yet part of a turn."""
    last_partial_secs: float = 0.0
    check: asyncio.Task[bool] | None = None
    last_check_secs: float = 0.0
    speech_secs: float = 0.0
    """How long the speech has lasted, never counting the silence that trails it (kept
    for overlaps: barge-in's checks and ``min_duration`` go by it)."""
    echo: bool = False
    """An overlap that sounds like the agent's own voice played back."""
    echo_similarity: float = 0.0
    stop_words: str | None = None
    """An overlap whose words say "stop", heard before it lasted ``min_duration``."""
    words: str = ""
    """An overlap's words as its last barge-in check heard them."""
    carried_secs: float = 0.0
    """Speech of earlier stretches of the same utterance over the agent that this one
    carries (its audio starts with theirs): "Wait, | stop, | I have…" is judged whole."""
    onset_secs: float = 0.0
    """Audio time (the session's inbound audio, from its start) of the speech's onset."""
    ended_secs: float = 0.0
    """Audio time of its last speech (set when it stops)."""
    first_window: int = 0
    """Index (in the session's window count) of the first window of ``audio``."""
    last_window: int = 0
    """Index of the window that ended it (set when it stops)."""
    stopped: bool = False
    stopped_at: float = 0.0
    """Loop time of the segment's last speech (set when it stops)."""
    early: asyncio.Task[Transcript | None] | None = None
    """Transcription started at the first silence, valid while the silence lasts."""
    heard_windows: int = 0
    """How many of its windows the latest final transcription of it was given (an early
    one hears less than the whole: a revision has more to hear)."""

    def samples(self) -> np.ndarray:
        return np.concatenate(self.audio) if self.audio else np.zeros(0, np.float32)


@dataclass
class UserTurn:
    turn_id: int
    """Provisional while the user speaks: the next number after the last confirmed turn.
    A turn dropped for having no words gives its number to the next one, so confirmed
    turns are numbered 1, 2, 3… like the stored ones (see SessionRecorder)."""
    audio: deque[np.ndarray]
    texts: dict[int, str] = field(default_factory=dict)
    finals: set[asyncio.Task[None]] = field(default_factory=set)
    last_speech_at: float = 0.0
    stt_ms: float | None = None
    eou_model_ms: float | None = None
    eou_probability: float | None = None
    eou_text_probability: float | None = None
    eou_delay: float | None = None
    """The silence that ended the turn, as the end-of-turn rule chose it."""
    text_scores: dict[str, asyncio.Task[float | None]] = field(default_factory=dict)
    """The text end-of-turn model's verdict on the turn's latest transcript (begun early)."""
    confirmed_at: float | None = None
    drafts_discarded: int = 0
    """Replies drafted on this turn then dropped because the user went on speaking."""
    early_finals_discarded: int = 0
    marks: dict[str, float] = field(default_factory=dict)
    """Loop times of the turn's steps, for the timeline in turn.metrics."""
    segments: dict[int, Segment] = field(default_factory=dict)
    """Its ended segments, audio and all, kept (in memory only, bounded by
    ``stt.revise_max_secs``) until the turn is revised; empty when it will not be."""
    revisable: bool = True
    """False once its audio outgrew ``stt.revise_max_secs`` (and was let go)."""
    history_index: int | None = None
    """Where its words are in the conversation history (a revision replaces them)."""

    @property
    def text(self) -> str:
        return self.text_with()

    async def transcribed(self) -> None:
        """Wait for every segment's final transcription.

        ``asyncio.wait``, not ``gather``: the endpointing task that waits here is cancelled
        whenever the user resumes speaking, and gather would cancel the transcriptions with
        it — the turn would then never end (seen in CI as a session that went deaf).
        """
        if self.finals:
            await asyncio.wait(set(self.finals))

    def drop_text_scores(self) -> None:
        """Forget the verdicts asked on a transcript that more speech made stale: one still
        queued is dropped from the model's lane (nobody awaits it while the caller speaks:
        a new segment's endpointing asks afresh), not run for nothing under load."""
        kept = {}
        for text, task in self.text_scores.items():
            if task.done():  # a finished one keeps its answer (the same words may come back)
                kept[text] = task
            else:
                task.cancel()
        self.text_scores = kept

    def text_with(self, index: int | None = None, text: str = "") -> str:
        """The turn's transcript, segments in order, optionally with one segment replaced."""
        texts = dict(self.texts)
        if index is not None:
            texts[index] = text
        return " ".join(t for _, t in sorted(texts.items()) if t)
