"""WebSocket transport: binary messages are PCM16LE mono 16 kHz audio both ways, text
messages are JSON events (server → client) and control messages (client → server).

The token comes (in order of preference) from the ``Sec-WebSocket-Protocol`` header (the
client offers the subprotocols ``parley`` and ``parley.token.<token>``; the server
answers ``parley``), the ``token`` query parameter,
or a first text message ``{"type": "auth", "token": …}``: proxies log URLs, so the
query string is the least private of the three.

The protocol is documented in docs/websocket-protocol.md. How a connection ends:

* 1000: the client ended the session (``end``), after the ``session.ended`` event;
* 1008: the client stopped reading (its outbound queue overflowed);
* 1011: the server failed on this connection (its sender died, a message could not be
  handled, the session would not start), after an ``error`` event ``internal_error``;
  the voice session is closed, and a reconnect resumes it;
* 4401/4403/4404: refused before the session opened (token, role, unknown session);
* 4410: refused, or closed, because the session has ended or reached its maximum
  duration (``session_ended``, ``session_expired``); its tokens are revoked;
* 4408: the session sat idle too long (``idle_timeout``) and was ended;
* 4429: the client kept sending audio faster than real time (``audio_too_fast``);
* 4503: refused before the session opened: the server is full (``server_full``, see
  :mod:`parley.transports.admission`) or draining (``server_draining``); try again later;
* 1012: the server is restarting (a drain reached its deadline, after an ``error`` event
  ``server_restarting``): reconnect, and the session resumes where it was;
* 4409: a newer connection (WebSocket or WebRTC) took the session over, after an
  ``error`` event ``session_taken_over``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from parley.config import Settings
from parley.telemetry import get_logger
from parley.transports.admission import Admission, ServerFull
from parley.transports.control import apply_control
from parley.transports.outbound import OutboundFinished, OutboundOverflow, OutboundQueue
from parley.transports.session_limits import (
    CLOSE_EXPIRED,
    CLOSE_IDLE,
    REFUSAL_MESSAGES,
    refusal,
)
from parley.transports.voice_runtime import (
    CLOSE_SERVICE_RESTART,
    open_voice_session,
    taken_over_event,
)
from parley.voice.events import Event, event
from parley.voice.session import AudioTooFast, SessionOverloaded, VoiceSession

log = get_logger(__name__)

router = APIRouter()


CLOSE_NORMAL = 1000
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TAKEN_OVER = 4409
"""Close code of a connection whose session a newer connection took over."""
CLOSE_SERVER_FULL = 4503
"""Close code of a connection refused because the server has no room for its session."""
CLOSE_AUDIO_TOO_FAST = 4429
"""Close code of a connection that kept sending audio faster than real time."""
AUDIO_TOO_FAST = "audio_too_fast"
SUBPROTOCOL = "parley"
"""The subprotocol a connection is answered with when it sent its token as one."""
TOKEN_SUBPROTOCOL_PREFIX = "parley.token."
AUTH_MESSAGE_SECS = 5.0
"""How long a connection without a token in its URL or subprotocols is given to send
``{"type": "auth", "token": …}`` as its first message."""
CLEAN_CLOSE_CODES = (1000, 1001)
"""Close codes of a client that closed its socket on purpose (normal, going away).
Anything else is a drop: a lost connection reads 1005 or 1006 depending on the server's
WebSocket implementation (a close frame without a code, 1005, reads the same)."""
FLUSH_SECS = 2.0
"""How long the last events (a goodbye, an error) may take to leave before the close."""


@router.websocket("/v1/ws")
async def voice_socket(websocket: WebSocket, token: str | None = None) -> None:
    app = websocket.app
    settings: Settings = app.state.settings
    offered = _subprotocol_token(websocket)
    # A server may only answer a subprotocol the client offered: clients offer
    # ``parley`` beside ``parley.token.<token>`` and get ``parley`` back (never the token).
    answered = SUBPROTOCOL if SUBPROTOCOL in (websocket.scope.get("subprotocols") or ()) else None
    await websocket.accept(subprotocol=answered)
    token = offered or token or await _auth_message(websocket)
    session_id = await _authorize(websocket, token)
    if session_id is None:
        return
    outbound = OutboundQueue(settings.server.max_outbound_queue)
    taken_over = asyncio.Event()
    expired = asyncio.Event()

    def on_taken_over() -> None:
        outbound.send_event(taken_over_event())
        taken_over.set()

    admission: Admission = app.state.admission
    try:
        with admission.opening(session_id):
            live = await open_voice_session(app, session_id, outbound, on_taken_over, "websocket")
    except ServerFull as exc:
        await _refuse(websocket, CLOSE_SERVER_FULL, exc.code, str(exc))
        return
    except Exception as exc:
        log.error("could not open the session", error=repr(exc), exc_info=exc)
        failure = _internal_error("opening the session", exc)
        await _refuse(websocket, CLOSE_INTERNAL_ERROR, "internal_error", failure["message"])
        return
    live.on_expired = lambda code, close_code: expired.set()
    log.info("websocket session opened")
    sender = asyncio.create_task(_send_loop(websocket, outbound), name="ws-send")
    tasks: list[asyncio.Task[Any]] = [sender]
    ending: tuple[int, Event | None] | None = None
    receiver: asyncio.Task[str] | None = None
    try:
        await live.session.start()
        receiver = asyncio.create_task(
            _receive_loop(websocket, live.session, outbound, settings), name="ws-receive"
        )
        superseded = asyncio.create_task(taken_over.wait(), name="ws-taken-over")
        limit = asyncio.create_task(expired.wait(), name="ws-limit-reached")
        tasks += [receiver, superseded, limit]
        # Whichever ends first ends the connection: the client (or its socket) went, the
        # sender died (a session that cannot be heard must not run on), a newer
        # connection took the session over, or a limit was reached (idle, maximum
        # duration, the session gone deaf: session_limits.py).
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        ending = (
            (live.expired[1], None)  # its error event is already queued
            if live.expired is not None
            else _ending(websocket, sender, receiver, superseded)
        )
    except Exception as exc:  # the session would not start: say so, do not run on
        log.error("websocket session failed", error=repr(exc), exc_info=exc)
        ending = CLOSE_INTERNAL_ERROR, _internal_error("starting the session", exc)
    finally:
        try:
            # Before the voice session closes (which frees its place): a dropped caller's
            # place must never look free, not even while the close awaits the database.
            admission.left(session_id, dropped=_dropped(receiver, ending))
            for task in tasks[1:]:
                task.cancel()
            await live.close(_end_reason(ending))
            if ending is not None:
                await _say_goodbye(websocket, outbound, sender, *ending)
        finally:  # even when cancelled (server shutdown) mid-way
            sender.cancel()
            with contextlib.suppress(BaseException):
                await sender
            if _writable(websocket):
                with contextlib.suppress(Exception):
                    await websocket.close(ending[0] if ending else CLOSE_NORMAL)
            log.info("websocket session closed")


def _end_reason(ending: tuple[int, Event | None] | None) -> str:
    """The connection's end as metrics count it (see voice_runtime.END_REASONS)."""
    if ending is None:
        return "disconnected"
    return {
        CLOSE_NORMAL: "client_ended",
        CLOSE_TAKEN_OVER: "taken_over",
        CLOSE_SERVICE_RESTART: "server_shutdown",
        CLOSE_IDLE: "idle_timeout",
        CLOSE_EXPIRED: "session_expired",
        CLOSE_AUDIO_TOO_FAST: "audio_too_fast",
    }.get(ending[0], "error")


