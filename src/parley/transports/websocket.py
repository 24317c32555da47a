"""WebSocket transport: binary messages are PCM16LE mono 16 kHz audio both ways, text
messages are JSON events (server → client) and control messages (client → server).

The protocol is documented in docs/websocket-protocol.md. How a connection ends:

* 1000: the client ended the session (``end``), after the ``session.ended`` event;
* 1008: the client stopped reading (its outbound queue overflowed);
* 1011: the server failed on this connection (its sender died, a message could not be
  handled, the session would not start), after an ``error`` event ``internal_error``;
  the voice session is closed, and a reconnect resumes it;
* 4401/4403/4404: refused before the session opened (token, role, unknown session);
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
from parley.transports.control import apply_control
from parley.transports.outbound import OutboundFinished, OutboundOverflow, OutboundQueue
from parley.transports.voice_runtime import open_voice_session, taken_over_event
from parley.voice.events import Event, event
from parley.voice.session import SessionOverloaded, VoiceSession

log = get_logger(__name__)

router = APIRouter()


CLOSE_NORMAL = 1000
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TAKEN_OVER = 4409
"""Close code of a connection whose session a newer connection took over."""
FLUSH_SECS = 2.0
"""How long the last events (a goodbye, an error) may take to leave before the close."""


@router.websocket("/v1/ws")
async def voice_socket(websocket: WebSocket, token: str | None = None) -> None:
    app = websocket.app
    settings: Settings = app.state.settings
    await websocket.accept()
    session_id = await _authorize(websocket, token)
    if session_id is None:
        return
    outbound = OutboundQueue(settings.server.max_outbound_queue)
    taken_over = asyncio.Event()

    def on_taken_over() -> None:
        outbound.send_event(taken_over_event())
        taken_over.set()

    try:
        live = await open_voice_session(app, session_id, outbound, on_taken_over)
    except Exception as exc:
        log.error("could not open the session", error=repr(exc), exc_info=exc)
        failure = _internal_error("opening the session", exc)
        await _refuse(websocket, CLOSE_INTERNAL_ERROR, "internal_error", failure["message"])
        return
    log.info("websocket session opened")
    sender = asyncio.create_task(_send_loop(websocket, outbound), name="ws-send")
    tasks: list[asyncio.Task[Any]] = [sender]
    ending: tuple[int, Event | None] | None = None
    try:
        await live.session.start()
        receiver = asyncio.create_task(
            _receive_loop(websocket, live.session, outbound, settings), name="ws-receive"
        )
        superseded = asyncio.create_task(taken_over.wait(), name="ws-taken-over")
        tasks += [receiver, superseded]
        # Whichever ends first ends the connection: the client (or its socket) went, the
        # sender died (a session that cannot be heard must not run on), or a newer
        # connection took the session over.
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        ending = _ending(websocket, sender, receiver, superseded)
    except Exception as exc:  # the session would not start: say so, do not run on
        log.error("websocket session failed", error=repr(exc), exc_info=exc)
        ending = CLOSE_INTERNAL_ERROR, _internal_error("starting the session", exc)
    finally:
        try:
            for task in tasks[1:]:
                task.cancel()
            await live.close()
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


def _ending(
    websocket: WebSocket,
    sender: asyncio.Task[None],
    receiver: asyncio.Task[bool],
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
            return (CLOSE_NORMAL, None) if receiver.result() else None
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


async def _authorize(websocket: WebSocket, token: str | None) -> str | None:
    """The session id the connection's token grants, or None after closing it with a
    clear error (4401: no valid token; 4404: the session no longer exists)."""
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
    if await app.state.store.get_session(granted.session_id) is None:
        await _refuse(websocket, 4404, "unknown_session", f"unknown session {granted.session_id}")
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
) -> bool:
    """Feed the client's messages to the session until it goes (False) or asks to end
    the session (True: the goodbye is queued, the handler closes)."""
    limits = settings.server

    def reject(code: str, message: str) -> None:
        outbound.send_event(event("error", code=code, message=message))

    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return False
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
                except SessionOverloaded as exc:
                    reject("overloaded", str(exc))
        elif text is not None:
            if apply_control(session, text, limits.max_text_message_bytes) == "end":
                return True
