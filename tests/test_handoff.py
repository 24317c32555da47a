"""Handoff in the voice layer, with engine doubles: who asks for a person and when, what a
take-over stops, what the person's words become, and handing back (a unit test of the
session; the transports and the console are tested end to end elsewhere)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np
import pytest

from inprocess_server import LoudnessVAD, SureEOU, ToneTTS
from parley.config import Settings
from parley.engines import ChatMessage, EngineError, Engines, Transcript
from test_session_failures import Sink, speak_one_turn, wait_for


class SaidSTT:
    """Transcribes whatever audio as ``text``: the test sets what is being said."""

    busy = False

    def __init__(self, text: str) -> None:
        self.text = text

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        return Transcript(self.text, 1.0)


class RecordingLLM:
    """Answers "It is noon." (or fails ``fail`` times first) and keeps every prompt."""

    def __init__(self, fail: int = 0) -> None:
        self.prompts: list[list[ChatMessage]] = []
        self.fail = fail

    async def stream_chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[str]:
        self.prompts.append(list(messages))
        if self.fail:
            self.fail -= 1
            raise EngineError("model crashed")
        yield "It is noon."

    async def prefill(self, messages: Sequence[ChatMessage]) -> None:
        return None


def make_session(stt: Any, llm: Any, **handoff: Any) -> tuple[Any, Sink]:
    from parley.voice.session import VoiceSession

    settings = Settings(
        turn={"preemptive_generation": False},
        server={"max_audio_rate": 20},  # speak_one_turn feeds audio at 10x real time
        agent={"greeting": ""},
        handoff=handoff,
    )
    engines = Engines(stt=stt, llm=llm, tts=ToneTTS(), vad=LoudnessVAD(), eou=SureEOU())
    sink = Sink()
    return VoiceSession(engines, settings, sink), sink


def supervisor_speech() -> list[bytes]:
    """A second of the supervisor's voice (a loud tone), then a second of silence, in
    20 ms frames as a microphone sends them."""
    tone = (np.sin(np.arange(16_000) / 7) * 12_000).astype("<i2")
    audio = np.concatenate([tone, np.zeros(16_000, "<i2")])
    return [audio[i : i + 320].tobytes() for i in range(0, audio.size, 320)]


async def test_a_caller_asking_for_a_person_is_flagged_and_still_answered() -> None:
    session, sink = make_session(SaidSTT("Can I talk to a real person please?"), RecordingLLM())
    await session.start()
    try:
        await speak_one_turn(session)
        await wait_for(lambda: sink.of("handoff.requested") and sink.of("agent.text"))
        (request,) = sink.of("handoff.requested")
        assert request["by"] == "caller" and request["reason"] == "the caller asked for a person"
        assert session.handoff_state == "requested"
        # Asked twice: one request stands.
        assert session.request_handoff("again", by="caller") is False
    finally:
        await session.close()


async def test_take_over_silences_the_agent_and_hand_back_carries_the_persons_words() -> None:
    stt = SaidSTT("Where is my order?")
    llm = RecordingLLM()
    session, sink = make_session(stt, llm)
    await session.start()
    try:
        assert session.take_over("supervisor:maria") is True
        assert session.take_over("supervisor:other") is False  # one person at a time
        kinds = [e["type"] for e in sink.events if e["type"].startswith("handoff.")]
        assert kinds == ["handoff.requested", "handoff.accepted"]
        assert sink.of("handoff.accepted")[0]["by"] == "supervisor:maria"

        # The caller speaks: transcribed and kept, but nobody's reply is started.
        await speak_one_turn(session)
        await wait_for(lambda: sink.of("turn.ended"))
        await asyncio.sleep(0.3)
        assert not sink.of("agent.text") and llm.prompts == []

        # The supervisor speaks: to the caller (frames out) and, transcribed, into history.
        frames_before = sink.frames
        stt.text = "Hello, this is Maria. It ships tomorrow."
        for frame in supervisor_speech():
            session.human_audio(frame)
        assert sink.frames - frames_before == len(supervisor_speech())
        await wait_for(lambda: sink.of("human.text"))
        assert sink.of("human.text")[0]["text"] == "Hello, this is Maria. It ships tomorrow."

        assert await session.hand_back("supervisor:maria") is True
        assert sink.of("handoff.returned")[0]["by"] == "supervisor:maria"
        # Back with the agent: its next answer's prompt has the person's words, marked.
        stt.text = "Thanks, and when does it arrive?"
        await speak_one_turn(session)
        await wait_for(lambda: sink.of("agent.text"))
        prompt = [m.content for m in llm.prompts[-1]]
        assert "Where is my order?" in prompt
        assert "[a human colleague said:] Hello, this is Maria. It ships tomorrow." in prompt
        assert prompt[-1] == "Thanks, and when does it arrive?"
    finally:
        await session.close()


async def test_audio_of_a_supervisor_who_has_not_taken_over_never_reaches_the_caller() -> None:
    session, sink = make_session(SaidSTT("hello"), RecordingLLM())
    await session.start()
    try:
        for frame in supervisor_speech():
            session.human_audio(frame)
        assert sink.frames == 0 and not sink.of("human.text")
        assert await session.hand_back("supervisor:x") is False  # nobody had it
    finally:
        await session.close()


async def test_failed_turns_in_a_row_ask_for_a_person() -> None:
    session, sink = make_session(SaidSTT("What time is it?"), RecordingLLM(fail=2))
    await session.start()
    try:
        await speak_one_turn(session)
        await wait_for(lambda: len(sink.of("error")) == 1 and session.state == "listening")
        assert not sink.of("handoff.requested")  # one failure is not yet a pattern
        await speak_one_turn(session)
        await wait_for(lambda: sink.of("handoff.requested"))
        (request,) = sink.of("handoff.requested")
        assert request["by"] == "agent" and request["reason"] == "2 failed turns in a row"
    finally:
        await session.close()


@pytest.mark.parametrize(
    ("texts", "asks"),
    [
        (["I need the blue one.", "I need the blue one!", "I NEED the blue one."], True),
        (["I need the blue one.", "No, I said the blue one.", "No, the blue one."], True),
        (["I need the blue one.", "And a red one.", "What time is it?"], False),
    ],
)
async def test_a_caller_who_keeps_repeating_themselves_is_handed_to_a_person(
    texts: list[str], asks: bool
) -> None:
    stt = SaidSTT(texts[0])
    session, sink = make_session(stt, RecordingLLM(), after_repeats=2)
    await session.start()
    try:
        for n, text in enumerate(texts, start=1):
            stt.text = text
            await speak_one_turn(session)
            await wait_for(lambda n=n: len(sink.of("agent.text")) >= n)
            await wait_for(lambda: session.state == "listening")
        assert bool(sink.of("handoff.requested")) is asks
        if asks:
            assert "repeated or corrected" in sink.of("handoff.requested")[0]["reason"]
    finally:
        await session.close()


async def test_a_transport_that_transfers_is_handed_the_request() -> None:
    session, _ = make_session(SaidSTT("hello"), RecordingLLM())
    transfers: list[tuple[str, str]] = []

    async def transfer(by: str, reason: str) -> None:
        transfers.append((by, reason))

    session.handoff_transfer = transfer
    await session.start()
    try:
        assert session.request_handoff("the caller pressed 0", by="caller")
        await wait_for(lambda: transfers)
        assert transfers == [("caller", "the caller pressed 0")]
    finally:
        await session.close()
