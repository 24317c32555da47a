"""Opening and closing a voice session for a transport connection: the same for the
WebSocket and WebRTC transports, so a session behaves alike whichever way it arrives.

A session id has at most one live voice session at a time, whichever transport holds it:
a new connection for a session that is already connected takes it over (the page
reconnecting after a drop, possibly before the server noticed the old socket died). The
old connection is told (``error`` with code ``session_taken_over``), its voice session
is closed and its record written before the new one restores the conversation.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from parley.telemetry import bind_session, get_logger
from parley.voice.events import SessionSink, event
from parley.voice.recording import SessionRecorder
from parley.voice.session import VoiceSession

log = get_logger(__name__)

TAKEN_OVER_CODE = "session_taken_over"
TAKEN_OVER_MESSAGE = "a newer connection took over this session; this one is closed"


def taken_over_event() -> dict[str, Any]:
    return event("error", code=TAKEN_OVER_CODE, message=TAKEN_OVER_MESSAGE)


class LiveSession:
    """A voice session held by one transport connection. ``on_taken_over`` is the
    transport's hook, called when a newer connection takes the session: it tells its
    client and closes its connection (the voice session itself is closed here)."""

    def __init__(self, app: Any, session: VoiceSession, on_taken_over: Callable[[], None]) -> None:
        self.app = app
        self.session = session
        self.on_taken_over = on_taken_over
        self._closing: asyncio.Future[None] | None = None

    @property
    def closing(self) -> bool:
        return self._closing is not None

    async def close(self) -> None:
        """Close the voice session and record the disconnect, once, however many times
        and from wherever it is called (the connection's own clean-up and a takeover
        race): every caller waits for the same close."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        # Shielded: a caller cancelled mid-close must not leave the record half written.
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        self.app.state.sessions.pop(id(self.session), None)
        try:
            await self.session.close()
        finally:
            slot = _slots(self.app).get(self.session.session_id)
            if slot is not None and slot.live is self:
                # Only the holder of the session marks it disconnected (a takeover closes
                # the old holder before the newcomer marks it connected).
                slot.live = None
                try:
                    await self.app.state.store.mark_disconnected(self.session.session_id)
                except Exception as exc:  # the status only; the conversation is stored
                    log.warning("could not record the disconnect", error=repr(exc))
                _forget_if_unused(self.app, self.session.session_id)


class _Slot:
    """One session id's place in the registry: the live session, and a lock that makes
    opening (take over the old one, then restore) one step at a time per session."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.live: LiveSession | None = None
        self.opening = 0


def _slots(app: Any) -> dict[str, _Slot]:
    # Per-app state kept here, made on first use, so the app factory need not know it.
    slots: dict[str, _Slot] | None = getattr(app.state, "voice_slots", None)
    if slots is None:
        slots = {}
        app.state.voice_slots = slots
    return slots


def _forget_if_unused(app: Any, session_id: str) -> None:
    slots = _slots(app)
    slot = slots.get(session_id)
    if slot is not None and slot.live is None and slot.opening == 0:
        del slots[session_id]


async def open_voice_session(
    app: Any, session_id: str, sink: SessionSink, on_taken_over: Callable[[], None]
) -> LiveSession:
    """A VoiceSession for ``session_id`` talking to ``sink``; on a reconnect the
    conversation is restored from the database (not from the client's memory) and the
    recovery time recorded. A connection already holding the session is taken over
    first. The caller starts the session and must close the returned :class:`LiveSession`."""
    bind_session(session_id)  # before anything below logs
    slots = _slots(app)
    slot = slots.setdefault(session_id, _Slot())
    slot.opening += 1
    try:
        async with slot.lock:
            previous = slot.live
            if previous is not None:
                log.warning("session taken over by a new connection")
                try:
                    previous.on_taken_over()
                except Exception as exc:  # the old connection may be half gone already
                    log.warning("could not notify the replaced connection", error=repr(exc))
                try:
                    await previous.close()
                except Exception as exc:  # its slot is freed all the same: go on
                    log.error("closing the replaced session failed", error=repr(exc), exc_info=exc)
            live = LiveSession(app, await _new_session(app, session_id, sink), on_taken_over)
            slot.live = live
            app.state.sessions[id(live.session)] = live.session
            return live
    finally:
        slot.opening -= 1
        _forget_if_unused(app, session_id)


async def _new_session(app: Any, session_id: str, sink: SessionSink) -> VoiceSession:
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
    return session
