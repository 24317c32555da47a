"""The session inspector's API, access rules and terminal report, on an in-process server
(real WebSocket, store and transports; test-double engines)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from inprocess_server import one_turn_of_speech, serve_doubles
from parley.cli import main as cli_main
from parley.client import CallClient
from parley.inspect_report import format_inspection
from voice_helpers import wait_reply_done

ADMIN_KEY = "operator-key-for-tests-0123456789"


async def serve(tmp_path: Path, admin_key: str | None) -> AsyncIterator[str]:
    database = f"sqlite:///{tmp_path / 'parley.db'}"
    async for server in serve_doubles(database, telemetry={"admin_key": admin_key}):
        yield f"127.0.0.1:{server.port}"


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[str]:
    async for h in serve(tmp_path, ADMIN_KEY):
        yield h


async def one_conversation(host: str) -> dict[str, Any]:
    """A session with one answered turn; its session (id and user token)."""
    async with CallClient(f"ws://{host}/v1/ws") as call:
        await call.wait_for("session.started")
        await call.say(one_turn_of_speech())
        ended_at, _ = await call.wait_for("turn.ended", timeout=15)
        await wait_reply_done(call, after=ended_at)
        assert call.session is not None
        session = call.session
    await asyncio.sleep(0.3)  # the recorder's last writes
    return session


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_admin_tokens_need_the_admin_key(host: str) -> None:
    async with httpx.AsyncClient(base_url=f"http://{host}") as http:
        assert (await http.post("/v1/admin/tokens")).status_code == 401
        assert (await http.post("/v1/admin/tokens", headers=bearer("wrong"))).status_code == 401
        minted = await http.post("/v1/admin/tokens", headers=bearer(ADMIN_KEY))
        assert minted.status_code == 201 and minted.json()["role"] == "admin"


async def test_no_admin_key_means_no_admin(tmp_path: Path) -> None:
    async for h in serve(tmp_path, None):
        async with httpx.AsyncClient(base_url=f"http://{h}") as http:
            assert (await http.post("/v1/admin/tokens", headers=bearer("x"))).status_code == 403


async def test_the_inspection_shows_each_stage_of_a_turn(host: str) -> None:
    session = await one_conversation(host)
    sid, user_token = session["session_id"], session["token"]
    async with httpx.AsyncClient(base_url=f"http://{host}") as http:
        admin = (await http.post("/v1/admin/tokens", headers=bearer(ADMIN_KEY))).json()["token"]
        # A user token reads its own raw timeline, never the inspector.
        refused = await http.get(f"/v1/sessions/{sid}/inspection", headers=bearer(user_token))
        assert refused.status_code == 403
        assert (
            await http.get(f"/v1/sessions/{sid}/timeline", headers=bearer(user_token))
        ).status_code == 200
        # Only an admin lists sessions.
        assert (await http.get("/v1/admin/sessions", headers=bearer(user_token))).status_code == 403
        listed = (await http.get("/v1/admin/sessions", headers=bearer(admin))).json()["sessions"]
        assert sid in [s["session_id"] for s in listed]
        # The admin inspects any session, and reads any timeline.
        data = (await http.get(f"/v1/sessions/{sid}/inspection", headers=bearer(admin))).json()
        admin_timeline = await http.get(f"/v1/sessions/{sid}/timeline", headers=bearer(admin))
        assert admin_timeline.status_code == 200
    (turn,) = data["turns"]
    assert turn["state"] == "completed" and turn["user_text"] == "What time is it?"
    bars = {b["label"]: b for b in turn["bars"]}
    assert {
        "user speech",
        "end-of-turn wait",
        "stt (final)",
        "llm (to first token)",
        "tts (to first audio)",
    } <= set(bars)
    assert bars["user speech"]["start_ms"] < -500 and bars["user speech"]["end_ms"] == 0
    for bar in bars.values():
        assert bar["end_ms"] >= bar["start_ms"] and -5000 < bar["start_ms"] < 5000, bar
    marks = {m["label"]: m["at_ms"] for m in turn["marks"]}
    assert 0 < marks["turn confirmed"] <= marks["first audio sent"] < 5000
    assert marks["llm first token"] <= marks["first audio sent"]
    assert turn["voice_to_voice_ms"] == pytest.approx(marks["first audio sent"], abs=1)
    stages = [e["stage"] for e in data["session_events"]]
    assert stages[0] == "transport.connected" and "transport.disconnected" in stages

    text = format_inspection(data)
    assert "turn 1: completed" in text and "llm (to first token)" in text


async def test_parley_inspect_prints_the_waterfall(
    host: str, capsys: pytest.CaptureFixture[str]
) -> None:
    session = await one_conversation(host)
    args = ["inspect", session["session_id"], "--url", f"http://{host}", "--admin-key", ADMIN_KEY]
    await asyncio.to_thread(cli_main, args)
    out = capsys.readouterr().out
    assert f"session {session['session_id']}" in out
    assert "end-of-turn wait" in out and "first audio sent" in out


async def test_another_sessions_user_token_is_refused(host: str) -> None:
    first = await one_conversation(host)
    second = await one_conversation(host)
    async with httpx.AsyncClient(base_url=f"http://{host}") as http:
        cross = await http.get(
            f"/v1/sessions/{first['session_id']}/timeline", headers=bearer(second["token"])
        )
    assert cross.status_code == 403


async def test_the_inspector_page_is_served(host: str) -> None:
    async with httpx.AsyncClient(base_url=f"http://{host}") as http:
        for path in ("/inspect", "/inspect/some-session"):
            page = await http.get(path)
            assert page.status_code == 200 and "Session inspector" in page.text
        assert (await http.get("/inspect.js")).status_code == 200
