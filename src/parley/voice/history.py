"""The conversation as the LLM sees it: system prompt plus the recent turns."""

from __future__ import annotations

from parley.engines import ChatMessage


class ConversationHistory:
    def __init__(self, system_prompt: str, max_messages: int) -> None:
        self._system = ChatMessage("system", system_prompt)
        self._messages: list[ChatMessage] = []
        self._max = max_messages

    @property
    def messages(self) -> list[ChatMessage]:
        return list(self._messages)

    def add_user(self, text: str) -> None:
        self._messages.append(ChatMessage("user", text))

    def add_assistant(self, text: str) -> None:
        if text.strip():
            self._messages.append(ChatMessage("assistant", text))

    def prompt(self, pending_user: str | None = None) -> list[ChatMessage]:
        """Messages for the next reply; ``pending_user`` is a turn not yet committed."""
        recent = self._messages[-self._max :]
        # Start on a user message: some chat templates reject assistant-first history.
        while recent and recent[0].role != "user":
            recent = recent[1:]
        out = [self._system, *recent]
        if pending_user is not None:
            out.append(ChatMessage("user", pending_user))
        return out
