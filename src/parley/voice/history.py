"""The conversation as the LLM sees it: system prompt (with the memory of what left
the window) plus the recent turns."""

from __future__ import annotations

from parley.engines import ChatMessage
from parley.engines.base import person_message
from parley.voice.memory import ConversationMemory


class ConversationHistory:
    """Messages plus the window of them the prompt shows.

    The window slides in jumps of half its size, not one message per turn: the prompt
    prefix then stays the same for many turns and the LLM's KV cache reuses it, instead
    of re-reading the whole prompt every turn. What leaves it is remembered in
    ``memory`` (summarized in the background: see ``left_window``).
    """

    def __init__(self, system_prompt: str, max_messages: int) -> None:
        self._base = system_prompt
        self.memory = ConversationMemory()
        self._messages: list[ChatMessage] = []
        self._max = max_messages
        self._start = 0

    @property
    def messages(self) -> list[ChatMessage]:
        return list(self._messages)

    @property
    def last_reply(self) -> str | None:
        """The agent's reply, if it is the last message of the conversation."""
        last = self._messages[-1] if self._messages else None
        return last.content if last is not None and last.role == "assistant" else None

    @property
    def _system(self) -> ChatMessage:
        return ChatMessage("system", self.memory.system_prompt(self._base))

    def left_window(self) -> tuple[list[ChatMessage], int] | None:
        """The messages that left the window and the summary does not cover yet, and how
        many of the caller's messages the summary covers once they are in it; None when
        it is current."""
        covered = self._after_users(self.memory.covered)
        if self._start <= covered:
            return None
        users = sum(m.role == "user" for m in self._messages[: self._start])
        return self._messages[covered : self._start], users

    def restore_memory(self, memory: ConversationMemory) -> None:
        """After the restored messages: the window starts where the summary ends."""
        self.memory = memory
        self._start = self._after_users(memory.covered)

    def _after_users(self, users: int) -> int:
        """The index just after the caller's ``users``-th message. Coverage is counted in
        the caller's messages because a restored conversation lacks what was never
        stored (the greeting): counting every message would shift it."""
        if users <= 0:
            return 0
        seen = 0
        for i, message in enumerate(self._messages):
            seen += message.role == "user"
            if seen == users:
                return i + 1
        return len(self._messages)

    def add_user(self, text: str) -> int:
        """Add the caller's words; returns where they are (a revision replaces them there)."""
        self._messages.append(ChatMessage("user", text))
        return len(self._messages) - 1

    def revise_user(self, index: int, previous: str, text: str) -> bool:
        """Replace the caller's words at ``index`` (a revised final of their turn), if
        they are still ``previous`` there; later prompts see the corrected words."""
        if not 0 <= index < len(self._messages):
            return False
        message = self._messages[index]
        if message.role != "user" or message.content != previous:
            return False
        self._messages[index] = ChatMessage("user", text)
        return True

    def add_assistant(self, text: str) -> None:
        if text.strip():
            self._messages.append(ChatMessage("assistant", text))

    def add_human(self, text: str) -> None:
        """What a person who took over said to the caller (see ``person_message``)."""
        if text.strip():
            self._messages.append(person_message(text))

    def prompt(self, pending_user: str | None = None) -> list[ChatMessage]:
        """Messages for the next reply; ``pending_user`` is a turn not yet committed."""
        messages = list(self._messages)
        if pending_user is not None:
            messages.append(ChatMessage("user", pending_user))
        self._start = self._window_start(len(messages))
        return [self._system, *_from_first_user(messages[self._start :])]

    def next_prefix(self) -> list[ChatMessage]:
        """What the next turn's prompt will start with, before the user's new words."""
        start = self._window_start(len(self._messages) + 1)
        return [self._system, *_from_first_user(self._messages[start:])]

    def _window_start(self, total: int) -> int:
        if total - self._start > self._max:
            return total - self._max // 2
        return self._start


def _from_first_user(messages: list[ChatMessage]) -> list[ChatMessage]:
    # Some chat templates reject a history that opens with an assistant message.
    for i, message in enumerate(messages):
        if message.role == "user":
            return messages[i:]
    return []
