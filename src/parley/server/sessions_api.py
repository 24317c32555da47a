"""Session control plane: create a session, read it, refresh its token."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Header, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from parley.server.access import limit_creation, require_api_key
from parley.server.livekit_tokens import mint_livekit_token
from parley.server.tokens import (
    ADMIN,
    MAY_MINT,
    ROLES,
    Role,
    SessionToken,
    TokenError,
    TokenIssuer,
)
from parley.store import Store
from parley.store.models import SessionRecord
from parley.transports.admission import Admission, ServerFull
from parley.transports.session_limits import REFUSAL_MESSAGES, refusal, session_deadline
from parley.transports.voice_runtime import end_live_session
from parley.transports.worker_registry import (
    FleetFull,
    RegistryUnavailable,
    WorkerInfo,
    WorkerRegistry,
)

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])

# What every session-scoped endpoint may answer before it does anything.
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {
        "description": "missing, malformed, forged or expired token, or a token of a "
        "session that has ended or reached its maximum duration (revoked)"
    },
    403: {"description": "token for another session, or a role without the right"},
}
FULL_RESPONSE: dict[int | str, dict[str, Any]] = {
    503: {
        "description": "the server is full (error code server_full) or draining "
        "(server_draining); Retry-After says when to try again"
    }
}


def server_full_response(request: Request, exc: Exception) -> JSONResponse:
    """How every endpoint answers :class:`ServerFull` (and a fleet's
    :class:`FleetFull` and :class:`RegistryUnavailable`): 503, ``Retry-After``, and the
    reason as ``detail`` (like every other error here, and what the page shows) and as
    ``error`` (``code`` ``server_full``…, for clients that act on it)."""
    assert isinstance(exc, ServerFull | FleetFull | RegistryUnavailable)
    message = str(exc)
    return JSONResponse(
        {"detail": message, "error": {"code": exc.code, "message": message}},
        status_code=503,
        headers={"Retry-After": str(exc.retry_after_secs)},
    )


class CreateSession(BaseModel):
    user_id: str | None = Field(default=None, max_length=255)
    mode: Literal["voice", "text"] = "voice"
    consent: dict[str, bool] = Field(default_factory=dict)
    """What the user agreed to, e.g. {"store_transcripts": true, "log_transcripts":
    true}; at most ``server.max_consent_bytes`` serialized (422 above)."""


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
    """The voice WebSocket for this token: a path on this server, or, from a control
    plane, the absolute URL on the worker the session was dispatched to."""
    webrtc_offer_url: str
    """Where a WebRTC client POSTs its SDP offer, with this token as Bearer (a path, or
    absolute on the worker)."""
    worker_id: str | None = None
    """The worker the session was dispatched to (from a control plane)."""
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
    cost: dict[str, Any] | None = None
    """What the session's provider calls used and cost, over all its connections
    (docs/costs.md); null before its first call."""


def _token_out(
    request: Request, t: SessionToken, identity: str, worker: WorkerInfo | None = None
) -> TokenOut:
    base = "" if worker is None else worker.url
    ws_base = base.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    out = TokenOut(
        session_id=t.session_id,
        room_id=t.room_id,
        role=t.role,
        token=t.token,
        expires_at=t.expires_at,
        websocket_url=f"{ws_base}/v1/ws?token={t.token}",
        webrtc_offer_url=f"{base}/v1/sessions/{t.session_id}/webrtc",
        worker_id=None if worker is None else worker.worker_id,
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


def authorize(
    request: Request,
    session_id: str,
    authorization: str | None,
    *,
    roles: frozenset[str] = frozenset(ROLES),
    admin: bool = False,
) -> SessionToken:
    """The caller's token, valid for ``session_id`` with one of ``roles``; ``admin``: an
    operator's admin token (any session) is accepted too."""
    issuer: TokenIssuer = request.app.state.tokens
    try:
        return issuer.verify(
            _bearer(authorization), session_id, roles | ({ADMIN} if admin else set())
        )
    except TokenError as exc:
        raise HTTPException(exc.status, exc.message) from exc


