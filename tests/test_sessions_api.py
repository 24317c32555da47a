"""Session control plane over HTTP: creation, reading, token refresh, and every way a
token can be wrong (401/403 with a clear message)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import jwt
import pytest

from parley.config import Settings
from parley.server import create_app

SECRET = "test-secret-0123456789abcdef0123456789"


@pytest.fixture
async def api(tmp_path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        server={"database_url": f"sqlite:///{tmp_path / 'api.db'}", "token_secret": SECRET}
    )
    # No voice session is opened here, so no models are loaded: engines stay a placeholder.
    app = create_app(settings, engines=object())  # type: ignore[arg-type]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://parley") as client:
            yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def new_session(api: httpx.AsyncClient, **body: object) -> dict:
    r = await api.post("/v1/sessions", json=body)
    assert r.status_code == 201, r.text
    return r.json()


async def test_create_and_read_a_session(api):
    created = await new_session(api, user_id="alice", consent={"store_transcripts": True})
    assert created["role"] == "user" and created["room_id"] == f"room-{created['session_id']}"
    assert created["websocket_url"] == f"/v1/ws?token={created['token']}"
    assert 590 <= created["expires_at"] - time.time() <= 600
    r = await api.get(f"/v1/sessions/{created['session_id']}", headers=bearer(created["token"]))
    assert r.status_code == 200
    body = r.json()
    assert body["user_id"] == "alice" and body["consent"] == {"store_transcripts": True}
    assert body["reconnect_status"] == "new" and body["turn_state"] is None


async def test_refresh_gives_a_new_token_for_the_same_session(api):
    created = await new_session(api)
    r = await api.post(
        f"/v1/sessions/{created['session_id']}/tokens", json={}, headers=bearer(created["token"])
    )
    assert r.status_code == 201
    fresh = r.json()
    assert fresh["token"] != created["token"] and fresh["session_id"] == created["session_id"]
    r = await api.get(f"/v1/sessions/{created['session_id']}", headers=bearer(fresh["token"]))
    assert r.status_code == 200


async def test_missing_forged_and_expired_tokens_get_401(api):
    created = await new_session(api)
    sid = created["session_id"]
    r = await api.get(f"/v1/sessions/{sid}")
    assert r.status_code == 401 and "required" in r.json()["detail"]

    claims = jwt.decode(created["token"], options={"verify_signature": False})
    forged = jwt.encode(claims, "not-the-server-secret-0123456789abcdef", algorithm="HS256")
    r = await api.get(f"/v1/sessions/{sid}", headers=bearer(forged))
    assert r.status_code == 401 and "signature" in r.json()["detail"]

    expired = jwt.encode({**claims, "exp": int(time.time()) - 5}, SECRET, algorithm="HS256")
    r = await api.get(f"/v1/sessions/{sid}", headers=bearer(expired))
    assert r.status_code == 401 and "expired" in r.json()["detail"]

    r = await api.get(f"/v1/sessions/{sid}", headers=bearer("not.a.jwt"))
    assert r.status_code == 401 and "not valid" in r.json()["detail"]


async def test_other_session_and_wrong_role_get_403(api):
    mine = await new_session(api)
    theirs = await new_session(api)
    r = await api.get(f"/v1/sessions/{theirs['session_id']}", headers=bearer(mine["token"]))
    assert r.status_code == 403 and "another session" in r.json()["detail"]

    r = await api.post(
        f"/v1/sessions/{mine['session_id']}/tokens",
        json={"role": "supervisor"},
        headers=bearer(mine["token"]),
    )
    assert r.status_code == 403 and "cannot mint" in r.json()["detail"]


async def test_bad_requests_are_rejected_clearly(api):
    r = await api.post("/v1/sessions", json={"mode": "telepathy"})
    assert r.status_code == 422
    r = await api.post(
        "/v1/sessions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422


async def test_delete_erases_the_session_and_its_token_stops_working(api):
    mine = await new_session(api)
    other = await new_session(api)
    r = await api.delete(f"/v1/sessions/{mine['session_id']}", headers=bearer(other["token"]))
    assert r.status_code == 403
    r = await api.delete(f"/v1/sessions/{mine['session_id']}", headers=bearer(mine["token"]))
    assert r.status_code == 204
    r = await api.get(f"/v1/sessions/{mine['session_id']}", headers=bearer(mine["token"]))
    assert r.status_code == 404 and "unknown session" in r.json()["detail"]
    r = await api.delete(f"/v1/sessions/{mine['session_id']}", headers=bearer(mine["token"]))
    assert r.status_code == 404


async def test_retention_purges_old_transcripts_at_start_up(tmp_path):
    from datetime import UTC, datetime, timedelta

    from parley.store import Database, Store
    from parley.store.models import TranscriptSegment

    url = f"sqlite:///{tmp_path / 'retention.db'}"
    db = Database(url)
    await db.migrate()
    store = Store(db)
    session = await store.create_session()
    await store.add_segment(session.id, 1, 1, "ancient words")
    await store.add_segment(session.id, 1, 2, "fresh words")
    async with db.session() as s:
        old = await s.get(TranscriptSegment, 1)
        assert old is not None
        old.created_at = datetime.now(UTC) - timedelta(days=40)
    await db.close()

    settings = Settings(server={"database_url": url, "transcript_retention_days": 30})
    app = create_app(settings, engines=object())  # type: ignore[arg-type]
    async with app.router.lifespan_context(app):
        store = app.state.store
        for _ in range(50):
            if len(await store.segments(session.id)) == 1:
                break
            await asyncio.sleep(0.05)
        assert [s.text for s in await store.segments(session.id)] == ["fresh words"]


async def test_livekit_tokens_are_scoped_to_the_room_identity_and_role(tmp_path):
    lk_secret = "livekit-secret-0123456789abcdef0123456789"
    settings = Settings(
        server={"database_url": f"sqlite:///{tmp_path / 'lk.db'}", "token_secret": SECRET},
        livekit={"url": "wss://livekit.example", "api_key": "APIkey", "api_secret": lk_secret},
    )
    app = create_app(settings, engines=object())  # type: ignore[arg-type]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://parley") as client:
            created = (await client.post("/v1/sessions", json={"user_id": "alice"})).json()
            assert created["livekit_url"] == "wss://livekit.example"
            user = jwt.decode(created["livekit_token"], lk_secret, algorithms=["HS256"])
            assert user["sub"] == "alice" and user["iss"] == "APIkey"
            assert user["video"]["room"] == created["room_id"] and user["video"]["roomJoin"]
            assert user["video"]["canPublish"] and not user["video"].get("hidden", False)
            assert 590 <= user["exp"] - time.time() <= 600

            # A refreshed token comes with a fresh LiveKit token for the same identity.
            fresh = await client.post(
                f"/v1/sessions/{created['session_id']}/tokens",
                json={"role": "user"},
                headers=bearer(created["token"]),
            )
            assert fresh.status_code == 201
            again = jwt.decode(fresh.json()["livekit_token"], lk_secret, algorithms=["HS256"])
            assert again["sub"] == "alice" and again["video"]["room"] == created["room_id"]
    # A supervisor's LiveKit grants: listen hidden, never publish audio.
    from parley.server.livekit_tokens import grants_for

    grants = grants_for("supervisor", "room-x")
    assert grants.hidden and not grants.can_publish and grants.can_subscribe
    assert grants_for("agent", "room-x").agent
