"""Loads every engine once per process; all sessions share them."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from parley.config import Settings
from parley.engines.base import (
    EndOfTurnModel,
    LanguageModel,
    SpeechToText,
    TextEndOfTurnModel,
    TextToSpeech,
    VoiceActivityDetector,
)
from parley.telemetry import get_logger

log = get_logger(__name__)


@dataclass
class Engines:
    stt: SpeechToText
    llm: LanguageModel
    tts: TextToSpeech
    vad: VoiceActivityDetector
    eou: EndOfTurnModel
    eou_text: TextEndOfTurnModel | None = None
    """The words' end-of-turn model; None when ``turn.text_model`` is off."""

    async def close(self) -> None:
        for engine in (self.stt, self.llm, self.vad, self.eou, self.eou_text):
            if engine is None:
                continue
            aclose = getattr(engine, "aclose", None)
            if aclose is not None:
                await aclose()
                continue
            close = getattr(engine, "close", None)
            if close is not None:
                close()
        close_tts = getattr(self.tts, "close", None)
        if close_tts is not None:
            await close_tts()


async def load_engines(settings: Settings) -> Engines:
    """Load the embedded engines (model loading runs in threads, TTS workers start meanwhile)."""
    from parley.engines.llm_llama import LlamaLLM
    from parley.engines.stt_whisper import WhisperSTT
    from parley.engines.tts_piper import PiperTTS
    from parley.engines.turn_smart import SmartTurn
    from parley.engines.vad_silero import SileroVAD

    start = time.perf_counter()
    tts = PiperTTS(settings.tts)
    tts_started = asyncio.ensure_future(tts.start())
    stt = await asyncio.to_thread(WhisperSTT, settings.stt)
    llm: LanguageModel
    if settings.llm.provider == "openai":
        from parley.engines.llm_openai import OpenAICompatibleLLM

        llm = OpenAICompatibleLLM(settings.llm)
    else:
        llm = await asyncio.to_thread(LlamaLLM, settings.llm)
    vad = await asyncio.to_thread(SileroVAD)
    eou = await asyncio.to_thread(SmartTurn, None, settings.stt.device)
    eou_text: TextEndOfTurnModel | None = None
    if settings.turn.text_model:
        from parley.engines.turn_text import TextTurnDetector

        eou_text = await asyncio.to_thread(TextTurnDetector, settings.turn)
    await tts_started
    engines = Engines(stt=stt, llm=llm, tts=tts, vad=vad, eou=eou, eou_text=eou_text)
    await warm_up(engines)
    log.info(
        "engines loaded",
        seconds=round(time.perf_counter() - start, 2),
        stt_device=stt.device,
        llm_device=getattr(llm, "device", "?"),
        tts_device=tts.device,
    )
    return engines


async def warm_up(engines: Engines) -> None:
    """First inference of each model is slow (allocation, graph init): pay it at start-up."""
    import numpy as np

    from parley.engines.base import ChatMessage

    await engines.stt.transcribe(np.zeros(16_000, dtype=np.float32))
    await engines.eou.completion_probability(np.zeros(16_000, dtype=np.float32))
    if engines.eou_text is not None:
        await engines.eou_text.completion_probability("Hello")
    async for _ in engines.tts.synthesize("Hello."):
        pass
    if getattr(engines.llm, "device", None) == "remote":
        return  # nothing to warm here; a provider that is down must not stop start-up
    async for _ in engines.llm.stream_chat([ChatMessage("user", "Hi")]):
        break
