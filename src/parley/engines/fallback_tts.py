"""Text-to-speech over a fallback chain.

A sentence whose synthesis fails before any audio goes whole to the next provider. One
that dies part-way re-synthesizes only the rest of the sentence there: the words already
covered by the audio handed on are estimated from the provider's speaking rate (learnt
from its finished sentences), rounding down, so a word cut in the middle is said again
rather than lost.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import numpy as np

from parley.audio.pcm import SAMPLE_RATE
from parley.engines.base import EngineError, TextToSpeech
from parley.engines.fallback import AllProvidersFailed, ProviderChain, attempt_timeout, each_within

DEFAULT_SECS_PER_CHAR = 0.07
"""An English voice at an ordinary pace (~14 characters a second), until measured."""
RATE_WEIGHT = 0.2
"""How much each finished sentence moves a provider's measured pace."""


def rest_of_sentence(text: str, heard_secs: float, secs_per_char: float) -> str:
    """The words of ``text`` not yet covered by ``heard_secs`` of its audio."""
    words = text.split()
    covered = 0.0
    for i, word in enumerate(words):
        covered += (len(word) + 1) * secs_per_char
        if covered > heard_secs:
            return " ".join(words[i:])
    return ""


class FallbackTTS(ProviderChain[TextToSpeech]):
    def __post_init__(self) -> None:
        self.pace: dict[str, float] = {p.name: DEFAULT_SECS_PER_CHAR for p in self.providers}

    async def synthesize(self, text: str) -> AsyncIterator[np.ndarray]:
        remaining = text
        failures: list[tuple[str, str]] = []
        candidates = list(self.candidates())
        for provider in candidates:
            timeout = attempt_timeout(provider, candidates)
            started = time.monotonic()
            samples = 0
            stream = provider.engine.synthesize(remaining)
            try:
                async for audio in each_within(stream, timeout):
                    samples += audio.size
                    yield audio
            except (EngineError, TimeoutError) as exc:
                kind = self.failed(provider, exc, started=started)
                failures.append((provider.name, kind))
                heard = samples / SAMPLE_RATE
                rest = rest_of_sentence(remaining, heard, self.pace[provider.name])
                self.moved_on(
                    provider,
                    kind,
                    {"sentence_chars": len(text), "rest_chars": len(rest), "audio_secs": heard},
                    candidates,
                )
                if samples and not rest:
                    return  # it had said the whole sentence: nothing is missing
                remaining = rest or remaining
                continue
            finally:
                await stream.aclose()  # type: ignore[attr-defined]
            self.succeeded(provider)
            if samples and remaining:
                measured = samples / SAMPLE_RATE / len(remaining)
                pace = self.pace[provider.name]
                self.pace[provider.name] = pace + RATE_WEIGHT * (measured - pace)
            return
        raise AllProvidersFailed(self.stage, failures)

    async def close(self) -> None:
        await self.aclose()
