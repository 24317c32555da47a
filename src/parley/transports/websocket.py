"""WebSocket transport: binary messages are PCM16LE mono 16 kHz audio both ways, text
messages are JSON events (server → client) and control messages (client → server).

The protocol is documented in docs/websocket-protocol.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from parley.config import Settings
from parley.telemetry import get_logger
from parley.transports.control import apply_control
from parley.transports.outbound import OutboundOverflow, OutboundQueue
from parley.transports.voice_runtime import close_voice_session, open_voice_session
from parley.voice.events import event
from parley.voice.session import SessionOverloaded, VoiceSession

log = get_logger(__name__)

router = APIRouter()


@router.websocket("/v1/ws")
async def voice_socket(websocket: WebSocket, token: str | None = None) -> None:
    app = websocket.app
    settings: Settings = app.state.settings
    await websocket.accept()
    session_id = await _authorize(websocket, token)
    if session_id is None:
        return
    outbound = OutboundQueue(settings.server.max_outbound_queue)
    session = await open_voice_session(app, session_id, outbound)
    log.info("websocket session opened")
    sender = asyncio.create_task(_send_loop(websocket, outbound), name="ws-send")
    try:
        await session.start()
        await _receive_loop(websocket, session, outbound, settings)
    except WebSocketDisconnect:
        pass
    finally:
        await close_voice_session(app, session)
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
            if apply_control(session, text, limits.max_text_message_bytes) == "end":
                await asyncio.sleep(0.05)  # let the sender flush the goodbye
                await websocket.close(1000)
                return
