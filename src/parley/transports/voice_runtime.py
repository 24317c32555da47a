"""Opening and closing a voice session for a transport connection: the same for the
WebSocket and WebRTC transports, so a session behaves alike whichever way it arrives."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from parley.telemetry import bind_session, get_logger
from parley.voice.events import SessionSink
from parley.voice.recording import SessionRecorder
from parley.voice.session import VoiceSession

log = get_logger(__name__)


async def open_voice_session(app: Any, session_id: str, sink: SessionSink) -> VoiceSession:
    """A VoiceSession for ``session_id`` talking to ``sink``; on a reconnect the
    conversation is restored from the database (not from the client's memory) and the
    recovery time recorded. The caller starts it and must :func:`close_voice_session`."""
    bind_session(session_id)  # before anything below logs
    store = app.state.store
    started = time.monotonic()
    reconnect = await store.mark_connected(session_id)
    recorder = SessionRecorder(store, session_id)
    session = VoiceSession(
        app.state.engines,
        app.state.settings,
        sink,
        session_id=session_id,
        recorder=recorder,
        actions=getattr(app.state, "agent_actions", None),
    )
    if reconnect:
        messages, last_turn = await store.conversation(session_id)
        session.restore(messages, last_turn)
        recovery_ms = round((time.monotonic() - started) * 1000, 1)
        recorder.event(
            "session.reconnected", None, {"recovery_ms": recovery_ms, "messages": len(messages)}
        )
        log.info("session resumed", messages=len(messages), recovery_ms=recovery_ms)
    app.state.sessions[id(session)] = session
    return session


async def close_voice_session(app: Any, session: VoiceSession) -> None:
    app.state.sessions.pop(id(session), None)
    await session.close()
    with contextlib.suppress(Exception):
        await app.state.store.mark_disconnected(session.session_id)
