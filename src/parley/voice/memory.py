"""Memory that outlasts the prompt's window: a summary of the turns that have left it,
and the conversation's state (what the agent's envelopes settled, e.g. a booking's
party size). Both ride in the system message, kept on the session record and restored
with the conversation on a reconnect.

Summaries are written in the background when the window slides (never on a turn's
path): by the LLM when it can summarize (a remote model), else as excerpts — the
embedded 135M model turns a "summarize this" prompt into new dialogue, not a summary.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from parley.engines import ChatMessage
from parley.engines.base import LanguageModel

SummaryKind = Literal["model", "excerpts"]


@dataclass
class ConversationMemory:
    summary: str = ""
    covered: int = 0
    """How many of the caller's messages (from the start) the summary covers, with
    everything said between them."""
    state: dict[str, Any] = field(default_factory=dict)
    """The conversation's state: the envelopes' ``state_updates``, merged."""

    def system_prompt(self, base: str) -> str:
        """The agent's system prompt with what the window no longer shows."""
        parts = [base]
        if self.summary:
            parts.append(f"Earlier in this call: {self.summary}")
        if self.state:
            settled = "; ".join(f"{k}: {_plain(v)}" for k, v in sorted(self.state.items()))
            parts.append(f"Settled so far: {settled}.")
        return "\n\n".join(parts)

    def record(self) -> dict[str, Any]:
        """What the session record keeps (the state lives in its own column)."""
        return {"summary": self.summary, "covered": self.covered}

    @classmethod
    def from_record(
        cls, memory: dict[str, Any] | None, state: dict[str, Any] | None
    ) -> ConversationMemory:
        memory = memory or {}
        summary = memory.get("summary")
        covered = memory.get("covered")
        return cls(
            summary=summary if isinstance(summary, str) else "",
            covered=covered if isinstance(covered, int) and covered >= 0 else 0,
            state=dict(state or {}),
        )


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


class Summarizer(Protocol):
    kind: SummaryKind

    async def summarize(self, summary: str, messages: Sequence[ChatMessage]) -> str:
        """``summary`` (of what came before) updated with ``messages``."""
        ...


_SPEAKERS = {"user": "Caller", "assistant": "You"}


def _speaker(message: ChatMessage) -> str:
    # A person's words (a supervisor who took over) are agent-side messages that say
    # so themselves ("[a human colleague said:] …", person_message).
    return _SPEAKERS.get(message.role, message.role)


class ExcerptSummarizer:
    """Each message that left the window, cut to its first words, one line each. Over
    the budget, the caller's first line (usually why they called) and the newest lines
    are kept, and an ellipsis marks what was left out. The agent's words before the
    caller's first (the greeting) are not kept: they say nothing about this call."""

    kind: SummaryKind = "excerpts"

    def __init__(self, max_chars: int, words_per_message: int = 16) -> None:
        self._max = max_chars
        self._words = words_per_message

    async def summarize(self, summary: str, messages: Sequence[ChatMessage]) -> str:
        lines = [line for line in summary.split("\n") if line]
        for message in messages:
            words = message.content.split()
            if not words or (not lines and message.role != "user"):
                continue
            text = " ".join(words[: self._words]) + (" …" if len(words) > self._words else "")
            lines.append(f"{_speaker(message)}: {text}")
        return _fit(lines, self._max)


def _fit(lines: list[str], max_chars: int) -> str:
    def size(kept: list[str]) -> int:
        return sum(len(line) + 1 for line in kept)

    if size(lines) <= max_chars:
        return "\n".join(lines)
    first, rest = lines[0], [line for line in lines[1:] if line != "…"]
    newest: list[str] = []
    for line in reversed(rest):
        if size([first, "…", line, *newest]) > max_chars:
            break
        newest.insert(0, line)
    return "\n".join([first[:max_chars], "…", *newest]) if newest else first[:max_chars]


SUMMARY_INSTRUCTIONS = (
    "You keep notes on a phone call for the agent taking it. Update the notes with the "
    "new part of the call: who the caller is, what they want, and what was said or "
    "agreed (names, numbers, dates, times). At most {max_chars} characters, plain "
    "sentences, no preamble."
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


class ModelSummarizer:
    """The LLM writes the summary (a model able to: a remote one, or a larger local one)."""

    kind: SummaryKind = "model"

    def __init__(self, llm: LanguageModel, max_chars: int) -> None:
        self._llm = llm
        self._max = max_chars

    async def summarize(self, summary: str, messages: Sequence[ChatMessage]) -> str:
        said = "\n".join(f"{_speaker(m)}: {m.content}" for m in messages if m.content.strip())
        prompt = [
            ChatMessage("system", SUMMARY_INSTRUCTIONS.format(max_chars=self._max)),
            ChatMessage(
                "user", f"Notes so far: {summary or '(none)'}\n\nNew part of the call:\n{said}"
            ),
        ]
        text = "".join([piece async for piece in self._llm.stream_chat(prompt)]).strip()
        if not text:
            raise ValueError("the model wrote no summary")
        return _whole_sentences(text, self._max)


def _whole_sentences(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    kept = ""
    for sentence in _SENTENCE.split(text):
        if len(kept) + len(sentence) + 1 > max_chars:
            break
        kept = f"{kept} {sentence}".strip()
    return kept or text[:max_chars]
