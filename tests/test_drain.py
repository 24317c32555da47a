"""Draining (issue 20, item 1): a draining process takes no new session (503 / 4503
``server_draining``, ``/ready`` 503 ``draining``), lets its live calls go on, closes the
ones still live at the deadline with 1012 ``server_restarting`` — the session is not
ended, a reconnect resumes it — and ``parley serve`` drains on SIGTERM, then exits 0.

The rules first, then the app on test-double engines (real HTTP and WebSocket), then a
real ``parley serve`` process sent SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from inprocess_server import InProcessServer, serve_doubles
from parley.client import CallClient
from parley.config import ServerSettings
from parley.testing import ServerProcess
from parley.transports.admission import Admission, ServerDraining, ServerFull
from test_admission import refused_connection

ADMIN_KEY = "drain-admin-key-0123456789abcdef"


def test_a_draining_process_admits_no_newcomer_but_a_live_session_reconnecting():
    state = SimpleNamespace(sessions={1: SimpleNamespace(session_id="a")}, webrtc_peers={})
    admission = Admission(state, ServerSettings(max_sessions=8))
    admission.check_new_session()
    admission.draining = True
    with pytest.raises(ServerDraining) as refused:
        admission.check_new_session()
    assert isinstance(refused.value, ServerFull)  # answered as a full server is: 503
    assert refused.value.code == "server_draining" and "draining" in str(refused.value)
    with pytest.raises(ServerDraining):
        admission.check_connection("b")
    admission.check_connection("a")  # the live session's own reconnect


@contextlib.asynccontextmanager
async def draining_app(tmp_path: Path) -> AsyncIterator[InProcessServer]:
    database = f"sqlite:///{tmp_path / 'parley.db'}"
    async for server in serve_doubles(database, telemetry={"admin_key": ADMIN_KEY}):
        yield server


async def admin(http: httpx.AsyncClient) -> dict[str, str]:
    minted = await http.post("/v1/admin/tokens", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    return {"Authorization": f"Bearer {minted.json()['token']}"}


async def test_a_drain_refuses_newcomers_serves_the_live_call_then_closes_it_for_a_restart(
    tmp_path: Path,
) -> None:
    async with (
        draining_app(tmp_path) as server,
        httpx.AsyncClient(base_url=server.http, timeout=10) as http,
        CallClient(server.ws_url) as call,
    ):
        await call.send_json({"type": "status"})
        first, _ = await call.wait_for("session.status", timeout=10)
        waiting = (await http.post("/v1/sessions", json={})).json()  # not connected yet
        assert (await http.post("/v1/admin/drain", json={})).status_code == 401

        started = await http.post(
            "/v1/admin/drain", json={"deadline_secs": 1.5}, headers=await admin(http)
        )
        assert started.status_code == 202, started.text
        assert started.json()["draining"] and started.json()["live"] == 1

        response = await http.post("/v1/sessions", json={})
        assert response.status_code == 503 and response.headers["Retry-After"] == "5"
        assert response.json()["error"]["code"] == "server_draining"
        ready = await http.get("/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        event, code = await refused_connection(server, waiting["token"])
        assert (event["code"], code) == ("server_draining", 4503)

        # The live call goes on until the deadline...
        await call.send_json({"type": "status"})
        await call.wait_for("session.status", after=first + 1e-6, timeout=10)
        assert call.close_code is None
        # ...then is closed for a restart, its session intact.
        await call.wait_for("error", lambda e: e["code"] == "server_restarting", timeout=10)
        await asyncio.wait_for(call.closed.wait(), timeout=10)
        assert call.close_code == 1012
        await server.wait_until(lambda: server.app.state.drain.drained.is_set())
        status = (await http.get("/v1/admin/drain", headers=await admin(http))).json()
        assert status["drained"] and status["live"] == 0
        assert call.session is not None
        record = await http.get(
            f"/v1/sessions/{call.session['session_id']}",
            headers={"Authorization": f"Bearer {call.session['token']}"},
        )
        assert record.status_code == 200 and record.json()["ended_at"] is None


async def test_a_call_that_ends_during_the_drain_ends_it_before_the_deadline(
    tmp_path: Path,
) -> None:
    async with (
        draining_app(tmp_path) as server,
        httpx.AsyncClient(base_url=server.http, timeout=10) as http,
    ):
        async with CallClient(server.ws_url) as call:
            await call.send_json({"type": "status"})
            await call.wait_for("session.status", timeout=10)
            await http.post(
                "/v1/admin/drain", json={"deadline_secs": 600}, headers=await admin(http)
            )
            await call.send_json({"type": "end"})
            await asyncio.wait_for(call.closed.wait(), timeout=10)
            assert call.close_code == 1000
        await asyncio.wait_for(server.app.state.drain.drained.wait(), timeout=10)


async def test_parley_drain_wait_returns_once_the_last_call_has_ended(tmp_path: Path) -> None:
    """`parley drain --wait`, a Kubernetes preStop hook: it starts the drain through the
    admin API and returns only when nothing is live any more."""
    from parley.drain_client import drain

    async with draining_app(tmp_path) as server:
        async with CallClient(server.ws_url) as call:
            await call.send_json({"type": "status"})
            await call.wait_for("session.status", timeout=10)
            waiting = asyncio.create_task(
                asyncio.to_thread(
                    drain, server.http, ADMIN_KEY, deadline_secs=600, wait=True, poll_secs=0.05
                )
            )
            async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
                deadline = time.monotonic() + 10
                while (await http.post("/v1/sessions", json={})).status_code != 503:
                    assert time.monotonic() < deadline, "the drain did not start"
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            assert not waiting.done(), "returned while a call was live"
            await call.send_json({"type": "end"})
        status = await asyncio.wait_for(waiting, timeout=10)
        assert status["drained"] is True and status["live"] == 0
    with pytest.raises(SystemExit, match="refused"):
        async with draining_app(tmp_path) as server:
            await asyncio.to_thread(drain, server.http, "wrong-key", deadline_secs=None, wait=False)


@pytest.mark.e2e
def test_sigterm_drains_parley_serve_then_it_exits_cleanly(tmp_path: Path) -> None:
    server = ServerProcess(
        {
            "PARLEY_SERVER__DATABASE_URL": f"sqlite:///{tmp_path / 'parley.db'}",
            "PARLEY_SERVER__DRAIN_DEADLINE_SECS": "2",
            "PARLEY_AGENT__GREETING": "",
        },
        tmp_path / "server.log",
    )
    try:

        async def call_through_a_drain() -> int | None:
            async with (
                CallClient(server.ws_url) as call,
                httpx.AsyncClient(base_url=server.http, timeout=10) as http,
            ):
                await call.send_json({"type": "status"})
                await call.wait_for("session.status", timeout=20)
                server.drain()
                deadline = time.monotonic() + 10
                while (await http.post("/v1/sessions", json={})).status_code != 503:
                    assert time.monotonic() < deadline, "SIGTERM did not start a drain"
                    await asyncio.sleep(0.05)
                assert server.proc.poll() is None  # still serving its live call
                await call.wait_for("error", lambda e: e["code"] == "server_restarting")
                await asyncio.wait_for(call.closed.wait(), timeout=10)
                return call.close_code

        assert asyncio.run(call_through_a_drain()) == 1012
        assert server.proc.wait(timeout=30) == 0
    finally:
        server.stop()


class _StartupObject:
    """Made by the app's start-up, and kept as long as the app (a model, a tokenizer)."""


async def test_the_server_freezes_what_its_start_up_made(tmp_path: Path) -> None:
    """`parley serve` (the DrainingServer) puts what the lifespan made out of the
    collector's reach, so a full collection in a call never walks the models' objects."""
    import gc

    import uvicorn
    from fastapi import FastAPI

    from parley.server.drain import Drain
    from parley.server.draining_server import DrainingServer
    from parley.testing import free_port

    made: list[_StartupObject] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        made.append(_StartupObject())
        yield

    app = FastAPI(lifespan=lifespan)
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_config=None)
    server = DrainingServer(config, Drain(app, deadline_secs=1))
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()  # start-up failed: say how
                await asyncio.sleep(0.01)
        assert gc.get_freeze_count() > 0
        assert not any(isinstance(o, _StartupObject) for o in gc.get_objects())
    finally:
        server.should_exit = True
        await task
        gc.unfreeze()  # the rest of the suite runs as before
    assert made and any(isinstance(o, _StartupObject) for o in gc.get_objects())
