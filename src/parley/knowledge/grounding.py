"""How a turn's reply uses the knowledge: the facts relevant to the caller's words, and
either the best of them said as it is (``quote``) or the facts handed to the LLM to
restate (``restate``).

Why two modes: on the demo agent's spoken questions (``make bench-answers``) the
embedded SmolLM2-135M restated the facts it was given correctly about half the time,
while the best-matching fact itself answered most of them; a larger remote model
restates well and also carries the conversation. So a knowledge file's facts are
written as whole sentences a caller may be told as they are, and the agent file picks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from parley.config import Settings, config_file_path
from parley.knowledge.bm25 import terms
from parley.knowledge.facts import Fact, KnowledgeBase

AnswerMode = Literal["quote", "restate"]


@dataclass(frozen=True, slots=True)
class Grounding:
    facts: list[Fact] = field(default_factory=list)
    """The facts relevant to the words, best first (none: the LLM answers alone)."""
    quote: str | None = None
    """The reply itself, when it is the best fact said as it is."""

    def user_message(self, text: str) -> str:
        """The caller's words as the LLM is given them: the facts first. In the last user
        message, not the system prompt, so the prompt's prefix (system prompt and earlier
        turns) is unchanged and stays in the LLM's KV cache."""
        return with_facts(text, self.facts)


def with_facts(text: str, facts: Sequence[Fact]) -> str:
    if not facts:
        return text
    return " ".join(f.text for f in facts) + "\n\n" + text


def ground(
    knowledge: KnowledgeBase, text: str, mode: AnswerMode, last_said: str | None = None
) -> Grounding:
    """What the reply to ``text`` is built on. Words that match no fact (a greeting, a
    thank-you, a question the file does not cover) go to the LLM as they are.

    ``last_said``: the agent's reply just before. A fact the caller heard just now and
    still asks about is not said again word for word: the model answers from it (and
    the other facts) instead."""
    facts = knowledge.relevant(text)
    if not facts:
        return Grounding()
    if mode == "quote" and facts[0].text != last_said:
        return Grounding(facts[:1], quote=facts[0].text)
    return Grounding(facts)


@dataclass(frozen=True, slots=True)
class AgentKnowledge:
    """The agent's knowledge as its sessions use it: one per process, shared."""

    base: KnowledgeBase
    mode: AnswerMode
    path: Path
    tools_asked_by: frozenset[str] = frozenset()
    """Stems of ``agent.tools_asked_by``: words that ask for an action, not a fact."""

    def asks_for_tools(self, text: str) -> bool:
        """Whether ``text`` has a word of ``agent.tools_asked_by`` (any form of it);
        True when the list is empty (every turn may act)."""
        return not self.tools_asked_by or not self.tools_asked_by.isdisjoint(terms(text))

    def with_mode(self, mode: AnswerMode) -> AgentKnowledge:
        return AgentKnowledge(self.base, mode, self.path, self.tools_asked_by)

    def ground(self, text: str, *, quote: bool = True, last_said: str | None = None) -> Grounding:
        """What the reply to ``text`` is built on; ``quote=False``: never a quote (the
        facts go to the model), whatever the mode. ``last_said``: as :func:`ground`."""
        return ground(self.base, text, self.mode if quote else "restate", last_said)


def knowledge_path(configured: Path, agent_file: Path | None) -> Path:
    """A relative path from the agent file's folder (where the file and its knowledge
    usually live together), else from the working directory."""
    if configured.is_absolute() or agent_file is None:
        return configured
    beside = agent_file.parent / configured
    return beside if beside.exists() or not configured.exists() else configured


def load_agent_knowledge(settings: Settings) -> AgentKnowledge | None:
    """The agent file's knowledge, or None when it names none. A file that cannot be
    used raises :class:`KnowledgeFileError` at start-up, not at the first question."""
    agent = settings.agent
    if agent.knowledge_file is None:
        return None
    path = knowledge_path(agent.knowledge_file, config_file_path())
    base = KnowledgeBase.from_file(path, per_question=agent.knowledge_facts)
    mode: AnswerMode
    if agent.knowledge_answers == "auto":
        mode = "quote" if settings.llm.provider == "llama" else "restate"
    else:
        mode = agent.knowledge_answers
    asked_by = frozenset(t for word in agent.tools_asked_by for t in terms(word))
    return AgentKnowledge(base, mode, path, asked_by)