def _dropped(receiver: asyncio.Task[str] | None, ending: tuple[int, Event | None] | None) -> bool:
    """Whether the caller may well come back: the connection was lost or failed, rather
    than the client ending the session (``end``) or closing its socket, or a newer
    connection taking the session over. A caller closed for a restart comes back too, but
    to another process: no place is kept here."""
    if ending is not None and ending[0] in (
        CLOSE_SERVICE_RESTART,
        CLOSE_TAKEN_OVER,
        CLOSE_IDLE,
        CLOSE_EXPIRED,
        CLOSE_AUDIO_TOO_FAST,
    ):
        return False
    if receiver is None or not receiver.done() or receiver.cancelled():
        return True  # it never ran, or the sender or a failure ended the connection
    return receiver.exception() is not None or receiver.result() == "dropped"


def _ending(
    websocket: WebSocket,
    sender: asyncio.Task[None],
    receiver: asyncio.Task[str],
    superseded: asyncio.Task[Any],
) -> tuple[int, Event | None] | None:
    """How the connection ends: its close code and the last event the client gets, or
    None when the client is already gone (or was already closed). Every failure is
    logged here, with its traceback: none ends a connection unseen."""
    if superseded.done():
        log.info("websocket closing: session taken over")
        return CLOSE_TAKEN_OVER, None  # its error event is already queued
    if receiver.done():
        failure = receiver.exception()
        if failure is None:
            if receiver.result() == AUDIO_TOO_FAST:
                return CLOSE_AUDIO_TOO_FAST, event(
                    "error",
                    code=AUDIO_TOO_FAST,
                    message="audio kept arriving faster than real time; connection closed",
                )
            return (CLOSE_NORMAL, None) if receiver.result() == "end" else None
        if isinstance(failure, WebSocketDisconnect):
            return None
        log.error("websocket receive failed; closing", error=repr(failure), exc_info=failure)
        return CLOSE_INTERNAL_ERROR, _internal_error("handling a message", failure)
    failure = sender.exception()
    if failure is None:
        return None  # it closed the socket itself (the client stopped reading)
    if _client_gone(websocket, failure):
        log.info("websocket closing: client gone while sending", error=repr(failure))
        return None
    log.error("websocket send failed; closing the session", error=repr(failure), exc_info=failure)
    return CLOSE_INTERNAL_ERROR, _internal_error("sending", failure)


