"""Operator endpoints: an admin token minted with the configured admin key, and the list
of recent sessions. Without ``telemetry.admin_key`` there is no admin: every request here
is refused."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Header, HTTPException, Query, Request
from pydantic import BaseModel, Field

from parley.server.drain import Drain
from parley.server.sessions_api import AUTH_RESPONSES, _bearer, authorize
from parley.server.tokens import ADMIN, ANY_SESSION, TokenIssuer
from parley.store import Store

router = APIRouter(prefix="/v1/admin", tags=["admin"])
ADMIN_TOKEN_TTL_SECS = 3600


@router.post("/tokens", status_code=201, responses=AUTH_RESPONSES)
async def mint_admin_token(
    request: Request, authorization: str | None = Header(default=None)
) -> dict[str, Any]:
    """An admin token (an hour) for ``Authorization: Bearer <telemetry.admin_key>``."""
    key = request.app.state.settings.telemetry.admin_key
    given = _bearer(authorization) or ""
    if key is None:
        raise HTTPException(403, "no admin key is configured (telemetry.admin_key)")
    if not hmac.compare_digest(given.encode(), key.get_secret_value().encode()):
        raise HTTPException(401, "the admin key is not valid")
    issuer: TokenIssuer = request.app.state.tokens
    token = issuer.mint(ANY_SESSION, ANY_SESSION, ADMIN, ttl_secs=ADMIN_TOKEN_TTL_SECS)
    return {"token": token.token, "role": ADMIN, "expires_at": token.expires_at}


@router.get("/sessions", responses=AUTH_RESPONSES)
async def recent_sessions(
    request: Request,
    limit: int = Query(default=50, ge=1, le=500),
    authorization: str | None = Header(default=None),
) -> dict[str, Any]:
    """The newest sessions (admin token)."""
    authorize(request, ANY_SESSION, authorization, roles=frozenset(), admin=True)
    store: Store = request.app.state.store
    return {
        "sessions": [
            {
                "session_id": s.id,
                "started_at": s.started_at.isoformat(),
                "ended_at": s.ended_at.isoformat() if s.ended_at else None,
                "turn_state": s.turn_state,
                "status": s.reconnect_status,
                "reconnects": s.reconnect_count,
                "cost": s.cost,
            }
            for s in await store.recent_sessions(limit)
        ]
    }


class DrainRequest(BaseModel):
    deadline_secs: float | None = Field(default=None, ge=0, le=86_400)
    """How long live sessions may go on; default ``server.drain_deadline_secs``."""


@router.post("/drain", status_code=202, responses=AUTH_RESPONSES)
async def start_drain(
    request: Request,
    body: DrainRequest | None = None,
    authorization: str | None = Header(default=None),
) -> dict[str, Any]:
    """Drain this process (admin token): no new session, live ones go on until they end
    or the deadline, then are closed for a restart (see parley.server.drain)."""
    authorize(request, ANY_SESSION, authorization, roles=frozenset(), admin=True)
    drain: Drain = request.app.state.drain
    drain.start(body.deadline_secs if body is not None else None, by="admin")
    return drain.status()


@router.get("/drain", responses=AUTH_RESPONSES)
async def drain_status(
    request: Request, authorization: str | None = Header(default=None)
) -> dict[str, Any]:
    """Whether this process drains, how many sessions are still live, time left."""
    authorize(request, ANY_SESSION, authorization, roles=frozenset(), admin=True)
    drain: Drain = request.app.state.drain
    return drain.status()
