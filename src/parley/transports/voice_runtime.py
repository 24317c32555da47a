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
from parley.telemetry.observing import ObserverGroup
from parley.transports.session_limits import (
    CLOSE_EXPIRED,
    IDLE_TIMEOUT,
    SESSION_ENDED,
    SESSION_EXPIRED,
    SessionLimits,
    session_deadline,
)
from parley.transports.supervision import SupervisedSession, SupervisionHub
from parley.voice.events import Event, SessionSink, event
from parley.voice.memory import ConversationMemory
from parley.voice.recording import SessionRecorder
from parley.voice.session import VoiceSession

log = get_logger(__name__)

CLOSE_NORMAL = 1000
TAKEN_OVER_CODE = "session_taken_over"
TAKEN_OVER_MESSAGE = "a newer connection took over this session; this one is closed"


def taken_over_event() -> dict[str, Any]:
    return event("error", code=TAKEN_OVER_CODE, message=TAKEN_OVER_MESSAGE)


END_REASONS = (
    "client_ended",
    "disconnected",
    "taken_over",
    "server_shutdown",
    "error",
    "idle_timeout",
    "session_expired",
    "session_ended",
    "audio_too_fast",
)
"""Why a voice connection ended, as metrics count it (a fixed set: a label)."""


SESSION_ENDING_CODES = (IDLE_TIMEOUT, SESSION_EXPIRED, SESSION_ENDED)
"""Limits whose closing also ends the session (its tokens are refused from then on)."""


class ObservedSink:
    """A transport's sink, with every event also shown to the metrics observer: the one
    place where what a session says becomes telemetry."""

    def __init__(self, sink: SessionSink, observer: ObserverGroup) -> None:
        self._sink = sink
        self.observer = observer
        self.tap: SupervisedSession | None = None
        """Supervisors' view of the session (events, the agent's audio), once attached."""

    def send_event(self, event: Event) -> None:
        self.observer.event(event)
        self._sink.send_event(event)
        if self.tap is not None:
            self.tap.event(event)

    def send_audio(self, pcm: bytes) -> None:
        self._sink.send_audio(pcm)
        if self.tap is not None:
            self.tap.agent_audio(pcm)

    def send_human_audio(self, pcm: bytes) -> None:
        """A supervisor's voice to the caller (not echoed back to those listening in)."""
        self._sink.send_audio(pcm)

    def clear_audio(self) -> None:
        self._sink.clear_audio()

    def __getattr__(self, name: str) -> Any:
        # What a transport's sink offers beyond the protocol (a phone line's marks).
        return getattr(self._sink, name)


