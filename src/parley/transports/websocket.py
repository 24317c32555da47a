"""WebSocket transport: binary messages are PCM16LE mono 16 kHz audio both ways, text
messages are JSON events (server → client) and control messages (client → server).

The protocol is documented in docs/websocket-protocol.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from parley.config import Settings
from parley.engines import Engines
from parley.telemetry import bind_session, get_logger
from parley.transports.outbound import OutboundOverflow, OutboundQueue
from parley.voice.events import event
from parley.voice.recording import SessionRecorder
from parley.voice.session import SessionOverloaded, VoiceSession

log = get_logger(__name__)

router = APIRouter()

CONTROL_TYPES = ("interrupt", "mute", "unmute", "status", "end", "ping")


@router.websocket("/v1/ws")
async def voice_socket(websocket: WebSocket, token: str | None = None) -> None:
    app = websocket.app
    settings: Settings = app.state.settings
    engines: Engines = app.state.engines
    await websocket.accept()
    session_id = await _authorize(websocket, token)
    if session_id is None:
        return
    outbound = OutboundQueue(settings.server.max_outbound_queue)
    store = app.state.store
    started = time.monotonic()
    reconnect = await store.mark_connected(session_id)
    recorder = SessionRecorder(store, session_id)
    session = VoiceSession(engines, settings, outbound, session_id=session_id, recorder=recorder)
    if reconnect:
        # The conversation comes back from the database, not from the client's memory.
        messages, last_turn = await store.conversation(session_id)
        session.restore(messages, last_turn)
        recovery_ms = round((time.monotonic() - started) * 1000, 1)
        recorder.event(
            "session.reconnected", None, {"recovery_ms": recovery_ms, "messages": len(messages)}
        )
        log.info("session resumed", messages=len(messages), recovery_ms=recovery_ms)
    sessions: dict[int, VoiceSession] = app.state.sessions
    connection = id(session)
    sessions[connection] = session
    bind_session(session.session_id)
    log.info("websocket session opened")
    sender = asyncio.create_task(_send_loop(websocket, outbound), name="ws-send")
    try:
        await session.start()
        await _receive_loop(websocket, session, outbound, settings)
    except WebSocketDisconnect:
        pass
    finally:
        sessions.pop(connection, None)
        await session.close()
        with contextlib.suppress(Exception):
            await store.mark_disconnected(session_id)
        sender.cancel()
        with contextlib.suppress(BaseException):
            await sender
        if websocket.client_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await websocket.close(1000)
        log.info("websocket session closed")


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
    log.info("websocket refused", error=error)
    with contextlib.suppress(Exception):
        await websocket.send_text(json.dumps(event("error", code=error, message=message)))
        await websocket.close(code, message[:120])


async def _send_loop(websocket: WebSocket, outbound: OutboundQueue) -> None:
    try:
        while True:
            kind, payload = await outbound.get()
            if kind == "audio":
                assert isinstance(payload, bytes)
                await websocket.send_bytes(payload)
            else:
                await websocket.send_text(json.dumps(payload))
    except OutboundOverflow:
        log.warning("closing: client stopped reading")
        with contextlib.suppress(Exception):
            await websocket.close(1008, "client is not reading its messages")
    except (WebSocketDisconnect, RuntimeError):
        pass  # the receive side notices the disconnect and cleans up


async def _receive_loop(
    websocket: WebSocket, session: VoiceSession, outbound: OutboundQueue, settings: Settings
) -> None:
    limits = settings.server

    def reject(code: str, message: str) -> None:
        outbound.send_event(event("error", code=code, message=message))

    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
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
            if await _handle_control(
                websocket, session, text, reject, limits.max_text_message_bytes
            ):
                return


async def _handle_control(
    websocket: WebSocket, session: VoiceSession, text: str, reject: Any, max_bytes: int
) -> bool:
    """Apply one control message; True when the client ended the session."""
    if len(text.encode()) > max_bytes:
        reject("message_too_large", f"text message exceeds {max_bytes} bytes")
        return False
    try:
        msg = json.loads(text)
    except json.JSONDecodeError as exc:
        reject("invalid_json", f"text message is not valid JSON: {exc.msg}")
        return False
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        reject("invalid_message", 'control messages are JSON objects with a string "type"')
        return False
    kind = msg["type"]
    if kind == "interrupt":
        session.interrupt()
    elif kind == "mute":
        session.mute()
    elif kind == "unmute":
        session.unmute()
    elif kind == "status":
        session.sink.send_event(session.status())
    elif kind == "ping":
        session.sink.send_event(event("pong", id=msg.get("id")))
    elif kind == "end":
        session.sink.send_event(event("session.ended", session_id=session.session_id))
        await asyncio.sleep(0.05)  # let the sender flush the goodbye
        await websocket.close(1000)
        return True
    else:
        reject(
            "unknown_message_type",
            f"unknown message type {kind!r}; expected one of {list(CONTROL_TYPES)}",
        )
    return False
