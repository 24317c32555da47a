"""Phone calls in a fleet of real processes on 127.0.0.1: ``parley control`` and two
``parley worker``s (one place each) on one PostgreSQL database and a Redis of the test's
own, Twilio played by the protocol-exact fake (tests/fake_twilio.py).

Twilio's signed webhook goes to the control plane, which has no media endpoint: it
answers TwiML whose ``<Stream url>`` is the freest worker's media WebSocket. The fake
Twilio streams real speech there (μ-law 8 kHz, in real time) and the worker answers it;
the same stream presented to the other worker is refused (4403: its token names the
worker it was sent to). A full fleet and Redis down are an apology and a hang-up in
TwiML, with no session left behind; an unsigned webhook is 403."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest

from conftest import (
    ARTIFACTS,
    ROOT,
    TOKEN_SECRET,
    _create_postgres_database,
    _drop_postgres_database,
)
from fake_twilio import (
    VOICE_PATH,
    FakeTwilioCall,
    TwimlStream,
    incoming_call_params,
    place_call,
    send_voice_webhook,
    sign,
)
from fleet_helpers import fleet_env, registry_until
from parley.server.tokens import TokenIssuer
from parley.store import Database, Store
from parley.testing import RedisServer, ServerProcess
from parley.transports.worker_registry import WorkerInfo, WorkerRegistry

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.postgres]

AUTH_TOKEN = "twilio-auth-token-for-the-fleet-0123"
QUESTION = "What is the capital city of France"


@dataclass
class Fleet:
    control: ServerProcess
    workers: dict[str, ServerProcess]
    redis: RedisServer
    registry: WorkerRegistry
    store: Store

    async def until(
        self, check: Callable[[dict[str, WorkerInfo]], bool], timeout: float = 10.0
    ) -> dict[str, WorkerInfo]:
        return await registry_until(self.registry, check, timeout)

    def media_url(self, worker: str) -> str:
        return f"ws://127.0.0.1:{self.workers[worker].port}/v1/telephony/twilio/media"


def env_of(database_url: str, redis_url: str) -> dict[str, str]:
    return fleet_env(
        database_url,
        redis_url,
        PARLEY_TELEPHONY__TWILIO__AUTH_TOKEN=AUTH_TOKEN,
    )


@pytest.fixture(scope="module")
async def fleet() -> AsyncIterator[Fleet]:
    database_url = await _create_postgres_database()
    redis = RedisServer()
    env = env_of(database_url, redis.url)
    specs: dict[str, tuple[dict[str, str], str]] = {
        name: (
            {**env, "PARLEY_FLEET__WORKER_ID": name, "PARLEY_SERVER__MAX_SESSIONS": "1"},
            "worker",
        )
        for name in ("worker-a", "worker-b")
    }
    specs["control"] = (env, "control")
    # Started side by side: each waits for its models or its database on its own.
    results = await asyncio.gather(
        *(
            asyncio.to_thread(
                ServerProcess,
                proc_env,
                ARTIFACTS / f"fleet-phone-{name}.log",
                cwd=ROOT,
                command=cmd,
            )
            for name, (proc_env, cmd) in specs.items()
        ),
        return_exceptions=True,
    )
    started = [r for r in results if isinstance(r, ServerProcess)]
    database = Database(database_url)
    registry = WorkerRegistry.from_url(redis.url)
    try:
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise failed[0]
        procs = dict(zip(specs, results, strict=True))
        control = procs.pop("control")
        assert isinstance(control, ServerProcess)
        workers = {name: p for name, p in procs.items() if isinstance(p, ServerProcess)}
        yield Fleet(control, workers, redis, registry, Store(database))
    finally:
        await registry.close()
        await database.close()
        for proc in started:
            if proc.proc.poll() is None:
                proc.stop()
        redis.stop()
        await _drop_postgres_database(database_url)


async def signed_webhook(fleet: Fleet, params: dict[str, str]) -> httpx.Response:
    signature = sign(AUTH_TOKEN, fleet.control.http + VOICE_PATH, params)
    return await send_voice_webhook(fleet.control.http, params, signature=signature)


def is_apology(response: httpx.Response) -> bool:
    """TwiML that says sorry and hangs up (200: Twilio plays only a 2xx answer)."""
    if response.status_code != 200 or "xml" not in response.headers["content-type"]:
        return False
    root = ET.fromstring(response.text)
    return [c.tag for c in root] == ["Say", "Hangup"] and "call again" in (root[0].text or "")


async def calls_stored(fleet: Fleet) -> set[str | None]:
    return {s.call_sid for s in await fleet.store.recent_sessions()}


async def ended(fleet: Fleet, session_id: str) -> bool:
    stored = await fleet.store.get_session(session_id)
    return stored is not None and stored.ended_at is not None


async def quiet(phone: FakeTwilioCall, secs: float = 1.0) -> None:
    """Until the agent has been silent ``secs`` (a phone line has no state events)."""
    async with asyncio.timeout(60):
        while True:
            last = max((a.at for a in phone.audio if a.level_dbfs() > -40), default=0.0)
            if asyncio.get_running_loop().time() - last >= secs:
                return
            await asyncio.sleep(0.1)


async def timeline(fleet: Fleet, session_id: str, token: str) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=fleet.control.http, timeout=10) as http:
        r = await http.get(f"/v1/sessions/{session_id}/timeline", headers=auth)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_a_call_is_sent_to_a_worker_answered_there_and_refused_by_the_other(
    fleet: Fleet, caller: Callable[..., np.ndarray]
) -> None:
    await fleet.until(lambda f: len(f) == 2 and all(w.live == 0 for w in f.values()), 20)
    stream = await place_call(fleet.control.http, AUTH_TOKEN, from_number="+15550100001")
    # Both workers free: the first by id. The TwiML names its media WebSocket.
    assert stream.url == fleet.media_url("worker-a")
    token = stream.parameters["token"]
    granted = TokenIssuer(TOKEN_SECRET, 60).verify(token, None)
    assert granted.worker == "worker-a"
    stored = await fleet.store.get_session(granted.session_id)
    assert stored is not None and stored.call_sid == stream.call_sid
    assert stored.user_id == "+15550100001"

    # The same stream (token, CallSid) presented to the other worker: refused at start.
    elsewhere = TwimlStream(fleet.media_url("worker-b"), stream.parameters, stream.call_sid)
    async with FakeTwilioCall(elsewhere, auth_token=AUTH_TOKEN) as intruder:
        await asyncio.wait_for(intruder.closed.wait(), 10)
    assert intruder.close_code == 4403
    assert not intruder.audio

    async with FakeTwilioCall(stream, auth_token=AUTH_TOKEN) as phone:
        await phone.wait_for("mark", timeout=30)  # the greeting was heard
        await quiet(phone)
        sent = await phone.say(caller(QUESTION))
        await phone.wait_for("mark", timeout=60, after=sent)
        assert phone.first_loud_audio_after(sent) is not None  # a spoken reply, in μ-law
        assert not phone.errors, phone.errors  # every message in Twilio's format
        assert fleet.workers["worker-a"].health()["sessions"] == 1
        assert fleet.workers["worker-b"].health()["sessions"] == 0
        async with asyncio.timeout(20):
            while True:
                record = await timeline(fleet, granted.session_id, token)
                if record["turns"] and record["turns"][0]["state"] == "completed":
                    break
                await asyncio.sleep(0.2)
        assert "capital" in (record["turns"][0]["user_text"] or "").lower()

        # The next call goes to the worker with a free place; once it is live too, the
        # fleet is full: the caller hears an apology and nobody is charged a session.
        await fleet.until(lambda f: f["worker-a"].live == 1)
        second = await place_call(fleet.control.http, AUTH_TOKEN)
        assert second.url == fleet.media_url("worker-b")
        async with FakeTwilioCall(second, auth_token=AUTH_TOKEN) as other:
            await other.wait_for("media", timeout=30)  # its greeting
            await fleet.until(lambda f: all(w.live == 1 for w in f.values()))
            full = incoming_call_params()
            assert is_apology(await signed_webhook(fleet, full))
            assert full["CallSid"] not in await calls_stored(fleet)
            await other.hang_up()
        await phone.hang_up()
    async with asyncio.timeout(10):  # the hang-up ended the session on the worker
        while not await ended(fleet, granted.session_id):  # noqa: ASYNC110
            await asyncio.sleep(0.1)


async def test_unsigned_calls_are_refused_and_redis_down_is_an_apology_until_it_returns(
    fleet: Fleet,
) -> None:
    await fleet.until(lambda f: len(f) == 2 and all(w.free for w in f.values()), 20)
    params = incoming_call_params()
    wrong = sign("another-account-token", fleet.control.http + VOICE_PATH, params)
    for signature in (None, wrong):
        refused = await send_voice_webhook(fleet.control.http, params, signature=signature)
        assert refused.status_code == 403 and "Signature" in refused.json()["detail"]

    fleet.redis.stop()
    down = incoming_call_params()
    assert is_apology(await signed_webhook(fleet, down))
    assert down["CallSid"] not in await calls_stored(fleet)
    fleet.redis.start()  # back empty: the workers' next beats fill it again
    await fleet.until(lambda f: len(f) == 2)
    stream = await place_call(fleet.control.http, AUTH_TOKEN)
    assert stream.url in {fleet.media_url(w) for w in fleet.workers}
    assert params["CallSid"] not in await calls_stored(fleet)