class LiveSession:
    """A voice session held by one transport connection. ``on_taken_over`` is the
    transport's hook, called when a newer connection takes the session: it tells its
    client and closes its connection (the voice session itself is closed here)."""

    def __init__(
        self,
        app: Any,
        session: VoiceSession,
        on_taken_over: Callable[[], None],
        observer: ObserverGroup,
    ) -> None:
        self.app = app
        self.session = session
        self.on_taken_over = on_taken_over
        self.observer = observer
        self._closing: asyncio.Future[None] | None = None
        self.on_expired: Callable[[str, int], None] | None = None
        """The transport's hook for a session limit reached (idle, maximum age) or a
        session gone deaf: close the connection with that close code (the ``error``
        event is already sent)."""
        self.expired: tuple[str, int] | None = None
        """The limit reached, as (error code, close code), once it was."""
        self._limits: asyncio.Task[None] | None = None
        self._expiry: asyncio.Future[None] | None = None
        self._ends_session = False
        self._reason = "disconnected"
        self.supervised: SupervisedSession | None = None
        observer.opened()

    def watch_limits(self, deadline: float) -> None:
        """End the connection at the session's maximum age (``deadline``, epoch seconds),
        once it idled for ``server.idle_timeout_secs``, or once it went deaf."""
        opened_at = asyncio.get_running_loop().time()
        limits = SessionLimits(
            self.app.state.settings.server,
            deadline,
            lambda: max(opened_at, self.session.last_activity),
            self.session.sink.send_event,
            self._expire,
            deaf=lambda: self.session.deaf,
        )
        self._limits = asyncio.create_task(limits.run(), name="session-limits")

    def end_by_agent(self) -> None:
        """The agent ended the conversation (envelope ``end_call``, after its goodbye):
        the client is told, the session ends (its tokens with it) and the connection
        closes normally."""
        if self.closing or self.expired is not None:
            return
        session_id = self.session.session_id
        self.session.sink.send_event(event("session.ended", session_id=session_id, by="agent"))
        self._expire(SESSION_ENDED, CLOSE_NORMAL)

    def _expire(self, code: str, close_code: int) -> None:
        self.expired = (code, close_code)
        self._ends_session = code in SESSION_ENDING_CODES
        if self.on_expired is not None:
            self.on_expired(code, close_code)
        else:  # a transport without the hook: close the session itself
            self._expiry = asyncio.ensure_future(self.close(code))

    @property
    def closing(self) -> bool:
        return self._closing is not None

    async def close(self, reason: str = "disconnected", *, ends_session: bool = False) -> None:
        """Close the voice session and record the disconnect, once, however many times
        and from wherever it is called (the connection's own clean-up and a takeover
        race): every caller waits for the same close. ``reason``, one of
        :data:`END_REASONS`, is the first caller's."""
        if self._closing is None:
            reason = reason if reason in END_REASONS else "error"
            # The caller hung up, or a limit ended it: the session is over, and its
            # tokens with it (a drop, a takeover or a shutdown leaves it resumable).
            self._ends_session |= (
                ends_session or reason == "client_ended" or reason in SESSION_ENDING_CODES
            )
            if self._limits is not None and self._limits is not asyncio.current_task():
                self._limits.cancel()
            self.observer.closed(reason)
            if self.session.recorder is not None:
                self.session.recorder.event("transport.disconnected", None, {"reason": reason})
            self._reason = reason
            self._closing = asyncio.ensure_future(self._close())
        # Shielded: a caller cancelled mid-close must not leave the record half written.
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        self.app.state.sessions.pop(id(self.session), None)
        hub: SupervisionHub | None = getattr(self.app.state, "supervision", None)
        if hub is not None and self.supervised is not None:
            hub.detach(self.supervised)
        try:
            await self.session.close(ended_by_caller=self._reason == "client_ended")
            if self._ends_session:
                try:
                    await self.app.state.store.end_session(self.session.session_id)
                except Exception as exc:  # its tokens then die at their expiry only
                    log.error("could not record the end of the session", error=repr(exc))
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


async def end_live_session(app: Any, session_id: str, message: str) -> bool:
    """Close the session's live connection, if it has one, after an ``error``
    ``session_ended`` with ``message`` (the session was ended or deleted over HTTP); waits
    until its voice session is closed and its record written. False when none was live."""
    slot = _slots(app).get(session_id)
    live = slot.live if slot is not None else None
    if live is None or live.closing:
        return False
    live.session.sink.send_event(event("error", code=SESSION_ENDED, message=message))
    live._expire(SESSION_ENDED, CLOSE_EXPIRED)
    await live.close(SESSION_ENDED)
    return True


SERVER_RESTARTING = "server_restarting"
RESTART_MESSAGE = "the server is restarting; reconnect to resume the conversation"
CLOSE_SERVICE_RESTART = 1012
"""RFC 6455's "service restart": the session is intact, a reconnect resumes it."""


def live_session_ids(app: Any) -> list[str]:
    """The sessions with a live voice connection in this process now."""
    return [sid for sid, slot in _slots(app).items() if slot.live is not None]