async def require_session(
    request: Request, session_id: str, caller: SessionToken | None = None
) -> SessionRecord:
    """The session's record: 404 unless it exists (its token may outlive it: DELETE
    erases it); with the ``caller``'s token, 401 when the session has ended or reached
    its maximum duration, which revokes its tokens (an operator's admin token excepted:
    ended sessions are theirs to read and erase)."""
    store: Store = request.app.state.store
    record = await store.get_session(session_id)
    if record is None:
        raise HTTPException(404, f"unknown session {session_id}")
    if caller is not None and caller.role != ADMIN:
        closed = refusal(record, request.app.state.settings.server)
        if closed is not None:
            raise HTTPException(401, REFUSAL_MESSAGES[closed])
    return record


def _ttl_within(request: Request, record: SessionRecord) -> int:
    """A token's lifetime: ``server.token_ttl_secs``, cut to what is left of the
    session's maximum duration (a token never outlives its session)."""
    settings = request.app.state.settings.server
    left = int(session_deadline(record, settings) - time.time())
    return max(1, min(settings.token_ttl_secs, left))


@router.post(
    "",
    status_code=201,
    response_model=TokenOut,
    responses={
        **FULL_RESPONSE,
        401: {"description": "server.api_keys is set and no valid key was given"},
        429: {"description": "this client created too many sessions; see Retry-After"},
    },
)
async def create_session(
    body: CreateSession, request: Request, authorization: str | None = Header(default=None)
) -> TokenOut:
    """Create the server-side session record and a short-lived user token for it."""
    settings = request.app.state.settings.server
    limit_creation(request)  # first: failed attempts count too (no key guessing at speed)
    require_api_key(settings, authorization)
    consent_bytes = len(json.dumps(body.consent))
    if consent_bytes > settings.max_consent_bytes:
        raise HTTPException(
            422,
            f"consent is {consent_bytes} bytes serialized; at most "
            f"{settings.max_consent_bytes} are accepted",
        )
    registry: WorkerRegistry | None = request.app.state.registry
    chosen: WorkerInfo | None = None
    if registry is None:
        admission: Admission = request.app.state.admission
        admission.check_new_session()  # no record for a caller who could not connect now
    else:
        chosen = await registry.choose()
        if chosen is None:  # no record when no worker could take the call
            raise FleetFull(settings.retry_after_secs)
    store: Store = request.app.state.store
    record = await store.create_session(
        user_id=body.user_id, mode=body.mode, consent=dict(body.consent)
    )
    identity = body.user_id or f"user-{record.id}"
    return await _mint(request, record, "user", identity, chosen=chosen)


async def _mint(
    request: Request,
    record: SessionRecord,
    role: Role,
    identity: str,
    worker_id: str | None = None,
    chosen: WorkerInfo | None = None,
) -> TokenOut:
    """A token of ``role`` for the session; from a control plane, dispatched to a worker
    (``chosen`` for a new session; else the one it was on while that one lives, else the
    freest) and naming it. Elsewhere (a worker refreshing a token) it names the caller's
    token's worker, ``worker_id``."""
    issuer: TokenIssuer = request.app.state.tokens
    ttl = _ttl_within(request, record)
    registry: WorkerRegistry | None = request.app.state.registry
    if registry is None:
        token = issuer.mint(record.id, record.room_id, role, ttl_secs=ttl, worker=worker_id)
        return _token_out(request, token, identity)
    settings = request.app.state.settings.server
    lifetime = max(1, int(session_deadline(record, settings) - time.time()))
    if chosen is None:
        worker = await registry.dispatch(record.id, lifetime, settings.retry_after_secs)
    else:
        worker = chosen
        await registry.assign(record.id, worker.worker_id, lifetime)
    token = issuer.mint(record.id, record.room_id, role, ttl_secs=ttl, worker=worker.worker_id)
    return _token_out(request, token, identity, worker)


