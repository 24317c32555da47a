"""Twilio's incoming call at a fleet's control plane, in process: the control app
(``create_app(control=True)``, no engines) on a Redis of the test's own, with workers
the test announces itself. The signed webhook is dispatched to the freest worker, whose
media URL the TwiML names with a token bound to it; a full fleet or Redis down is an
apology and a hang-up; an unsigned webhook is 403; none of the refusals leaves a
session behind. (tests/test_e2e_fleet_phone.py runs it with real worker processes.)"""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from fake_twilio import (
    VOICE_PATH,
    WebhookRefused,
    incoming_call_params,
    place_call,
    send_voice_webhook,
    sign,
)
from inprocess_server import SECRET, InProcessServer, serve_app
from parley.config import Settings
from parley.server import create_app
from parley.server.tokens import TokenError, TokenIssuer
from parley.testing import RedisServer
from parley.transports.twilio_twiml import (
    SORRY_LINE,
    connect_stream,
    media_stream_url,
    say_sorry_and_hang_up,
)
from parley.transports.worker_registry import WorkerInfo, WorkerRegistry

pytestmark = pytest.mark.redis

served = contextlib.asynccontextmanager(serve_app)
AUTH_TOKEN = "twilio-auth-token-for-fleet-tests"


def test_twiml_streams_to_a_media_url_made_from_the_base_url() -> None:
    assert media_stream_url("https://w1.example.com") == (
        "wss://w1.example.com/v1/telephony/twilio/media"
    )
    assert (
        media_stream_url("http://10.0.0.5:8000/") == "ws://10.0.0.5:8000/v1/telephony/twilio/media"
    )
    assert media_stream_url("https://voice.example.com/parley/") == (
        "wss://voice.example.com/parley/v1/telephony/twilio/media"
    )
    stream = ET.fromstring(connect_stream('wss://h/p?"x"', "a&b")).find("./Connect/Stream")
    assert stream is not None and stream.get("url") == 'wss://h/p?"x"'
    assert [(p.get("name"), p.get("value")) for p in stream] == [("token", "a&b")]
    sorry = ET.fromstring(say_sorry_and_hang_up("Sorry & <bye>"))
    assert [child.tag for child in sorry] == ["Say", "Hangup"]
    assert sorry.findtext("Say") == "Sorry & <bye>"
    assert ET.fromstring(say_sorry_and_hang_up()).findtext("Say") == SORRY_LINE


@contextlib.asynccontextmanager
async def control_plane(tmp_path: Path) -> AsyncIterator[tuple[InProcessServer, RedisServer]]:
    redis = RedisServer()
    settings = Settings(
        server={"database_url": f"sqlite:///{tmp_path / 'parley.db'}", "token_secret": SECRET},
        telephony={"twilio": {"auth_token": AUTH_TOKEN}},
        fleet={"redis_url": redis.url},
    )
    try:
        async with served(create_app(settings, control=True)) as server:
            yield server, redis
    finally:
        redis.stop()


def worker(name: str, url: str, capacity: int, live: int) -> WorkerInfo:
    return WorkerInfo(name, url, capacity, live)


def is_sorry(response: httpx.Response) -> bool:
    root = ET.fromstring(response.text)
    return (
        response.status_code == 200
        and "xml" in response.headers["content-type"]
        and [child.tag for child in root] == ["Say", "Hangup"]
    )


async def signed_webhook(server: InProcessServer) -> httpx.Response:
    params = incoming_call_params()
    signature = sign(AUTH_TOKEN, server.http + VOICE_PATH, params)
    return await send_voice_webhook(server.http, params, signature=signature)


async def test_a_signed_call_is_streamed_to_the_freest_worker_with_a_token_bound_to_it(
    tmp_path: Path,
) -> None:
    async with control_plane(tmp_path) as (server, redis):
        registry = WorkerRegistry.from_url(redis.url, expiry_secs=30)
        await registry.announce(worker("w-busy", "https://busy.example.com", 4, 3))
        await registry.announce(worker("w-free", "https://free.example.com", 4, 1))
        stream = await place_call(server.http, AUTH_TOKEN, from_number="+15550001111")
        assert stream.url == "wss://free.example.com/v1/telephony/twilio/media"
        token = stream.parameters["token"]
        granted = TokenIssuer(SECRET, 60, worker_id="w-free").verify(token, None)
        assert granted.worker == "w-free"
        # The worker the call was not sent to refuses the stream's token.
        with pytest.raises(TokenError) as refused:
            TokenIssuer(SECRET, 60, worker_id="w-busy").verify(token, None)
        assert refused.value.status == 403
        record = await server.app.state.store.get_session(granted.session_id)
        assert record.call_sid == stream.call_sid and record.user_id == "+15550001111"
        assert await registry.assigned(granted.session_id) == "w-free"
        await registry.close()


async def test_a_full_fleet_or_redis_down_is_an_apology_and_an_unsigned_call_403(
    tmp_path: Path,
) -> None:
    async with control_plane(tmp_path) as (server, redis):
        store = server.app.state.store
        registry = WorkerRegistry.from_url(redis.url, expiry_secs=30)
        assert is_sorry(await signed_webhook(server))  # no worker at all
        await registry.announce(worker("w1", "http://w1.local:8000", 2, 2))
        assert is_sorry(await signed_webhook(server))  # every place taken
        await registry.close()
        params = incoming_call_params()
        for signature in (None, sign("another-account", server.http + VOICE_PATH, params)):
            refused = await send_voice_webhook(server.http, params, signature=signature)
            assert refused.status_code == 403
        with pytest.raises(WebhookRefused):
            await place_call(server.http, "wrong-token")
        redis.stop()
        assert is_sorry(await signed_webhook(server))
        assert not await store.recent_sessions()  # no refusal left a session behind
