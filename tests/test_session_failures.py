"""VoiceSession against engine failures, with test doubles for the engines (a unit test
of the voice layer; the real engines are exercised end to end elsewhere)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np
import pytest

from inprocess_server import FixedSTT, LoudnessVAD, SureEOU, ToneTTS
from parley.config import Settings
from parley.engines import ChatMessage, EngineError, Engines, Transcript


class ScriptedLLM:
    """Fails as told for the first reply, then answers."""

    def __init__(self, failure: str) -> None:
        self.failure = failure
        self.calls = 0

    async def stream_chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[str]:
        self.calls += 1
        if self.calls == 1 and self.failure == "hang":
            await asyncio.sleep(3600)
        if self.calls == 1 and self.failure == "error":
            raise EngineError("model crashed")
        yield "It is noon."

    async def prefill(self, messages: Sequence[ChatMessage]) -> None:
        return None


class Sink:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.frames = 0

    def send_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def send_audio(self, pcm: bytes) -> None:
        self.frames += 1

    def clear_audio(self) -> None:
        pass

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


async def speak_one_turn(session: Any) -> None:
    speech = (np.sin(np.arange(16_000) / 5) * 20_000).astype("<i2")
    for chunk in (speech, np.zeros(16_000, dtype="<i2")):
        for i in range(0, chunk.size, 320):
            session.push_audio(chunk[i : i + 320].tobytes())
            await asyncio.sleep(0.002)


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    """Poll: the session under test has no hook to signal these conditions."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


@pytest.mark.parametrize(("failure", "code"), [("hang", "llm_timeout"), ("error", "engine_error")])
async def test_llm_failure_is_reported_and_the_session_goes_on(
    failure: str, code: str, tmp_path: Any, monkeypatch: Any
) -> None:
    from parley.voice.session import VoiceSession

    monkeypatch.chdir(tmp_path)  # no ./parley.toml: the defaults (no greeting)
    monkeypatch.delenv("PARLEY_CONFIG", raising=False)
    # speak_one_turn feeds audio at 10x real time: lift the inbound rate bound for it.
    settings = Settings(
        llm={"timeout": 0.3},
        turn={"preemptive_generation": False},
        server={"max_audio_rate": 20},
    )
    llm = ScriptedLLM(failure)
    engines = Engines(stt=FixedSTT(), llm=llm, tts=ToneTTS(), vad=LoudnessVAD(), eou=SureEOU())
    sink = Sink()
    session = VoiceSession(engines, settings, sink)
    await session.start()
    try:
        await speak_one_turn(session)
        await wait_for(lambda: sink.of("error"))
        (error,) = sink.of("error")
        assert error["code"] == code and error["turn_id"] == 1 and error["message"]
        await wait_for(lambda: session.state == "listening")

        # The next turn is answered normally.
        await speak_one_turn(session)
        await wait_for(lambda: [e for e in sink.of("agent.text") if e["turn_id"] == 2])
        assert [e["text"] for e in sink.of("agent.text")] == ["It is noon."]
        assert sink.frames > 0
        await wait_for(lambda: session.state == "listening")
        # The failed turn keeps its user message; only the answered one has a reply.
        assert [m.role for m in session.history.messages] == ["user", "user", "assistant"]
    finally:
        await session.close()


class SlowSTT:
    """Transcribes each segment as "part", slowly (longer than the endpointing delay)."""

    busy = False

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        await asyncio.sleep(0.5)
        return Transcript("part", 500.0)


async def test_resuming_speech_while_a_segment_is_transcribed_keeps_the_turn_alive(
    tmp_path: Any, monkeypatch: Any
) -> None:
    """Regression: speech resuming while endpointing waited for a transcription used to
    cancel that transcription with it, and the turn never ended."""
    from parley.voice.session import VoiceSession

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PARLEY_CONFIG", raising=False)
    settings = Settings(turn={"preemptive_generation": False, "use_text_hint": False})
    engines = Engines(
        stt=SlowSTT(), llm=ScriptedLLM("none"), tts=ToneTTS(), vad=LoudnessVAD(), eou=SureEOU()
    )
    sink = Sink()
    session = VoiceSession(engines, settings, sink)
    await session.start()
    speech = (np.sin(np.arange(8_000) / 5) * 20_000).astype("<i2")  # 0.5 s
    pause = np.zeros(int(0.45 * 16_000), dtype="<i2")  # past stop_secs + min delay
    tail = np.zeros(32_000, dtype="<i2")
    try:
        for chunk in (speech, pause, speech, tail):
            for i in range(0, chunk.size, 320):
                session.push_audio(chunk[i : i + 320].tobytes())
                await asyncio.sleep(0.02)  # real time: the endpointing clock is the wall
        await wait_for(lambda: sink.of("turn.ended"), timeout=5)
        (ended,) = sink.of("turn.ended")
        assert ended["text"] == "part part"
    finally:
        await session.close()
