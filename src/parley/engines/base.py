"""The engine protocols: one small interface per kind, local and remote implementations behind it.

Audio crossing these interfaces is float32 mono at 16 kHz (in) or int16 mono at 16 kHz (out).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar, runtime_checkable

import numpy as np

T = TypeVar("T")


async def first_item(stream: AsyncIterator[T]) -> T | None:
    """The first item of an engine's stream (None if it is empty), then the stream closed
    at once — not when collected: an embedded model's lane stays busy until then."""
    try:
        async for item in stream:
            return item
        return None
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


class EngineError(RuntimeError):
    """An engine failed (model error, worker died, timeout); the session reports it and goes on."""


@dataclass(frozen=True, slots=True)
class Transcript:
    text: str
    duration_ms: float
    """Wall time the transcription took."""
    avg_logprob: float | None = None
    """The model's mean log-probability per token of the text, where it gives one: how
    sure it is of the words (a few invented on a hum score far lower)."""


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Literal["system", "user", "assistant"]
    content: str


def person_message(text: str, label: str = "a human colleague") -> ChatMessage:
    """What a person who took over a conversation said, as the model sees it: the agent's
    side of the conversation, marked as a person's words (the agent must not claim them)."""
    return ChatMessage("assistant", f"[{label} said:] {text}")


@runtime_checkable
class SpeechToText(Protocol):
    async def transcribe(self, audio: np.ndarray) -> Transcript:
        """Transcribe float32 16 kHz mono audio."""
        ...

    @property
    def busy(self) -> bool:
        """True while work is queued or running (partials are skipped then)."""
        ...


@dataclass(frozen=True, slots=True)
class Reviser:
    """The recognizer that revises finished turns (``stt.revise``)."""

    stt: SpeechToText
    name: str
    """``live`` when it is the live recognizer itself, else its provider's name."""
    local: bool
    """It runs on this machine: it waits for the process to be quiet (background work)."""


@runtime_checkable
class LanguageModel(Protocol):
    def stream_chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[str]:
        """Stream the reply's text deltas; closing the iterator cancels generation."""
        ...

    async def prefill(self, messages: Sequence[ChatMessage]) -> None:
        """Optionally pre-compute the prompt prefix of the next turn (a no-op is fine)."""
        ...


@runtime_checkable
class TextToSpeech(Protocol):
    def synthesize(self, text: str) -> AsyncIterator[np.ndarray]:
        """Stream int16 16 kHz mono audio for ``text``; closing the iterator cancels it."""
        ...


class VADStream(Protocol):
    """Per-session VAD state over a shared model."""

    window_samples: int

    async def probability(self, window: np.ndarray) -> float:
        """Speech probability of one window of ``window_samples`` float32 samples."""
        ...


@runtime_checkable
class VoiceActivityDetector(Protocol):
    def stream(self) -> VADStream: ...


@runtime_checkable
class EndOfTurnModel(Protocol):
    async def completion_probability(self, audio: np.ndarray) -> float:
        """Probability that the user has finished their turn, given the turn's audio so far."""
        ...


@runtime_checkable
class TextEndOfTurnModel(Protocol):
    async def completion_probability(self, user_text: str) -> float:
        """Probability that the user's message is whole after ``user_text``."""
        ...


@runtime_checkable
class TextReadAhead(Protocol):
    """A words' end-of-turn model that reads a caller's words while they still speak, so
    that its verdict when they stop reads only the words since."""

    async def completion_probability(self, user_text: str, caller: str | None = None) -> float: ...

    async def read_ahead(self, user_text: str, caller: str) -> None:
        """Read ``caller``'s words so far, behind every verdict someone waits for."""
        ...

    def forget(self, caller: str) -> None:
        """Drop what was read of ``caller``'s words."""
        ...
