"""One turn's reply as text, the way a voice session builds it (the agent file's system
prompt, the conversation so far, the knowledge's grounding, the LLM streaming), without
audio: what ``parley replay`` and ``make bench-answers`` compare."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from parley.config import Settings
from parley.engines.base import ChatMessage
from parley.knowledge import AgentKnowledge
from parley.voice.history import ConversationHistory


async def answer_turn(
    llm: Any,
    settings: Settings,
    knowledge: AgentKnowledge | None,
    earlier: Sequence[tuple[str, str]],
    text: str,
    *,
    use_knowledge: bool = True,
) -> tuple[str, float | None]:
    """The reply to ``text`` after the ``earlier`` (role, text) messages, and the seconds
    to its first token (None when it is a quoted fact: no LLM call)."""
    history = ConversationHistory(settings.agent.system_prompt, settings.agent.max_history_messages)
    for role, said in earlier:
        if role == "user":
            history.add_user(said)
        elif role == "assistant":
            history.add_assistant(said)
    asked = text
    if knowledge is not None and use_knowledge:
        grounding = knowledge.ground(text, last_said=history.last_reply)  # as a session
        if grounding.quote is not None:
            return grounding.quote, None
        asked = grounding.user_message(text)
    messages: list[ChatMessage] = history.prompt(pending_user=asked)
    started = time.perf_counter()
    first: float | None = None
    out: list[str] = []
    async for token in llm.stream_chat(messages):
        if first is None:
            first = time.perf_counter() - started
        out.append(token)
    # An empty reply's "first token" is the end of the stream.
    return "".join(out).strip(), first if first is not None else time.perf_counter() - started
