"""Client → server control messages, shared by every transport (WebSocket text frames,
the WebRTC data channel): parsed, checked and applied to the session."""

from __future__ import annotations

import json
from typing import Literal

from parley.telemetry import get_logger
from parley.voice.events import event
from parley.voice.session import VoiceSession

log = get_logger(__name__)

CONTROL_TYPES = ("interrupt", "mute", "unmute", "status", "handoff", "end", "ping")


def apply_control(session: VoiceSession, text: str, max_bytes: int) -> Literal["end"] | None:
    """Apply one control message; a bad one is answered with an ``error`` event and
    changes nothing. Returns ``"end"`` when the client asked to end the session (the
    transport then says goodbye and closes)."""
    sink = session.sink

    def reject(code: str, message: str) -> None:
        sink.send_event(event("error", code=code, message=message, turn_id=None))

    if len(text.encode()) > max_bytes:
        reject("message_too_large", f"text message exceeds {max_bytes} bytes")
        return None
    try:
        msg = json.loads(text)
    except json.JSONDecodeError as exc:
        reject("invalid_json", f"text message is not valid JSON: {exc.msg}")
        return None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        reject("invalid_message", 'control messages are JSON objects with a string "type"')
        return None
    kind = msg["type"]
    session.note_activity()  # any control message, a ping included, keeps it from idling
    if kind == "interrupt":
        session.interrupt()
    elif kind == "mute":
        session.mute()
    elif kind == "unmute":
        session.unmute()
    elif kind == "status":
        sink.send_event(session.status())
    elif kind == "ping":
        sink.send_event(event("pong", id=msg.get("id")))
    elif kind == "handoff":
        # A person is asked for: supervisors see it flagged (a phone line with a transfer
        # number transfers the call); the agent keeps talking until someone takes over.
        reason = str(msg.get("reason") or "the caller asked for a person")[:200]
        if not session.request_handoff(reason, by="caller"):
            sink.send_event(
                event("handoff.pending", session_id=session.session_id, state=session.handoff_state)
            )
    elif kind == "end":
        sink.send_event(event("session.ended", session_id=session.session_id))
        return "end"
    else:
        reject(
            "unknown_message_type",
            f"unknown message type {kind!r}; expected one of {list(CONTROL_TYPES)}",
        )
    return None
