"""A phone call's minutes are on its session's cost: a fake Twilio (the exact Media
Streams protocol) calls a real server on test-double engines; the stream's duration,
billed in Twilio's whole minutes, lands on the session record and in ``/metrics``."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import httpx
import pytest

from fake_twilio import FakeTwilioCall, place_call
from inprocess_server import serve_doubles
from test_metrics import parse, value

AUTH_TOKEN = "twilio-auth-token-for-tests-0123"
PER_MINUTE = 0.0085

served = contextlib.asynccontextmanager(serve_doubles)


async def test_a_phone_calls_minutes_are_billed_on_its_session(tmp_path: Path) -> None:
    async with served(
        f"sqlite:///{tmp_path / 'parley.db'}",
        telephony={"twilio": {"auth_token": AUTH_TOKEN}},
        costs={
            "prices": [
                {"provider": "twilio", "telephony_per_minute": PER_MINUTE, "round_up_secs": 60}
            ]
        },
    ) as server:
        stream = await place_call(server.http, AUTH_TOKEN)
        sid = str(server.app.state.tokens.verify(stream.parameters["token"], None).session_id)
        store = server.app.state.store
        loop = asyncio.get_running_loop()
        async with FakeTwilioCall(stream, f"ws://127.0.0.1:{server.port}") as phone:
            connected_at = loop.time()
            await asyncio.sleep(1.5)
            await phone.hang_up()
        hung_up_at = loop.time()
        async with asyncio.timeout(10):
            while (record := await store.get_session(sid)).cost is None:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=server.http) as http:
            samples = parse((await http.get("/metrics")).text)
    cost = record.cost
    (call,) = [i for i in cost["items"] if i["stage"] == "telephony"]
    assert (call["provider"], call["model"], call["requests"]) == ("twilio", "inbound", 1)
    # From the stream's start to its stop, as the server saw them (the client's clock
    # brackets it, give or take the messages' way through the server).
    assert 1.0 <= call["seconds"] <= hung_up_at - connected_at + 1.0
    assert call["cost"] == pytest.approx(PER_MINUTE)  # billed as Twilio's whole minute
    assert cost["total"] == pytest.approx(PER_MINUTE) and cost["complete"] is True
    labels = {"stage": "telephony", "provider": "twilio", "model": "inbound"}
    seconds = value(samples, "parley_usage_audio_seconds_total", **labels)
    assert seconds == pytest.approx(call["seconds"], abs=0.001)  # the record rounds to ms
    assert value(samples, "parley_cost_total", currency="USD", **labels) == pytest.approx(
        PER_MINUTE
    )