def _writable(websocket: WebSocket) -> bool:
    """Neither side has closed the socket yet."""
    return (
        websocket.client_state == WebSocketState.CONNECTED
        and websocket.application_state == WebSocketState.CONNECTED
    )


def _client_gone(websocket: WebSocket, failure: BaseException) -> bool:
    return isinstance(failure, WebSocketDisconnect | OSError) or not _writable(websocket)


def _internal_error(doing: str, failure: BaseException) -> Event:
    return event(
        "error",
        code="internal_error",
        message=f"the server failed while {doing} ({type(failure).__name__}); "
        "this connection is closed, reconnect to resume the session",
    )


async def _say_goodbye(
    websocket: WebSocket,
    outbound: OutboundQueue,
    sender: asyncio.Task[None],
    code: int,
    last: Event | None,
) -> None:
    """Let what is queued (and ``last``) reach the client, bounded, before closing."""
    if not sender.done():
        if last is not None:
            outbound.send_event(last)
        outbound.finish()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.shield(sender), FLUSH_SECS)
    elif last is not None and _writable(websocket):
        # The sender is dead: nothing else writes to the socket now.
        with contextlib.suppress(Exception):
            await websocket.send_text(json.dumps(last))
    if _writable(websocket):
        with contextlib.suppress(Exception):
            await websocket.close(code)


def _subprotocol_token(websocket: WebSocket) -> str | None:
    """The token the client offered as a subprotocol ``parley.token.<token>``, if any."""
    for offered in websocket.scope.get("subprotocols") or ():
        if offered.startswith(TOKEN_SUBPROTOCOL_PREFIX):
            return str(offered[len(TOKEN_SUBPROTOCOL_PREFIX) :]) or None
    return None


