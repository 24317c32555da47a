"""Session control plane: create a session, read it, refresh its token."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Header, HTTPException, Request, Response
from pydantic import BaseModel, Field

from parley.server.livekit_tokens import mint_livekit_token
from parley.server.tokens import MAY_MINT, SessionToken, TokenError, TokenIssuer
from parley.store import Store

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])

# What every session-scoped endpoint may answer before it does anything.
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing, malformed, forged or expired token"},
    403: {"description": "token for another session, or a role without the right"},
}


class CreateSession(BaseModel):
    user_id: str | None = Field(default=None, max_length=255)
    mode: Literal["voice", "text"] = "voice"
    consent: dict[str, bool] = Field(default_factory=dict)
    """What the user agreed to, e.g. {"store_transcripts": true}."""


class TokenRequest(BaseModel):
    role: Literal["user", "agent", "supervisor"] = "user"


class TokenOut(BaseModel):
    session_id: str
    room_id: str
    role: str
    token: str
    expires_at: int
    """Unix time."""
    websocket_url: str
    """Path of the voice WebSocket for this token (relative to the server)."""
    webrtc_offer_url: str
    """Where a WebRTC client POSTs its SDP offer, with this token as Bearer."""
    livekit_url: str | None = None
    livekit_token: str | None = None
    """A LiveKit access token for this session's room (when LiveKit is configured)."""


class SessionOut(BaseModel):
    id: str
    user_id: str | None
    room_id: str
    mode: str
    started_at: datetime
    ended_at: datetime | None
    orchestration_state: dict[str, Any]
    turn_state: str | None
    reconnect_status: str
    reconnect_count: int
    consent: dict[str, Any]


def _token_out(request: Request, t: SessionToken, identity: str) -> TokenOut:
    out = TokenOut(
        session_id=t.session_id,
        room_id=t.room_id,
        role=t.role,
        token=t.token,
        expires_at=t.expires_at,
        websocket_url=f"/v1/ws?token={t.token}",
        webrtc_offer_url=f"/v1/sessions/{t.session_id}/webrtc",
    )
    livekit = request.app.state.settings.livekit
    if livekit.configured:
        out.livekit_url = livekit.url
        out.livekit_token = mint_livekit_token(
            livekit,
            room=t.room_id,
            identity=identity,
            role=t.role,
            ttl_secs=max(1, t.expires_at - int(time.time())),
        )
    return out


def _bearer(authorization: str | None) -> str | None:
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None


def authorize(request: Request, session_id: str, authorization: str | None) -> SessionToken:
    issuer: TokenIssuer = request.app.state.tokens
    try:
        return issuer.verify(_bearer(authorization), session_id)
    except TokenError as exc:
        raise HTTPException(exc.status, exc.message) from exc


async def require_session(request: Request, session_id: str) -> None:
    """404 unless the session exists (its token may outlive it: DELETE erases it)."""
    store: Store = request.app.state.store
    if await store.get_session(session_id) is None:
        raise HTTPException(404, f"unknown session {session_id}")


@router.post("", status_code=201, response_model=TokenOut)
async def create_session(body: CreateSession, request: Request) -> TokenOut:
    """Create the server-side session record and a short-lived user token for it."""
    store: Store = request.app.state.store
    record = await store.create_session(
        user_id=body.user_id, mode=body.mode, consent=dict(body.consent)
    )
    issuer: TokenIssuer = request.app.state.tokens
    identity = body.user_id or f"user-{record.id}"
    return _token_out(request, issuer.mint(record.id, record.room_id, "user"), identity)


@router.get(
    "/{session_id}",
    response_model=SessionOut,
    responses=AUTH_RESPONSES,
)
async def get_session(
    session_id: str, request: Request, authorization: str | None = Header(default=None)
) -> SessionOut:
    authorize(request, session_id, authorization)
    store: Store = request.app.state.store
    record = await store.get_session(session_id)
    if record is None:
        raise HTTPException(404, f"unknown session {session_id}")
    return SessionOut.model_validate(record, from_attributes=True)


@router.post(
    "/{session_id}/tokens",
    status_code=201,
    response_model=TokenOut,
    responses=AUTH_RESPONSES,
)
async def refresh_token(
    session_id: str,
    body: TokenRequest,
    request: Request,
    authorization: str | None = Header(default=None),
) -> TokenOut:
    """A fresh token for the session, for a role the caller's token may mint."""
    caller = authorize(request, session_id, authorization)
    if body.role not in MAY_MINT[caller.role]:
        raise HTTPException(403, f"a {caller.role} token cannot mint a {body.role} token")
    store: Store = request.app.state.store
    record = await store.get_session(session_id)
    if record is None:
        raise HTTPException(404, f"unknown session {session_id}")
    issuer: TokenIssuer = request.app.state.tokens
    identity = (
        (record.user_id or f"user-{record.id}")
        if body.role == "user"
        else f"{body.role}-{record.id}"
    )
    return _token_out(request, issuer.mint(record.id, record.room_id, body.role), identity)


@router.delete(
    "/{session_id}",
    status_code=204,
    responses=AUTH_RESPONSES,
)
async def delete_session(
    session_id: str, request: Request, authorization: str | None = Header(default=None)
) -> Response:
    """Erase the session: its record, turns, transcripts, tool executions and timeline."""
    authorize(request, session_id, authorization)
    store: Store = request.app.state.store
    if not await store.delete_session(session_id):
        raise HTTPException(404, f"unknown session {session_id}")
    return Response(status_code=204)


@router.get(
    "/{session_id}/timeline",
    responses=AUTH_RESPONSES,
)
async def session_timeline(
    session_id: str, request: Request, authorization: str | None = Header(default=None)
) -> dict[str, Any]:
    """The session's persisted record: turns with every state transition, final
    transcript segments and timeline events (no audio)."""
    authorize(request, session_id, authorization)
    await require_session(request, session_id)
    store: Store = request.app.state.store
    turns = []
    for turn in await store.turns(session_id):
        transitions = await store.transitions(turn.id)
        turns.append(
            {
                "seq": turn.seq,
                "idempotency_key": turn.idempotency_key,
                "state": turn.state,
                "user_text": turn.user_text,
                "result": turn.result,
                "transitions": [
                    {
                        "from": t.from_state,
                        "to": t.to_state,
                        "at": t.at.isoformat(),
                        "detail": t.detail,
                    }
                    for t in transitions
                ],
            }
        )
    segments = [
        {"turn": s.turn_seq, "segment_id": s.segment_id, "kind": s.kind, "text": s.text}
        for s in await store.segments(session_id)
    ]
    events = [
        {"stage": e.stage, "turn": e.turn_seq, "at": e.at.isoformat(), "data": e.data}
        for e in await store.timeline(session_id)
    ]
    return {"session_id": session_id, "turns": turns, "segments": segments, "events": events}
