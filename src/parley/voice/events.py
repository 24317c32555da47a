"""What a VoiceSession says to its transport: JSON-ready events and 20 ms audio frames."""

from __future__ import annotations

import time
from typing import Any, Literal, Protocol

AgentState = Literal["listening", "thinking", "speaking"]

HandoffState = Literal["agent", "requested", "human"]
"""Who answers the caller: the agent; the agent while a person is asked for; a person."""

Event = dict[str, Any]


class SessionSink(Protocol):
    """Implemented by each transport."""

    def send_event(self, event: Event) -> None:
        """Queue a JSON event for the client (never blocks)."""
        ...

    def send_audio(self, pcm: bytes) -> None:
        """Queue one outbound PCM16 frame (never blocks)."""
        ...

    def clear_audio(self) -> None:
        """Drop outbound audio that is queued but not yet sent (barge-in)."""
        ...


def event(type_: str, **fields: Any) -> Event:
    return {"type": type_, "ts": round(time.time(), 3), **fields}
