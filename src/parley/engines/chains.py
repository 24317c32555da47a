"""Builds each engine stage from its settings: one engine when the stage has no
fallbacks (as before), else a fallback chain of its primary and each fallback, every one
with its own circuit breaker."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel

from parley.config import Settings
from parley.engine_settings import (
    LLMSettings,
    STTSettings,
    TTSSettings,
    provider_name,
)
from parley.engines.base import LanguageModel, Reviser, SpeechToText, TextToSpeech, first_item
from parley.engines.breaker import CircuitBreaker
from parley.engines.fallback import FallbackSTT, Provider, ProviderChain, stage_engines
from parley.engines.fallback_llm import FallbackLLM
from parley.engines.fallback_tts import FallbackTTS

S = TypeVar("S", bound=BaseModel)


def as_stage(stage: S, entry: BaseModel) -> S:
    """A fallback ``entry`` as a whole stage's settings: its own provider fields (its
    defaults where unset), the stage's other fields (token budget, timeouts, trimming)."""
    own = {name: getattr(entry, name) for name in type(entry).model_fields}
    return stage.model_copy(update={**own, "fallbacks": []})


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


async def build_stt(settings: Settings) -> SpeechToText:
    stt: SpeechToText = await _build(settings.stt, "stt", _one_stt, FallbackSTT, "attempt_timeout")
    return stt


async def build_reviser(settings: Settings, live: SpeechToText) -> Reviser | None:
    """The recognizer that revises finished turns: ``stt.reviser`` when set, else the
    live recognizer when its primary runs here; None when revising is off, or the live
    recognizer is remote and no reviser is named (a paid provider is not asked twice)."""
    stage = settings.stt
    if not stage.revise:
        return None
    if stage.reviser is not None:
        name = provider_name(stage.reviser)  # never "live" (the settings refuse it)
        own = as_stage(stage, stage.reviser)
        engine = await _one_stt(own, lane="stt-revise")
        return Reviser(engine, name, local=own.provider != "openai")
    # Only a primary that runs here: revising a remote recognizer's words with the
    # embedded fallback would trade better words for worse.
    primary = stage_engines(live)[0]
    return None if getattr(primary, "device", None) == "remote" else Reviser(primary, "live", True)


async def build_llm(settings: Settings) -> LanguageModel:
    llm: LanguageModel = await _build(
        settings.llm, "llm", _one_llm, FallbackLLM, "first_token_timeout"
    )
    return llm


async def build_tts(settings: Settings) -> TextToSpeech:
    tts: TextToSpeech = await _build(
        settings.tts, "tts", _one_tts, FallbackTTS, "first_audio_timeout"
    )
    return tts


async def _build(
    stage: Any,
    kind: str,
    one: Callable[[Any], Awaitable[Any]],
    chain: type[ProviderChain[Any]],
    timeout_field: str,
) -> Any:
    """One engine for a stage without fallbacks, else the chain of all its providers."""
    if not stage.fallbacks:
        return await one(stage)
    entries = [stage, *stage.fallbacks]
    names = _unique([provider_name(e) for e in entries])
    # Each engine is told its name in the chain: the usage it reports (costs) then names
    # the provider as the chain's metrics and failovers do.
    engines = [
        await one(as_stage(stage, e).model_copy(update={"name": name}))
        for e, name in zip(entries, names, strict=True)
    ]
    return chain(kind, _providers(kind, stage, entries, engines, names, timeout_field))


def _providers(
    kind: str,
    stage: Any,
    entries: Sequence[Any],
    engines: Sequence[Any],
    names: Sequence[str],
    timeout_field: str,
) -> list[Provider[Any]]:
    return [
        Provider(
            name,
            engine,
            CircuitBreaker(kind, name, stage.breaker, _probe_of(kind, engine)),
            float(getattr(entry, timeout_field)),
        )
        for name, engine, entry in zip(names, engines, entries, strict=True)
    ]


def _probe_of(kind: str, engine: Any) -> Callable[[], Awaitable[None]]:
    """The breaker's tiny request: the engine's own (remote ones mark it as a probe)."""
    own = getattr(engine, "probe", None)
    if own is not None:
        return own

    async def probe() -> None:
        import numpy as np

        from parley.engines.base import ChatMessage

        if kind == "stt":
            await engine.transcribe(np.zeros(8_000, dtype=np.float32))
            return
        stream = (
            engine.stream_chat([ChatMessage("user", "Hi")])
            if kind == "llm"
            else engine.synthesize("Hi.")
        )
        await first_item(stream)

    return probe


async def _one_stt(settings: STTSettings, lane: str = "stt") -> SpeechToText:
    if settings.provider == "openai":
        from parley.engines.stt_openai import OpenAICompatibleSTT

        return OpenAICompatibleSTT(settings)
    from parley.engines.stt_whisper import WhisperSTT

    return await asyncio.to_thread(WhisperSTT, settings, lane)


async def _one_llm(settings: LLMSettings) -> LanguageModel:
    if settings.provider == "openai":
        from parley.engines.llm_openai import OpenAICompatibleLLM

        return OpenAICompatibleLLM(settings)
    from parley.engines.llm_llama import LlamaLLM

    return await asyncio.to_thread(LlamaLLM, settings)


async def _one_tts(settings: TTSSettings) -> TextToSpeech:
    if settings.provider == "openai":
        from parley.engines.tts_openai import OpenAICompatibleTTS

        return OpenAICompatibleTTS(settings)
    from parley.engines.tts_piper import PiperTTS

    tts = PiperTTS(settings)
    await tts.start()
    return tts
