"""The supervisor console's API: console tokens, the live session list, a WebSocket of
live events and commands, and WebRTC listening (see docs/handoff.md).

A console token is minted with the supervisor key (``handoff.supervisor_key``, else the
admin key) and is valid for every session (``sid`` ``*``, role ``supervisor``) but only
here: the session endpoints refuse it, as they refuse any token of another session.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import re
import secrets
from typing import Any, Literal

from fastapi import APIRouter, Header, HTTPException, Request, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, Field

from parley.server.sessions_api import AUTH_RESPONSES, _bearer
from parley.server.tokens import ADMIN, ANY_SESSION, SessionToken, TokenError, TokenIssuer
from parley.telemetry import get_logger
from parley.transports.supervision import SupervisionHub, Supervisor
from parley.transports.webrtc.listen import ListenPeer
from parley.transports.websocket import SUBPROTOCOL, _subprotocol_token

log = get_logger(__name__)

router = APIRouter(prefix="/v1/supervisor", tags=["supervisor"])

CONSOLE_TOKEN_TTL_SECS = 8 * 3600
"""A console token lasts a working shift."""
CONSOLE_ROLES = frozenset({"supervisor", ADMIN})
MAX_COMMAND_BYTES = 4_096
CONSOLE_QUEUE = 1_000
"""Messages queued for a console that reads too slowly before it is closed."""
CLOSE_UNAUTHORIZED = 4401
CLOSE_TOO_SLOW = 4408


class ConsoleTokenRequest(BaseModel):
    name: str = Field(default="", max_length=40)


def supervisor_key(request: Request) -> str | None:
    settings = request.app.state.settings
    key = settings.handoff.supervisor_key or settings.telemetry.admin_key
    return key.get_secret_value() if key is not None else None


@router.post("/tokens", status_code=201, responses=AUTH_RESPONSES)
async def mint_console_token(
    request: Request,
    body: ConsoleTokenRequest | None = None,
    authorization: str | None = Header(default=None),
) -> dict[str, Any]:
    """A supervisor-console token for ``Authorization: Bearer <handoff.supervisor_key>``."""
    key = supervisor_key(request)
    if key is None:
        raise HTTPException(403, "no supervisor key is configured (handoff.supervisor_key)")
    if not hmac.compare_digest((_bearer(authorization) or "").encode(), key.encode()):
        raise HTTPException(401, "the supervisor key is not valid")
    name = re.sub(r"[^\w .-]", "", (body.name if body else "").strip()) or secrets.token_hex(3)
    issuer: TokenIssuer = request.app.state.tokens
    token = issuer.mint(
        ANY_SESSION, f"supervisor:{name}", "supervisor", ttl_secs=CONSOLE_TOKEN_TTL_SECS
    )
    return {"token": token.token, "role": "supervisor", "expires_at": token.expires_at}


def console_token(issuer: TokenIssuer, token: str | None) -> SessionToken:
    """A console-wide token (a supervisor's or an operator's), else :class:`TokenError`."""
    granted = issuer.verify(token, ANY_SESSION, CONSOLE_ROLES)
    if granted.session_id != ANY_SESSION:
        raise TokenError(403, "a console token is needed (POST /v1/supervisor/tokens)")
    return granted


def _authorize(request: Request, authorization: str | None) -> SessionToken:
    try:
        return console_token(request.app.state.tokens, _bearer(authorization))
    except TokenError as exc:
        raise HTTPException(exc.status, exc.message) from exc


def _hub(app: Any) -> SupervisionHub:
    hub: SupervisionHub | None = getattr(app.state, "supervision", None)
    if hub is None:
        raise HTTPException(503, "supervision is not running")
    return hub


def _who(granted: SessionToken) -> Supervisor:
    """Named by the token's name (an admin token: ``admin``), told apart by the token:
    two supervisors who typed one name, or two operators, are two people."""
    by = granted.room_id if granted.role != ADMIN else "admin"
    digest = hashlib.sha256(granted.token.encode()).hexdigest()[:16]
    return Supervisor(by, f"{by}#{digest}")


@router.get("/sessions", responses=AUTH_RESPONSES)
async def live_sessions(
    request: Request, authorization: str | None = Header(default=None)
) -> dict[str, Any]:
    """Every live session (of every process, with Redis), newest state first."""
    _authorize(request, authorization)
    return {"sessions": _hub(request.app).sessions()}


class ListenOffer(BaseModel):
    sdp: str = Field(min_length=1, max_length=100_000)
    type: Literal["offer"]


@router.post(
    "/sessions/{session_id}/webrtc",
    responses={
        **AUTH_RESPONSES,
        400: {"description": "bad offer"},
        404: {"description": "not live"},
    },
)
async def listen_offer(
    session_id: str,
    body: ListenOffer,
    request: Request,
    authorization: str | None = Header(default=None),
) -> dict[str, Any]:
    """Listen to a live session (caller and agent mixed); the offered microphone reaches
    the caller only while this supervisor has taken the session over."""
    granted = _authorize(request, authorization)
    hub = _hub(request.app)
    if hub.find(session_id) is None:
        raise HTTPException(404, "no such live session")
    peers: dict[int, ListenPeer] = request.app.state.listen_peers
    if len(peers) >= request.app.state.settings.webrtc.max_peers:
        raise HTTPException(503, "too many WebRTC connections; try again later")
    peer = ListenPeer(request.app, hub, session_id, _who(granted))
    peers[id(peer)] = peer
    try:
        answer = await asyncio.wait_for(peer.answer(body.sdp), 15.0)
    except LookupError:
        await peer.close()
        raise HTTPException(404, "no such live session") from None
    except Exception as exc:  # aiortc raises assorted errors for bad SDP
        await peer.close()
        log.info("listen offer refused", error=repr(exc))
        raise HTTPException(400, "invalid SDP offer") from None
    log.info("supervisor listening", by=peer.who.by)
    return {"sdp": answer.sdp, "type": "answer"}


class ConsoleConnection:
    """One console's WebSocket: what it is sent queues here (never blocking the hub)."""

    def __init__(self, who: Supervisor) -> None:
        self.who = who
        self.watching: str | None = None
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(CONSOLE_QUEUE)
        self.too_slow = False

    def send(self, message: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            self.too_slow = True
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.queue.put_nowait(None)


@router.websocket("/ws")
async def console_socket(websocket: WebSocket) -> None:
    """The console's live feed and commands. The token comes as a subprotocol: a browser
    offers ``["parley", "parley.token.<token>"]`` and is answered ``parley`` (never the
    token: a browser refuses an answer to none of what it offered)."""
    offered = websocket.scope.get("subprotocols") or []
    answered = SUBPROTOCOL if SUBPROTOCOL in offered else None
    await websocket.accept(subprotocol=answered)
    try:
        granted = console_token(websocket.app.state.tokens, _subprotocol_token(websocket))
    except TokenError as exc:
        await websocket.send_json({"type": "error", "code": "unauthorized", "message": exc.message})
        await websocket.close(CLOSE_UNAUTHORIZED)
        return
    hub: SupervisionHub | None = getattr(websocket.app.state, "supervision", None)
    if hub is None:
        await websocket.close(1011)
        return
    console = ConsoleConnection(_who(granted))
    hub.consoles.add(console)
    console.send({"type": "sessions", "sessions": hub.sessions()})
    sender = asyncio.create_task(_send_loop(websocket, console))
    try:
        while True:
            text = await websocket.receive_text()
            reply = await _command(hub, console, text)
            if reply is not None:
                console.send(reply)
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        hub.consoles.discard(console)
        sender.cancel()
        with contextlib.suppress(BaseException):
            await sender


async def _send_loop(websocket: WebSocket, console: ConsoleConnection) -> None:
    while (message := await console.queue.get()) is not None:
        await websocket.send_text(json.dumps(message))
    await websocket.close(CLOSE_TOO_SLOW)


async def _command(
    hub: SupervisionHub, console: ConsoleConnection, text: str
) -> dict[str, Any] | None:
    if len(text.encode()) > MAX_COMMAND_BYTES:
        return {"type": "error", "code": "message_too_large", "message": "command too large"}
    try:
        message = json.loads(text)
    except json.JSONDecodeError:
        return {"type": "error", "code": "invalid_json", "message": "commands are JSON"}
    if not isinstance(message, dict) or not isinstance(message.get("session_id"), str):
        return {"type": "error", "code": "invalid_message", "message": "session_id is needed"}
    kind, session_id = message.get("type"), message["session_id"]
    if kind == "watch":
        console.watching = session_id
        found = await hub.command(session_id, "transcript", console.who)
        return {"type": "transcript", "session_id": session_id, "lines": found.get("lines", [])}
    if kind in ("take_over", "hand_back"):
        # ``force``: the holder left without handing back; a colleague takes it over
        # (or hands it back) so the caller is not left with nobody.
        force = message.get("force") is True
        result = await hub.command(session_id, kind, console.who, force=force)
        log.info("supervisor command", action=kind, by=console.who.by, ok=result.get("ok"))
        return {"type": "result", "id": message.get("id"), "action": kind, **result}
    return {
        "type": "error",
        "code": "unknown_message_type",
        "message": "expected watch, take_over or hand_back",
    }
