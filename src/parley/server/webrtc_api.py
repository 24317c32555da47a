"""WebRTC signalling: one HTTP exchange per connection, authorised by the session token.

``POST /v1/sessions/{id}/webrtc`` with the client's SDP offer answers the server's SDP
answer. A new offer for a session that already has a connection replaces it (the page
reconnecting after a drop); the conversation continues from the database."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Header, HTTPException, Request
from pydantic import BaseModel, Field

from parley.server.sessions_api import AUTH_RESPONSES, authorize, require_session
from parley.telemetry import get_logger
from parley.transports.admission import Admission
from parley.transports.webrtc.peer import WebRTCPeer

log = get_logger(__name__)

router = APIRouter(prefix="/v1/sessions", tags=["webrtc"])

ANSWER_TIMEOUT_SECS = 15.0


class SessionDescription(BaseModel):
    sdp: str = Field(min_length=1, max_length=100_000)
    type: Literal["offer"]


class SessionAnswer(BaseModel):
    sdp: str
    type: Literal["answer"]
    ice_servers: list[dict[str, object]]
    """The ICE servers the server uses (the page may use the same). TURN credentials are
    only ever handed out here, to the holder of the session's user token."""


@router.post(
    "/{session_id}/webrtc",
    response_model=SessionAnswer,
    responses={
        **AUTH_RESPONSES,
        400: {"description": "the SDP offer is malformed or has no audio"},
        404: {"description": "unknown session"},
        503: {
            "description": "the server has no room for another WebRTC connection, or for "
            "another session (error code server_full, with Retry-After)"
        },
    },
)
async def webrtc_offer(
    session_id: str,
    body: SessionDescription,
    request: Request,
    authorization: str | None = Header(default=None),
) -> SessionAnswer:
    """Connect a WebRTC client to the session: SDP offer in, SDP answer out."""
    granted = authorize(request, session_id, authorization)
    if granted.role != "user":
        raise HTTPException(403, f"a {granted.role} token cannot connect the user's audio")
    await require_session(request, session_id, granted)
    app = request.app
    admission: Admission = app.state.admission
    # ServerFull unless the session holds a place already (a reconnect) or one is free;
    # the peer registered below, with no await in between, holds it from now on.
    admission.check_connection(session_id)
    peers: dict[str, WebRTCPeer] = app.state.webrtc_peers
    previous = peers.pop(session_id, None)
    if previous is not None:
        # Told (``session_taken_over``) and closed; its voice session is closed before
        # the new peer's opens (the same rule as for the WebSocket, see voice_runtime).
        previous.take_over()
    if len(peers) >= app.state.settings.webrtc.max_peers:
        raise HTTPException(503, "too many WebRTC connections; try again later")
    peer = WebRTCPeer(app, session_id)
    peers[session_id] = peer
    try:
        answer = await asyncio.wait_for(peer.answer(body.sdp), ANSWER_TIMEOUT_SECS)
    except Exception as exc:  # aiortc raises assorted errors for bad SDP
        await peer.close("bad offer")
        # The parser's own words stay in the log: they describe the server's insides.
        log.info("webrtc offer refused", error=repr(exc))
        raise HTTPException(
            400, "invalid SDP offer: it could not be parsed, or it has no audio section"
        ) from None
    settings = app.state.settings.webrtc
    return SessionAnswer(
        sdp=answer.sdp,
        type="answer",
        ice_servers=[
            {
                "urls": s.urls,
                "username": s.username,
                "credential": s.credential.get_secret_value() if s.credential else None,
            }
            for s in settings.ice_servers
        ],
    )
