"""A server safe to expose, over HTTP: API keys for creating sessions, a per-client rate
limit, bounded consent, revoked tokens of ended sessions, refresh capped at the
session's maximum duration, TURN credentials for user tokens only."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from parley.config import Settings
from parley.server import create_app
from parley.server.access import CreationRateLimiter
from parley.store.models import SessionRecord

SECRET = "exposure-secret-0123456789abcdef0123456789"


@asynccontextmanager
async def api_client(
    tmp_path: Any, client: tuple[str, int] = ("203.0.113.7", 50000), **server: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    settings = Settings(
        server={
            "database_url": f"sqlite:///{tmp_path / 'api.db'}",
            "token_secret": SECRET,
            **server,
        },
        webrtc={
            "ice_servers": [{"urls": ["turn:turn.example"], "username": "u", "credential": "c"}]
        },
    )
    # No voice session is opened here, so no models are loaded.
    app = create_app(settings, engines=object())  # type: ignore[arg-type]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://parley") as http:
            yield http, app


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_with_api_keys_set_creating_a_session_needs_one(tmp_path):
    async with api_client(tmp_path, api_keys=["backend-key-1", "backend-key-2"]) as (http, _):
        r = await http.post("/v1/sessions", json={})
        assert r.status_code == 401 and "API key" in r.json()["detail"]
        assert r.headers["WWW-Authenticate"] == "Bearer"
        r = await http.post("/v1/sessions", json={}, headers=bearer("backend-key-3"))
        assert r.status_code == 401
        r = await http.post("/v1/sessions", json={}, headers=bearer("backend-key-2"))
        assert r.status_code == 201
        # The session's own token does the rest; the key is not needed there.
        created = r.json()
        r = await http.get(
            f"/v1/sessions/{created['session_id']}", headers=bearer(created["token"])
        )
        assert r.status_code == 200


async def test_without_api_keys_the_local_default_stays_open(tmp_path):
    async with api_client(tmp_path) as (http, _):
        assert (await http.post("/v1/sessions", json={})).status_code == 201


async def test_one_client_creating_sessions_too_fast_gets_429_with_retry_after(tmp_path):
    async with api_client(tmp_path, session_create_burst=3, session_create_rate=0.5) as (
        http,
        app,
    ):
        codes = [(await http.post("/v1/sessions", json={})).status_code for _ in range(5)]
        assert codes == [201, 201, 201, 429, 429]
        r = await http.post("/v1/sessions", json={})
        assert r.status_code == 429 and "too many sessions" in r.json()["detail"]
        assert 1 <= int(r.headers["Retry-After"]) <= 2
        # Another address has its own allowance.
        transport = httpx.ASGITransport(app=app, client=("198.51.100.9", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://parley") as other:
            assert (await other.post("/v1/sessions", json={})).status_code == 201


def test_the_rate_limiter_refills_over_time():
    now = [0.0]
    limiter = CreationRateLimiter(rate=2.0, burst=2, clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(2)] == [0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5)
    now[0] += 0.5
    assert limiter.take("a") == 0.0
    assert CreationRateLimiter(rate=0, burst=1).take("a") == 0.0  # 0: no limit


async def test_an_oversized_consent_object_is_refused(tmp_path):
    async with api_client(tmp_path, max_consent_bytes=256) as (http, _):
        consent = {f"purpose_{i}": True for i in range(40)}
        r = await http.post("/v1/sessions", json={"consent": consent})
        assert r.status_code == 422 and "consent" in r.json()["detail"]
        r = await http.post("/v1/sessions", json={"consent": {"store_transcripts": True}})
        assert r.status_code == 201


async def test_tokens_of_an_ended_session_are_refused_everywhere(tmp_path):
    async with api_client(tmp_path) as (http, app):
        created = (await http.post("/v1/sessions", json={})).json()
        sid, headers = created["session_id"], bearer(created["token"])
        assert (await http.get(f"/v1/sessions/{sid}", headers=headers)).status_code == 200
        await app.state.store.end_session(sid)
        calls = [
            http.get(f"/v1/sessions/{sid}", headers=headers),
            http.post(f"/v1/sessions/{sid}/tokens", json={}, headers=headers),
            http.get(f"/v1/sessions/{sid}/timeline", headers=headers),
            http.delete(f"/v1/sessions/{sid}", headers=headers),
            http.post(
                f"/v1/sessions/{sid}/webrtc", json={"sdp": "v=0", "type": "offer"}, headers=headers
            ),
        ]
        for call in calls:
            r = await call
            assert r.status_code == 401, (r.request.url, r.text)
            assert "ended" in r.json()["detail"]


async def test_a_deleted_sessions_token_is_refused(tmp_path):
    async with api_client(tmp_path) as (http, _):
        created = (await http.post("/v1/sessions", json={})).json()
        sid, headers = created["session_id"], bearer(created["token"])
        assert (await http.delete(f"/v1/sessions/{sid}", headers=headers)).status_code == 204
        r = await http.post(f"/v1/sessions/{sid}/tokens", json={}, headers=headers)
        assert r.status_code == 404


async def _age_session(app: Any, sid: str, secs: float) -> None:
    async with app.state.store.db.session() as s:
        record = await s.get(SessionRecord, sid)
        record.started_at = datetime.now(UTC) - timedelta(seconds=secs)


async def test_refresh_stops_at_the_sessions_maximum_duration(tmp_path):
    async with api_client(tmp_path, max_session_secs=120, token_ttl_secs=600) as (http, app):
        created = (await http.post("/v1/sessions", json={})).json()
        sid = created["session_id"]
        # Even the first token ends with the session.
        assert created["expires_at"] - time.time() <= 120
        await _age_session(app, sid, 100)
        r = await http.post(f"/v1/sessions/{sid}/tokens", json={}, headers=bearer(created["token"]))
        assert r.status_code == 201
        fresh = r.json()
        assert fresh["expires_at"] - time.time() <= 21  # what is left of the 120 s
        await _age_session(app, sid, 121)
        r = await http.post(f"/v1/sessions/{sid}/tokens", json={}, headers=bearer(fresh["token"]))
        assert r.status_code == 401 and "maximum duration" in r.json()["detail"]
        r = await http.get(f"/v1/sessions/{sid}", headers=bearer(fresh["token"]))
        assert r.status_code == 401


async def test_turn_credentials_only_with_a_user_token(tmp_path):
    async with api_client(tmp_path) as (http, app):
        created = (await http.post("/v1/sessions", json={})).json()
        sid = created["session_id"]
        agent = app.state.tokens.mint(sid, created["room_id"], "agent").token
        offer = {"sdp": "v=0", "type": "offer"}
        r = await http.post(f"/v1/sessions/{sid}/webrtc", json=offer)
        assert r.status_code == 401 and "credential" not in r.text
        r = await http.post(f"/v1/sessions/{sid}/webrtc", json=offer, headers=bearer(agent))
        assert r.status_code == 403 and "credential" not in r.text
        # A user token gets past the check; this offer is refused as SDP, with a safe
        # message (no parser text).
        r = await http.post(
            f"/v1/sessions/{sid}/webrtc", json=offer, headers=bearer(created["token"])
        )
        assert r.status_code == 400
        assert r.json()["detail"] == (
            "invalid SDP offer: it could not be parsed, or it has no audio section"
        )