def restart_live_session(app: Any, session_id: str) -> bool:
    """Close the session's live connection for a restart (a drain reached its deadline):
    an ``error`` ``server_restarting``, then the transport's close (1012 on the WebSocket).
    The session is not ended: its caller reconnects and resumes it, on another process
    behind a load balancer. False when none was live."""
    slot = _slots(app).get(session_id)
    live = slot.live if slot is not None else None
    if live is None or live.closing or live.expired is not None:
        return False
    live.session.sink.send_event(event("error", code=SERVER_RESTARTING, message=RESTART_MESSAGE))
    live._expire("server_shutdown", CLOSE_SERVICE_RESTART)
    return True


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
    app: Any,
    session_id: str,
    sink: SessionSink,
    on_taken_over: Callable[[], None],
    transport: str,
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
            handoff = previous.session.handoff_snapshot() if previous is not None else None
            if previous is not None:
                log.warning("session taken over by a new connection")
                try:
                    previous.on_taken_over()
                except Exception as exc:  # the old connection may be half gone already
                    log.warning("could not notify the replaced connection", error=repr(exc))
                try:
                    await previous.close("taken_over")
                except Exception as exc:  # its slot is freed all the same: go on
                    log.error("closing the replaced session failed", error=repr(exc), exc_info=exc)
            session, deadline, observer = await _new_session(app, session_id, sink, transport)
            if handoff is not None:
                # A reconnect during a handoff: the person keeps the call (the agent must
                # not start answering again because the caller's network blinked).
                session.restore_handoff(handoff)
            live = LiveSession(app, session, on_taken_over, observer)
            # The agent's goodbye (envelope ``end_call``) ends the call; a phone line
            # replaces this with a hang-up through its carrier.
            session.on_end_call = live.end_by_agent
            hub: SupervisionHub | None = getattr(app.state, "supervision", None)
            if hub is not None and isinstance(session.sink, ObservedSink):
                live.supervised = hub.attach(session, transport)
                session.sink.tap = live.supervised
            if session.recorder is not None:
                session.recorder.event("transport.connected", None, {"transport": transport})
            slot.live = live
            app.state.sessions[id(live.session)] = live.session
            live.watch_limits(deadline)
            return live
    finally:
        slot.opening -= 1
        _forget_if_unused(app, session_id)


async def _stored_handoff(store: Any, session_id: str) -> tuple[str, str | None, str | None]:
    """Who had the conversation when its connection dropped, from the timeline."""
    state: tuple[str, str | None, str | None] = ("agent", None, None)
    for row in await store.timeline(session_id):
        data = row.data or {}
        if row.stage == "handoff.requested" and state[0] == "agent":
            state = ("requested", None, None)
        elif row.stage == "handoff.accepted":
            state = ("human", data.get("by"), data.get("holder") or data.get("by"))
        elif row.stage == "handoff.returned":
            state = ("agent", None, None)
    return state


async def _new_session(
    app: Any, session_id: str, sink: SessionSink, transport: str
) -> tuple[VoiceSession, float, ObserverGroup]:
    """The voice session, the epoch time at which it reaches its maximum age, and the
    observer its telemetry goes through."""
    store = app.state.store
    started = time.monotonic()
    reconnect = await store.mark_connected(session_id)
    record = await store.get_session(session_id)
    consent = record.consent if record is not None else {}
    # One consent covers the caller's words in the operator's telemetry: log lines at
    # INFO and trace attributes (these redacted as the store redacts what it keeps).
    in_telemetry = bool(consent.get("log_transcripts"))
    observer = app.state.telemetry.observer(
        transport, session_id, store.stored_text if in_telemetry else None
    )
    observed = ObservedSink(sink, observer)
    recorder = SessionRecorder(store, session_id, observer=observer, prices=app.state.prices)
    session = VoiceSession(
        app.state.engines,
        app.state.settings,
        observed,
        session_id=session_id,
        recorder=recorder,
        actions=getattr(app.state, "agent_actions", None),
        knowledge=getattr(app.state, "knowledge", None),
    )
    session.log_transcripts = in_telemetry
    phrases = getattr(app.state, "phrases", None)
    if phrases is not None:
        session.phrases = phrases
    if reconnect:
        messages, last_turn = await store.conversation(session_id)
        memory = (
            ConversationMemory.from_record(record.memory, record.orchestration_state)
            if record is not None
            else None
        )
        session.restore(messages, last_turn, memory)
        session.restore_handoff(await _stored_handoff(store, session_id))
        recovery_ms = round((time.monotonic() - started) * 1000, 1)
        recorder.event(
            "session.reconnected", None, {"recovery_ms": recovery_ms, "messages": len(messages)}
        )
        log.info("session resumed", messages=len(messages), recovery_ms=recovery_ms)
    settings = app.state.settings.server
    deadline = session_deadline(record, settings) if record is not None else float("inf")
    return session, deadline, observer
