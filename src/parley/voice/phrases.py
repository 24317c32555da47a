"""Phrases the agent may need when its engines cannot give it words: the filler said
while a slow or failing provider is awaited ("One moment.") and the apology said when a
reply fails on every provider. Both are synthesized once at start-up, so they cost
nothing when needed and are heard even while every speech provider is down."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from parley.config import AgentSettings
from parley.engines import TextToSpeech
from parley.telemetry import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class SpokenPhrase:
    text: str
    audio: np.ndarray
    """int16 16 kHz mono."""


@dataclass(frozen=True)
class CannedPhrases:
    filler: SpokenPhrase | None = None
    apology: SpokenPhrase | None = None

    @classmethod
    async def prepare(cls, tts: TextToSpeech, agent: AgentSettings) -> CannedPhrases:
        """Synthesize the agent file's phrases; one that cannot be synthesized is left out
        (logged), never a reason not to start."""
        return cls(await _synthesize(tts, agent.filler), await _synthesize(tts, agent.apology))


async def _synthesize(tts: TextToSpeech, text: str) -> SpokenPhrase | None:
    if not text.strip():
        return None
    try:
        parts = [chunk async for chunk in tts.synthesize(text)]
    except Exception as exc:
        log.warning("could not synthesize a canned phrase", text=text, error=repr(exc))
        return None
    if not parts:
        return None
    return SpokenPhrase(text, np.concatenate(parts).astype("<i2"))
