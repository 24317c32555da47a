"""Loads every engine once per process; all sessions share them."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from parley.config import Settings
from parley.engines.background import BackgroundWork, lanes_quiet
from parley.engines.base import (
    EndOfTurnModel,
    EngineError,
    LanguageModel,
    Reviser,
    SpeechToText,
    TextEndOfTurnModel,
    TextToSpeech,
    VoiceActivityDetector,
)
from parley.engines.fallback import stage_engines
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
    reviser: Reviser | None = None
    """Revises finished turns; None when ``stt.revise`` is off or nothing can."""
    background: BackgroundWork = field(default_factory=BackgroundWork)
    """This process's background inference (revisions), behind its live work."""

    async def close(self) -> None:
        reviser = self.reviser
        own_reviser = reviser.stt if reviser is not None and reviser.name != "live" else None
        for engine in (self.stt, self.llm, self.vad, self.eou, self.eou_text, own_reviser):
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
    """Load the engines (model loading runs in threads, TTS workers start meanwhile); a
    stage with fallbacks is a chain of its providers (``engines/chains.py``)."""
    from parley.engines.chains import build_llm, build_reviser, build_stt, build_tts
    from parley.engines.turn_smart import SmartTurn
    from parley.engines.vad_silero import SileroVAD

    start = time.perf_counter()
    tts_started = asyncio.ensure_future(build_tts(settings))
    try:
        stt = await build_stt(settings)
        reviser = await build_reviser(settings, stt)
        llm = await build_llm(settings)
        vad = await asyncio.to_thread(SileroVAD)
        eou = await asyncio.to_thread(SmartTurn, None, settings.stt.device)
        eou_text: TextEndOfTurnModel | None = None
        if settings.turn.text_model:
            from parley.engines.turn_text import TextTurnDetector

            # Sessions whose audio is flowing: how many share the cores with its calls.
            eou_text = await asyncio.to_thread(TextTurnDetector, settings.turn, vad.live_streams)
    except BaseException:
        tts_started.cancel()
        await asyncio.wait([tts_started])  # its Piper workers are stopped by the cancel
        raise
    tts = await tts_started
    engines = Engines(
        stt=stt,
        llm=llm,
        tts=tts,
        vad=vad,
        eou=eou,
        eou_text=eou_text,
        reviser=reviser,
        background=background_work(tts),
    )
    await warm_up(engines)
    log.info(
        "engines loaded",
        seconds=round(time.perf_counter() - start, 2),
        stt_device=getattr(stt, "device", "chain"),
        llm_device=getattr(llm, "device", "chain"),
        tts_device=getattr(tts, "device", "chain"),
    )
    return engines


async def warm_up(engines: Engines) -> None:
    """First inference of each model is slow (allocation, graph init): pay it at start-up.
    Remote providers are not warmed: one that is down must not stop start-up. A warm-up
    that fails or times out (a machine busy at start) is logged, not fatal: the first
    call pays the cost instead, and ``/ready`` says whether the engine answers."""
    import numpy as np

    from parley.engines.base import ChatMessage, first_item

    silence = np.zeros(16_000, dtype=np.float32)

    async def first_token(llm: Any) -> None:
        await first_item(llm.stream_chat([ChatMessage("user", "Hi")]))

    async def whole(tts: Any) -> None:
        async for _ in tts.synthesize("Hello."):
            pass

    steps: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("stt", functools.partial(s.transcribe, silence)) for s in _embedded(engines.stt)
    ]
    reviser = engines.reviser
    if reviser is not None and reviser.local and reviser.name != "live":
        steps.append(("stt_reviser", functools.partial(reviser.stt.transcribe, silence)))
    steps.append(("end_of_turn", functools.partial(engines.eou.completion_probability, silence)))
    if engines.eou_text is not None:
        text_model = engines.eou_text
        steps.append(("end_of_turn_text", lambda: text_model.completion_probability("Hello")))
    steps += [("tts", functools.partial(whole, t)) for t in _embedded(engines.tts)]
    steps += [("llm", functools.partial(first_token, m)) for m in _embedded(engines.llm)]
    for name, step in steps:
        try:
            await step()
        except (EngineError, TimeoutError) as exc:
            log.warning("warm-up failed (the first call pays)", engine=name, error=repr(exc))


def background_work(tts: TextToSpeech) -> BackgroundWork:
    """The process's background work, held back by every lane and by ``tts``'s Piper."""
    return BackgroundWork(functools.partial(_quiet, tts))


def _quiet(tts: TextToSpeech) -> bool:
    """No live inference under way here: the lanes, and Piper (its own processes)."""
    return lanes_quiet() and not any(getattr(t, "busy", False) for t in _embedded(tts))


def _embedded(engine: Any) -> list[Any]:
    """The engines of a stage that run here (a chain's embedded providers)."""
    return [e for e in stage_engines(engine) if getattr(e, "device", None) != "remote"]