async def _auth_message(websocket: WebSocket) -> str | None:
    """The token of a first message ``{"type": "auth", "token": …}``, waited for
    ``AUTH_MESSAGE_SECS``; None when anything else (or nothing) comes."""
    try:
        async with asyncio.timeout(AUTH_MESSAGE_SECS):
            first = await websocket.receive()
    except TimeoutError:
        return None
    text = first.get("text") if first.get("type") == "websocket.receive" else None
    if not text or len(text) > 8_192:
        return None
    try:
        message = json.loads(text)
    except json.JSONDecodeError:
        return None
    if isinstance(message, dict) and message.get("type") == "auth":
        token = message.get("token")
        return token if isinstance(token, str) else None
    return None


async def _authorize(websocket: WebSocket, token: str | None) -> str | None:
    """The session id the connection's token grants, or None after closing it with a
    clear error (4401: no valid token; 4404: the session no longer exists; 4410: it has
    ended or reached its maximum duration, which revokes its tokens)."""
    app = websocket.app
    try:
        granted = app.state.tokens.verify(token, None)
    except Exception as exc:  # TokenError: status and message
        status = getattr(exc, "status", 401)
        message = getattr(exc, "message", str(exc))
        await _refuse(
            websocket, 4000 + status, "unauthorized" if status == 401 else "forbidden", message
        )
        return None
    record = await app.state.store.get_session(granted.session_id)
    if record is None:
        await _refuse(websocket, 4404, "unknown_session", f"unknown session {granted.session_id}")
        return None
    closed = refusal(record, app.state.settings.server)
    if closed is not None:
        await _refuse(websocket, CLOSE_EXPIRED, closed, REFUSAL_MESSAGES[closed])
        return None
    return str(granted.session_id)


async def _refuse(websocket: WebSocket, code: int, error: str, message: str) -> None:
    log.info("websocket refused", error=error, close_code=code)
    with contextlib.suppress(Exception):
        await websocket.send_text(json.dumps(event("error", code=error, message=message)))
        await websocket.close(code, message[:120])


async def _send_loop(websocket: WebSocket, outbound: OutboundQueue) -> None:
    """Drain the queue to the socket. Any failure ends the task with it raised: the
    connection's handler reads it and ends the session (see :func:`_ending`)."""
    try:
        while True:
            kind, payload = await outbound.get()
            if kind == "audio":
                assert isinstance(payload, bytes)
                await websocket.send_bytes(payload)
            else:
                await websocket.send_text(json.dumps(payload))
    except OutboundFinished:
        return
    except OutboundOverflow:
        log.warning("closing: client stopped reading")
        with contextlib.suppress(Exception):
            await websocket.close(1008, "client is not reading its messages")


async def _receive_loop(
    websocket: WebSocket, session: VoiceSession, outbound: OutboundQueue, settings: Settings
) -> str:
    """Feed the client's messages to the session until it goes (``"closed"`` when it
    closed its socket, ``"dropped"`` when the connection was lost) or asks to end the
    session (``"end"``: the goodbye is queued, the handler closes), or kept sending audio
    too fast (``"audio_too_fast"``: the handler closes with 4429)."""
    limits = settings.server

    def reject(code: str, message: str) -> None:
        outbound.send_event(event("error", code=code, message=message))

    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return "closed" if message.get("code") in CLEAN_CLOSE_CODES else "dropped"
        data: bytes | None = message.get("bytes")
        text: str | None = message.get("text")
        if data is not None:
            if len(data) > limits.max_audio_message_bytes:
                reject(
                    "audio_too_large",
                    f"binary message of {len(data)} bytes exceeds the limit of "
                    f"{limits.max_audio_message_bytes}; send PCM16 in chunks of at most that size",
                )
            elif len(data) % 2:
                reject(
                    "audio_malformed",
                    f"binary message of {len(data)} bytes is not whole PCM16 samples "
                    "(an even byte count is required)",
                )
            elif data:
                try:
                    session.push_audio(data)
                except AudioTooFast as exc:
                    if exc.persistent:
                        return AUDIO_TOO_FAST
                    if exc.first:  # once per episode, not per dropped message
                        reject(AUDIO_TOO_FAST, str(exc))
                except SessionOverloaded as exc:
                    reject("overloaded", str(exc))
        elif text is not None:
            if apply_control(session, text, limits.max_text_message_bytes) == "end":
                return "end"