@router.get(
    "/{session_id}",
    response_model=SessionOut,
    responses=AUTH_RESPONSES,
)
async def get_session(
    session_id: str, request: Request, authorization: str | None = Header(default=None)
) -> SessionOut:
    caller = authorize(request, session_id, authorization)
    record = await require_session(request, session_id, caller)
    out = SessionOut.model_validate(record, from_attributes=True)
    if not sees_costs(caller):
        out.cost = None
    return out


def sees_costs(caller: SessionToken) -> bool:
    """Costs are the operator's (providers, models, prices): a caller's own token does
    not show them; an agent's, a supervisor's and an admin's do."""
    return caller.role != "user"


def without_costs(record: dict[str, Any]) -> dict[str, Any]:
    """A session's record (``session_record``) without its costs."""
    turns = [
        {**t, "result": {k: v for k, v in t["result"].items() if k != "cost"}}
        if isinstance(t.get("result"), dict)
        else t
        for t in record["turns"]
    ]
    return {**record, "turns": turns, "cost": None}


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
    """A fresh token for the session, for a role the caller's token may mint. Tokens
    never outlive the session's maximum duration: refreshing stops there (401)."""
    caller = authorize(request, session_id, authorization)
    if body.role not in MAY_MINT[caller.role]:
        raise HTTPException(403, f"a {caller.role} token cannot mint a {body.role} token")
    record = await require_session(request, session_id, caller)
    identity = (
        (record.user_id or f"user-{record.id}")
        if body.role == "user"
        else f"{body.role}-{record.id}"
    )
    return await _mint(request, record, body.role, identity, caller.worker)


@router.delete(
    "/{session_id}",
    status_code=204,
    responses=AUTH_RESPONSES,
)
async def delete_session(
    session_id: str, request: Request, authorization: str | None = Header(default=None)
) -> Response:
    """Erase the session: its record, turns, transcripts, tool executions and timeline.
    A live connection is closed first (``error`` ``session_ended``, close 4410), so
    nothing is written under the session once it is gone."""
    caller = authorize(request, session_id, authorization, admin=True)
    await require_session(request, session_id, caller)
    await end_live_session(request.app, session_id, "the session was deleted")
    store: Store = request.app.state.store
    if not await store.delete_session(session_id):
        raise HTTPException(404, f"unknown session {session_id}")
    return Response(status_code=204)


@router.post(
    "/{session_id}/end",
    status_code=204,
    responses=AUTH_RESPONSES,
)
async def end_session(
    session_id: str, request: Request, authorization: str | None = Header(default=None)
) -> Response:
    """End the session: every token of it is refused from now on, and a live connection
    is closed (``error`` ``session_ended``, close 4410). Its record stays (see DELETE)."""
    caller = authorize(request, session_id, authorization, admin=True)
    await require_session(request, session_id, caller)
    await end_live_session(request.app, session_id, "the session was ended")
    store: Store = request.app.state.store
    await store.end_session(session_id)
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
    caller = authorize(request, session_id, authorization, admin=True)
    await require_session(request, session_id, caller)
    record = await session_record(request.app.state.store, session_id)
    return record if sees_costs(caller) else without_costs(record)


async def session_record(store: Store, session_id: str) -> dict[str, Any]:
    """A session's stored record: turns with their transitions, segments, timeline, and
    the conversation's memory (the summary of older turns, the settled state) and the
    session's cost."""
    session = await store.get_session(session_id)
    cost = session.cost if session is not None else None
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
    return {
        "session_id": session_id,
        "turns": turns,
        "segments": segments,
        "events": events,
        "memory": {
            "summary": (session.memory or {}).get("summary", "") if session else "",
            "covered": (session.memory or {}).get("covered", 0) if session else 0,
            "state": session.orchestration_state if session else {},
        },
        "cost": cost,
    }
