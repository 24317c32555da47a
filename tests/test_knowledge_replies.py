"""A voice session's replies grounded on the agent's knowledge, driven with the scripted
engines of test_voice_turn_logic: what the LLM is given, what is said, what the history
keeps, what the turn's record says."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import test_voice_turn_logic
from parley.engines import ChatMessage
from parley.knowledge import AgentKnowledge, AnswerMode, KnowledgeBase, load_facts
from test_voice_turn_logic import Harness, until

FACTS = "## Soup\n- Our soup of the day costs 7 dollars.\n- The bread is baked here.\n"
# The scripted STT hears "the other day" (level 2) and "hello there" (level 3).
ASKS_ABOUT_SOUP, GREETS = 2, 3


class ShortTTS:
    """A tenth of a second per sentence: each reply ends before the next question."""

    async def synthesize(self, text: str) -> AsyncIterator[np.ndarray]:
        yield np.full(1_600, 3000, dtype="<i2")


class RecordingLLM:
    def __init__(self) -> None:
        self.prompts: list[list[ChatMessage]] = []

    async def stream_chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[str]:
        self.prompts.append(list(messages))
        yield "An answer from the model."

    async def prefill(self, messages: Sequence[ChatMessage]) -> None:
        return None


async def session(monkeypatch: Any, tmp_path: Path, mode: AnswerMode) -> Harness:
    path = tmp_path / "knowledge.md"
    path.write_text(FACTS)
    monkeypatch.setattr(test_voice_turn_logic, "LongTTS", ShortTTS)
    h = Harness(monkeypatch, tmp_path, llm=RecordingLLM())
    h.session.knowledge = AgentKnowledge(KnowledgeBase(load_facts(path)), mode, path)
    await h.session.start()
    return h


async def ask(h: Harness, level: int) -> dict[str, Any]:
    before = len(h.sink.of("agent.text"))
    await h.speak(level)
    await until(lambda: len(h.sink.of("agent.text")) > before)
    await until(lambda: h.session._reply is None)
    return h.sink.of("agent.text")[-1]


async def test_restate_gives_the_model_the_facts_and_the_history_keeps_the_words(
    monkeypatch: Any, tmp_path: Path
) -> None:
    h = await session(monkeypatch, tmp_path, "restate")
    try:
        said = await ask(h, ASKS_ABOUT_SOUP)
        assert said["text"] == "An answer from the model."
        asked = h.llm.prompts[-1][-1]
        assert asked.role == "user"
        facts, words = asked.content.split("\n\n")
        assert "Our soup of the day costs 7 dollars." in facts
        assert words == "the other day"
        # The stored conversation is what the caller said, not the prompt.
        assert [(m.role, m.content) for m in h.session.history.messages] == [
            ("user", "the other day"),
            ("assistant", "An answer from the model."),
        ]
    finally:
        await h.session.close()


async def test_quote_says_the_fact_without_the_model(monkeypatch: Any, tmp_path: Path) -> None:
    h = await session(monkeypatch, tmp_path, "quote")
    try:
        said = await ask(h, ASKS_ABOUT_SOUP)
        assert said["text"] == "Our soup of the day costs 7 dollars."
        assert h.llm.prompts == []
        assert h.session.history.messages[-1].content == "Our soup of the day costs 7 dollars."
        # Words that match no fact: the model answers them, as they were said.
        said = await ask(h, GREETS)
        assert said["text"] == "An answer from the model."
        assert h.llm.prompts[-1][-1].content == "hello there"
    finally:
        await h.session.close()


async def test_the_same_fact_is_not_quoted_twice_in_a_row(monkeypatch: Any, tmp_path: Path) -> None:
    h = await session(monkeypatch, tmp_path, "quote")
    try:
        assert (await ask(h, ASKS_ABOUT_SOUP))["text"] == "Our soup of the day costs 7 dollars."
        # Asked again right after hearing it: the model answers, from the facts.
        assert (await ask(h, ASKS_ABOUT_SOUP))["text"] == "An answer from the model."
        assert "Our soup of the day costs 7 dollars." in h.llm.prompts[-1][-1].content
        # Once something else was said, the fact is quoted again.
        assert (await ask(h, ASKS_ABOUT_SOUP))["text"] == "Our soup of the day costs 7 dollars."
    finally:
        await h.session.close()
