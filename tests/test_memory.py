"""Conversations that last: what leaves the prompt's window is summarized in the
background and carried by the system message, with the conversation's state; a voice
session (scripted engines of test_voice_turn_logic) keeps both on its record."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import test_voice_turn_logic
from parley.engines import ChatMessage
from parley.voice.history import ConversationHistory
from parley.voice.memory import ConversationMemory, ExcerptSummarizer, ModelSummarizer
from test_voice_turn_logic import Harness, until


def test_the_system_message_carries_the_summary_and_the_settled_state() -> None:
    memory = ConversationMemory(summary="The caller wants a table.", state={"party": "4"})
    prompt = memory.system_prompt("You are Juniper Bistro's phone line.")
    assert prompt == (
        "You are Juniper Bistro's phone line.\n\n"
        "Earlier in this call: The caller wants a table.\n\n"
        "Settled so far: party: 4."
    )
    assert ConversationMemory().system_prompt("Base.") == "Base."


def test_a_stored_memory_is_read_back_and_junk_is_ignored() -> None:
    memory = ConversationMemory.from_record({"summary": "s", "covered": 6}, {"day": "Friday"})
    assert (memory.summary, memory.covered, memory.state) == ("s", 6, {"day": "Friday"})
    junk = ConversationMemory.from_record({"summary": 3, "covered": -2}, None)
    assert (junk.summary, junk.covered, junk.state) == ("", 0, {})
    assert ConversationMemory.from_record(None, None) == ConversationMemory()


async def test_excerpts_keep_how_the_call_began_and_the_newest_within_the_budget() -> None:
    summarizer = ExcerptSummarizer(max_chars=120, words_per_message=5)
    said = [
        ChatMessage("user", "I would like to book a table for four on Friday"),
        ChatMessage("assistant", "We take bookings by email."),
    ]
    greeting = ChatMessage("assistant", "Hi, you're through to Juniper Bistro.")
    summary = await summarizer.summarize("", [greeting, *said])
    assert summary == "Caller: I would like to book …\nYou: We take bookings by email."
    for n in range(6):
        summary = await summarizer.summarize(summary, [ChatMessage("user", f"question {n}")])
    lines = summary.split("\n")
    assert len(summary) <= 120
    assert lines[0] == "Caller: I would like to book …" and lines[1] == "…"
    assert lines[-1] == "Caller: question 5"


class NotesLLM:
    def __init__(self, notes: str) -> None:
        self.notes = notes
        self.prompts: list[list[ChatMessage]] = []

    async def stream_chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[str]:
        self.prompts.append(list(messages))
        for word in self.notes.split(" "):
            yield word + " "

    async def prefill(self, messages: Sequence[ChatMessage]) -> None:
        return None


async def test_the_model_summarizes_from_the_notes_so_far_and_whole_sentences_fit() -> None:
    llm = NotesLLM("Ana wants a table for four. She asked about parking. " * 3)
    summary = await ModelSummarizer(llm, max_chars=70).summarize(
        "Ana called.", [ChatMessage("user", "Is there parking?")]
    )
    assert summary == "Ana wants a table for four. She asked about parking."
    (prompt,) = llm.prompts
    assert "Notes so far: Ana called." in prompt[1].content
    assert "Caller: Is there parking?" in prompt[1].content


def test_the_window_reports_what_left_it_and_a_restore_starts_after_the_summary() -> None:
    history = ConversationHistory("Base.", max_messages=4)
    for n in range(2):
        history.add_user(f"u{n}")
        history.add_assistant(f"a{n}")
    assert history.left_window() is None
    history.prompt(pending_user="u2")  # 5 messages: the window jumps by half
    left = history.left_window()
    assert left is not None
    messages, covered = left
    assert [m.content for m in messages] == ["u0", "a0", "u1"] and covered == 2
    history.memory.summary, history.memory.covered = "earlier", covered
    assert history.left_window() is None
    assert history.prompt()[0].content == "Base.\n\nEarlier in this call: earlier"

    again = ConversationHistory("Base.", max_messages=4)
    for content in ("u0", "a0", "u1", "a1"):
        (again.add_user if content[0] == "u" else again.add_assistant)(content)
    again.restore_memory(ConversationMemory(summary="earlier", covered=2))
    assert [m.content for m in again.prompt()] == ["Base.\n\nEarlier in this call: earlier"]
    again.add_user("u2")
    assert [m.content for m in again.prompt()[1:]] == ["u2"]


# ---- a voice session -----------------------------------------------------------------


class ShortTTS:
    async def synthesize(self, text: str) -> AsyncIterator[np.ndarray]:
        yield np.full(1_600, 3000, dtype="<i2")


class FailingSummaries(NotesLLM):
    """Answers the caller; fails when asked for notes (a provider outage)."""

    async def stream_chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[str]:
        self.prompts.append(list(messages))
        if messages[0].content.startswith("You keep notes"):
            raise RuntimeError("provider down")
        yield self.notes


async def talk(monkeypatch: Any, tmp_path: Path, llm: NotesLLM, summary: str) -> Harness:
    monkeypatch.setattr(test_voice_turn_logic, "LongTTS", ShortTTS)
    h = Harness(monkeypatch, tmp_path, llm=llm)
    h.settings.agent.memory_summary = summary  # type: ignore[assignment]
    h.session.history = ConversationHistory("Base.", max_messages=4)
    await h.session.start()
    for level in (2, 3, 2):  # "the other day", "hello there", "the other day"
        before = len(h.sink.of("agent.text"))
        await h.speak(level)
        await until(lambda: len(h.sink.of("agent.text")) > before)  # noqa: B023
        await until(lambda: h.session._reply is None)
    return h


@pytest.mark.parametrize("summary", ["excerpts", "model"])
async def test_a_session_summarizes_what_left_the_window_in_the_background(
    monkeypatch: Any, tmp_path: Path, summary: str
) -> None:
    llm = NotesLLM("The caller mentioned the other day.")
    h = await talk(monkeypatch, tmp_path, llm, summary)
    try:
        memory = h.session.history.memory
        await until(lambda: memory.covered == 2)
        if summary == "excerpts":
            assert (
                memory.summary == "Caller: the other day\n"
                "You: The caller mentioned the other day.\n"
                "Caller: hello there"
            )
        else:
            assert memory.summary == "The caller mentioned the other day."
        # The third reply's prompt was built before the summary: the next one has it.
        await h.speak(3)
        await until(lambda: h.session._reply is None and len(h.sink.of("agent.text")) == 4)
        replies = [p for p in llm.prompts if p[0].content.startswith("Base.")]
        assert replies[-1][0].content == f"Base.\n\nEarlier in this call: {memory.summary}"
    finally:
        await h.session.close()


async def test_a_failed_summary_keeps_the_turns_as_excerpts(
    monkeypatch: Any, tmp_path: Path
) -> None:
    h = await talk(monkeypatch, tmp_path, FailingSummaries("Fine."), "model")
    try:
        memory = h.session.history.memory
        await until(lambda: memory.covered == 2)
        assert memory.summary == "Caller: the other day\nYou: Fine.\nCaller: hello there"
    finally:
        await h.session.close()
