"""A fleet of real processes on 127.0.0.1: ``parley control`` and two ``parley worker``s on
one PostgreSQL database and a Redis of the test's own. Sessions are dispatched to the
freest worker, a full fleet answers 503, a token works only on its worker, a worker that
is killed leaves the registry within its expiry and its session resumes on the other
worker from the database (a caller of its own accord, or a program that refreshes the
token by hand), and Redis down is a clear 503 until it returns."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from conftest import (
    ADMIN_KEY,
    ARTIFACTS,
    ROOT,
    _create_postgres_database,
    _drop_postgres_database,
)
from fleet_helpers import EXPIRY_SECS, fleet_env, registry_until
from parley.client import CallClient
from parley.testing import RedisServer, ServerProcess
from parley.transports.worker_registry import WorkerInfo, WorkerRegistry
from parley.webrtc_client import WebRTCCallClient
from voice_helpers import stored_record, wait_reply_done

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.postgres]

CAPACITY = 2


@dataclass
class Fleet:
    control: ServerProcess
    workers: dict[str, ServerProcess]
    redis: RedisServer
    registry: WorkerRegistry
    http: httpx.AsyncClient
    env: dict[str, str]
    started: list[ServerProcess]
    """Every process started, stopped at the end (a worker started again included)."""

    def start_worker(self, name: str) -> ServerProcess:
        self.workers[name] = start_worker(self.env, name)
        self.started.append(self.workers[name])
        return self.workers[name]

    async def until(
        self, check: Callable[[dict[str, WorkerInfo]], bool], timeout: float = 10.0
    ) -> dict[str, WorkerInfo]:
        return await registry_until(self.registry, check, timeout)


def env_of(database_url: str, redis_url: str) -> dict[str, str]:
    return fleet_env(
        database_url,
        redis_url,
        PARLEY_SERVER__READINESS_CACHE_SECS="0",
        PARLEY_TELEMETRY__ADMIN_KEY=ADMIN_KEY,
    )


def start_worker(env: dict[str, str], name: str) -> ServerProcess:
    return ServerProcess(
        {**env, "PARLEY_FLEET__WORKER_ID": name, "PARLEY_SERVER__MAX_SESSIONS": str(CAPACITY)},
        ARTIFACTS / f"fleet-{name}.log",
        cwd=ROOT,
        command="worker",
    )


@pytest.fixture(scope="module")
async def fleet() -> AsyncIterator[Fleet]:
    """One fleet for the module's tests, in order: those that kill worker-a start it
    again, but the last one."""
    database_url = await _create_postgres_database()
    redis = RedisServer()
    env = env_of(database_url, redis.url)
    started: list[ServerProcess] = []
    try:
        workers = {}
        for name in ("worker-a", "worker-b"):
            workers[name] = start_worker(env, name)
            started.append(workers[name])
        control = ServerProcess(env, ARTIFACTS / "fleet-control.log", cwd=ROOT, command="control")
        started.append(control)
        registry = WorkerRegistry.from_url(redis.url)
        async with httpx.AsyncClient(base_url=control.http, timeout=10) as http:
            yield Fleet(control, workers, redis, registry, http, env, started)
        await registry.close()
    finally:
        for proc in started:
            if proc.proc.poll() is None:
                proc.stop()
        redis.stop()
        await _drop_postgres_database(database_url)


async def create(fleet: Fleet) -> dict[str, Any]:
    r = await fleet.http.post("/v1/sessions", json={})
    assert r.status_code == 201, r.text
    return dict(r.json())


async def test_sessions_spread_by_free_places_and_a_full_fleet_answers_503(fleet: Fleet) -> None:
    found = await fleet.until(lambda f: len(f) == 2)
    for name, proc in fleet.workers.items():
        assert found[name].url == proc.http and found[name].capacity == CAPACITY

    calls: list[CallClient] = []
    placed: list[str] = []
    try:
        for n in range(2 * CAPACITY):
            session = await create(fleet)
            worker = fleet.workers[session["worker_id"]]
            assert session["websocket_url"].startswith(worker.ws_url + "?token=")
            assert session["webrtc_offer_url"] == (
                f"{worker.http}/v1/sessions/{session['session_id']}/webrtc"
            )
            call = CallClient(session["websocket_url"])
            await call.__aenter__()
            calls.append(call)
            placed.append(session["worker_id"])
            # The next choice is made on what the workers announce: wait for the beat.
            live = {name: placed.count(name) for name in fleet.workers}
            await fleet.until(lambda f, live=live: all(f[w].live == n for w, n in live.items()))
        # Each new session went to the worker with the most free places (ties: by id).
        assert placed == ["worker-a", "worker-b", "worker-a", "worker-b"]

        r = await fleet.http.post("/v1/sessions", json={})
        assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0
        assert r.json()["error"]["code"] == "fleet_full"

        # A token is for the worker it was dispatched to: the other one refuses it.
        first = calls[0]
        token = first.url.split("token=", 1)[1]
        sid = (await first.wait_for("session.started"))[1]["session_id"]
        auth = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(timeout=10) as http:
            ok = await http.get(f"{fleet.workers['worker-a'].http}/v1/sessions/{sid}", headers=auth)
            other = await http.get(
                f"{fleet.workers['worker-b'].http}/v1/sessions/{sid}", headers=auth
            )
        assert ok.status_code == 200
        assert other.status_code == 403 and "another worker" in other.json()["detail"]
        # Refreshed through the control plane while its worker lives: the same worker.
        r = await fleet.http.post(f"/v1/sessions/{sid}/tokens", json={}, headers=auth)
        assert r.status_code == 201 and r.json()["worker_id"] == "worker-a"
    finally:
        for call in calls:
            await call.__aexit__(None, None, None)
    # Places come back as calls end: the control plane dispatches again.
    await fleet.until(lambda f: all(w.live == 0 for w in f.values()), timeout=20)
    assert (await create(fleet))["worker_id"] == "worker-a"


async def test_redis_down_is_a_clear_503_and_the_fleet_recovers_when_it_returns(
    fleet: Fleet,
) -> None:
    await fleet.until(lambda f: len(f) == 2)
    fleet.redis.stop()
    r = await fleet.http.post("/v1/sessions", json={})
    assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0
    assert r.json()["error"]["code"] == "registry_unavailable"
    assert "Redis" in r.json()["detail"]
    ready = await fleet.http.get("/ready")
    assert ready.status_code == 503 and not ready.json()["checks"]["worker_registry"]["ok"]
    fleet.redis.start()  # back empty: the workers' next beats fill it again
    await fleet.until(lambda f: len(f) == 2)
    assert (await create(fleet))["worker_id"] in fleet.workers
    assert (await fleet.http.get("/ready")).status_code == 200
    # A caller given the control plane's address (`parley call --url`) talks to a worker.
    async with CallClient(fleet.control.ws_url) as call:
        _, started = await call.wait_for("session.started", timeout=20)
        assert call.session is not None and call.session["worker_id"] in fleet.workers
        assert started["session_id"] == call.session["session_id"]


async def test_callers_follow_their_session_to_the_other_worker_by_themselves(
    fleet: Fleet, caller
) -> None:
    """`parley call`'s client and the WebRTC client, both on worker-a, which is SIGKILLed
    mid-conversation: each notices the drop, refreshes its token through the control
    plane and lands on worker-b with no help, its event log going on; the next spoken
    turn is answered there with the history intact and no second greeting."""
    await fleet.until(lambda f: len(f) == 2 and all(w.live == 0 for w in f.values()), 20)
    # Made while no call is live (the registry counts connected calls): both sessions go
    # to the same worker, the first by id.
    rtc_session = await create(fleet)
    ws = CallClient(fleet.control.ws_url, reconnect=True)
    rtc = WebRTCCallClient(fleet.control.http, session=rtc_session, reconnect=True)
    loop = asyncio.get_running_loop()
    try:
        async with ws, rtc:
            assert ws.session is not None
            assert ws.session["worker_id"] == rtc_session["worker_id"] == "worker-a"
            _, greeted_at = await wait_reply_done(ws, after=0)
            await wait_reply_done(rtc, after=0)
            await ws.say(caller("What time does the store open tomorrow morning"))
            ended_at, ended = await ws.wait_for("turn.ended", after=greeted_at, timeout=20)
            await wait_reply_done(ws, after=ended_at)
            said = " ".join(e["text"] for e in ws.of_type("agent.text") if e["turn_id"] == 1)
            await stored_record(
                fleet.workers["worker-a"],
                ws,
                lambda r: r["turns"] and r["turns"][0]["state"] == "completed",
            )
            fleet.workers["worker-a"].kill()  # mid-conversation, no goodbye
            killed_at = loop.time()

            for client, turns in ((ws, 1), (rtc, 0)):
                _, back = await client.wait_for("client.reconnected", after=killed_at, timeout=30)
                _, started = await client.wait_for("session.started", after=killed_at)
                assert back["worker_id"] == "worker-b" and client.reconnects == 1
                assert client.session is not None and client.session["worker_id"] == "worker-b"
                assert started["resumed"] and started["turns"] == turns
                assert started["session_id"] == client.session_id()
                assert not client.closed.is_set()

            await ws.send_json({"type": "status"})
            _, status = await ws.wait_for("session.status", after=killed_at)
            assert [(m["role"], m["content"]) for m in status["history"]] == [
                ("user", ended["text"]),
                ("assistant", said),
            ]
            await asyncio.sleep(1.0)
            for client in (ws, rtc):
                again = [e for t, e in client.events if t > killed_at and e["type"] == "agent.text"]
                assert not again, "greeted a second time"
            await ws.say(caller("Can you tell me a fun fact about the moon"))
            _, nxt = await ws.wait_for("turn.ended", after=killed_at, timeout=20)
            assert nxt["turn_id"] == 2
            _, reply = await ws.wait_for(
                "agent.text", lambda e: e["turn_id"] == 2, after=killed_at, timeout=30
            )
            assert reply["text"]
    finally:
        if fleet.workers["worker-a"].proc.poll() is not None:
            fleet.start_worker("worker-a")  # for the test after this one


async def test_a_killed_workers_session_resumes_on_the_other_worker(fleet: Fleet, caller) -> None:
    await fleet.until(lambda f: len(f) == 2)
    session = await create(fleet)
    assert session["worker_id"] == "worker-a"
    first = CallClient(session["websocket_url"], session=session)
    async with first:
        _, greeted_at = await wait_reply_done(first, after=0)
        await first.say(caller("What time does the store open tomorrow morning"))
        ended_at, ended = await first.wait_for("turn.ended", after=greeted_at, timeout=20)
        await wait_reply_done(first, after=ended_at)
        await stored_record(
            fleet.workers["worker-a"],
            first,
            lambda r: r["turns"] and r["turns"][0]["state"] == "completed",
        )
        fleet.workers["worker-a"].kill()  # mid-conversation, no goodbye
        killed_at = time.monotonic()
        await asyncio.wait_for(first.closed.wait(), 10)
    await fleet.until(lambda f: set(f) == {"worker-b"}, timeout=EXPIRY_SECS + 5)
    assert time.monotonic() - killed_at <= EXPIRY_SECS + 1.5

    # The client reconnects through the control plane: dispatched to the live worker.
    sid = session["session_id"]
    auth = {"Authorization": f"Bearer {session['token']}"}
    r = await fleet.http.post(f"/v1/sessions/{sid}/tokens", json={}, headers=auth)
    assert r.status_code == 201, r.text
    again_session = r.json()
    assert again_session["worker_id"] == "worker-b"
    async with CallClient(again_session["websocket_url"]) as again:
        _, started = await again.wait_for("session.started")
        assert started["resumed"] and started["session_id"] == sid and started["turns"] == 1
        await again.send_json({"type": "status"})
        _, status = await again.wait_for("session.status")
        assert [m["role"] for m in status["history"]] == ["user", "assistant"]
        assert status["history"][0]["content"] == ended["text"]
        await asyncio.sleep(1.0)
        assert not again.of_type("agent.text"), "greeted a second time"
        await again.say(caller("Can you tell me a fun fact about the moon"))
        _, nxt = await again.wait_for("turn.ended", timeout=20)
        assert nxt["turn_id"] == 2


async def test_a_drained_worker_takes_nobody_new_and_its_callers_move_on(fleet: Fleet) -> None:
    """A worker drained through its admin API (as `parley drain` in its preStop hook):
    the registry says so at its next beat, the control plane sends new sessions to the
    other worker, and at the drain's deadline its live call is closed with the
    reconnectable 1012, after which the caller's client lands on the other worker."""
    if fleet.workers["worker-a"].proc.poll() is not None:
        fleet.start_worker("worker-a")  # the test before killed it
    await fleet.until(lambda f: len(f) == 2 and all(w.live == 0 for w in f.values()), 20)
    call = CallClient(fleet.control.ws_url, reconnect=True)
    loop = asyncio.get_running_loop()
    async with call:
        assert call.session is not None
        mine = call.session["worker_id"]
        other = ({"worker-a", "worker-b"} - {mine}).pop()
        await call.wait_for("session.started")
        worker = fleet.workers[mine]
        async with httpx.AsyncClient(base_url=worker.http, timeout=10) as http:
            minted = await http.post(
                "/v1/admin/tokens", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
            )
            assert minted.status_code == 201, minted.text
            auth = {"Authorization": f"Bearer {minted.json()['token']}"}
            r = await http.post("/v1/admin/drain", json={"deadline_secs": 2}, headers=auth)
            assert r.status_code in (200, 202), r.text
            drained_at = loop.time()
            await fleet.until(lambda f: f[mine].draining, timeout=5)
            # Nobody new: the control plane dispatches to the other worker...
            fresh = await create(fleet)
            assert fresh["worker_id"] == other
            # ...and the drained worker itself refuses a new session.
            assert (await http.post("/v1/sessions", json={})).status_code == 503
        # At the deadline the live call is closed for a restart, and moves on.
        _, back = await call.wait_for("client.reconnected", after=drained_at, timeout=30)
        _, started = await call.wait_for("session.started", after=drained_at)
        assert back["worker_id"] == other and call.reconnects == 1
        assert started["resumed"] and started["session_id"] == call.session_id()
        closes = [
            e for t, e in call.events if t > drained_at and e["type"] == "client.reconnecting"
        ]
        assert closes and closes[0].get("close_code") == 1012, closes


def test_fleet_commands_refuse_to_start_without_the_registry() -> None:
    for command in ("worker", "control"):
        done = subprocess.run(
            [sys.executable, "-m", "parley", command, "--port", "0"],
            capture_output=True,
            text=True,
            timeout=60,
            env={
                "PATH": "/usr/bin:/bin",
                "PARLEY_CONFIG": str(ROOT / "tests" / "parley.test.toml"),
            },
        )
        assert done.returncode != 0
        assert "fleet.redis_url" in done.stderr
