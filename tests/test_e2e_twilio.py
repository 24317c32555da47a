"""Phone calls through Twilio Media Streams, end to end: a fake Twilio (tests/fake_twilio.py)
that speaks the exact protocol posts a signed webhook, follows the TwiML to the media
socket and streams real speech as μ-law 8 kHz in real time, echoing marks as Twilio
does — against the real server on the embedded models. And every bad input: unsigned
or wrongly signed webhooks, streams without or with a forged token, malformed media,
unknown events — each refused or skipped, another call unaffected."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from fake_twilio import (
    FakeTwilioCall,
    TwimlStream,
    WebhookRefused,
    incoming_call_params,
    new_sid,
    place_call,
    send_voice_webhook,
    sign,
)
from inprocess_server import SECRET, InProcessServer, serve_app
from parley.config import Settings
from parley.engines import Engines
from parley.server import create_app

pytestmark = pytest.mark.e2e

served = contextlib.asynccontextmanager(serve_app)
AUTH_TOKEN = "twilio-auth-token-for-tests-0123"
QUESTION = "What is the capital city of France"
FINAL = ("completed", "interrupted", "failed", "cancelled")


@contextlib.asynccontextmanager
async def phone_server(
    embedded: Engines, tmp_path: Path, **agent: Any
) -> AsyncIterator[InProcessServer]:
    settings = Settings(
        server={"database_url": f"sqlite:///{tmp_path / 'parley.db'}", "token_secret": SECRET},
        telephony={"twilio": {"auth_token": AUTH_TOKEN}},
        agent=agent,
    )
    async with served(create_app(settings, engines=embedded)) as server:
        yield server


def ws_base(server: InProcessServer) -> str:
    return f"ws://127.0.0.1:{server.port}"


async def call(server: InProcessServer, **kw: Any) -> TwimlStream:
    return await place_call(server.http, AUTH_TOKEN, **kw)


def session_of(server: InProcessServer, stream: TwimlStream) -> str:
    return str(server.app.state.tokens.verify(stream.parameters["token"], None).session_id)


async def record_of(server: InProcessServer, session_id: str) -> dict[str, Any]:
    from parley.server.sessions_api import session_record

    return await session_record(server.app.state.store, session_id)


async def wait_record(
    server: InProcessServer, session_id: str, done: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The session's record once ``done`` holds (the recorder writes in the background)."""
    async with asyncio.timeout(20):
        while not done(record := await record_of(server, session_id)):  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    return record


async def reply_done(phone: FakeTwilioCall, quiet_secs: float = 1.2) -> None:
    """Until the agent has been silent ``quiet_secs`` (a phone line has no state events)."""
    async with asyncio.timeout(60):
        while True:
            last = max((a.at for a in phone.audio if a.level_dbfs() > -40), default=0.0)
            if asyncio.get_running_loop().time() - last >= quiet_secs:
                return
            await asyncio.sleep(0.1)


async def ended(server: InProcessServer, session_id: str) -> bool:
    stored = await server.app.state.store.get_session(session_id)
    return stored is not None and stored.ended_at is not None


async def test_a_call_is_answered_in_mulaw_and_ends_cleanly_on_hang_up(
    embedded_engines: Engines, caller: Callable[..., np.ndarray], tmp_path: Path
) -> None:
    async with phone_server(embedded_engines, tmp_path) as server:
        stream = await call(server, from_number="+15551234567")
        assert stream.url == f"ws://127.0.0.1:{server.port}/v1/telephony/twilio/media"
        session_id = session_of(server, stream)
        stored = await server.app.state.store.get_session(session_id)
        assert stored.user_id == "+15551234567" and stored.call_sid == stream.call_sid
        async with FakeTwilioCall(stream, ws_base(server)) as phone:
            sent = await phone.say(caller(QUESTION))
            await phone.wait_for("mark", timeout=60, after=sent)
            answered_at = phone.first_loud_audio_after(sent)
            assert answered_at is not None  # a spoken reply, in μ-law, came back
            assert not phone.errors, phone.errors  # every message was Twilio's format
            await reply_done(phone)
            await phone.send_dtmf("5")
            await asyncio.sleep(0.5)
            # Hang up while the next turn is being answered: that turn is cancelled.
            await phone.say(caller("Tell me a short joke about computers"))
            await phone.wait_for("media", timeout=60, after=asyncio.get_running_loop().time())
            await phone.hang_up()
        record = await wait_record(
            server,
            session_id,
            lambda r: len(r["turns"]) >= 2 and r["turns"][1]["state"] in FINAL,
        )
        async with asyncio.timeout(10):
            while not await ended(server, session_id):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        first, second = record["turns"][0], record["turns"][1]
        assert "capital" in (first["user_text"] or "").lower() and first["state"] == "completed"
        assert second["state"] == "cancelled"
        stages = [e["stage"] for e in record["events"]]
        assert "dtmf" in stages and "handoff.requested" not in stages
        # The server takes the next call.
        stream = await call(server)
        async with FakeTwilioCall(stream, ws_base(server)) as phone:
            sent = await phone.say(caller(QUESTION))
            await phone.wait_for("mark", timeout=60, after=sent)
            assert phone.first_loud_audio_after(sent) is not None


async def test_barge_in_clears_twilios_audio_and_keeps_what_the_marks_say_was_heard(
    embedded_engines: Engines, caller: Callable[..., np.ndarray], tmp_path: Path
) -> None:
    greeting = (
        "Hello and welcome to Parley. I can help you book a table, order a coffee, "
        "or answer a question. Please tell me what you would like to do today."
    )
    async with phone_server(embedded_engines, tmp_path, greeting=greeting) as server:
        stream = await call(server)
        async with FakeTwilioCall(stream, ws_base(server)) as phone:
            await phone.wait_for("mark", timeout=30)  # the greeting's first sentence heard
            await phone.say(caller("Stop please, I want to order a coffee"))
            cleared_at, _ = await phone.wait_for("clear", timeout=30)
            await asyncio.sleep(0.3)
            assert phone.clears
            # Nothing sent before the clear plays after it.
            before = [a for a in phone.audio if a.at < cleared_at]
            assert any(a.cleared for a in before)  # Twilio held audio, and dropped it
            assert all(a.cleared or a.plays_at <= cleared_at + 0.02 for a in before)
            heard_marks = [name for at, name in phone.echoed if at < cleared_at]
            assert heard_marks
        sid = session_of(server, stream)
        async with asyncio.timeout(10):
            while not await ended(server, sid):  # noqa: ASYNC110
                await asyncio.sleep(0.1)


async def test_the_handoff_key_asks_for_a_person(embedded_engines: Engines, tmp_path: Path) -> None:
    async with phone_server(embedded_engines, tmp_path) as server:
        stream = await call(server)
        async with FakeTwilioCall(stream, ws_base(server)) as phone:
            await asyncio.sleep(0.3)
            await phone.send_dtmf("0")
            sid = session_of(server, stream)
            record = await wait_record(
                server,
                sid,
                lambda r: any(e["stage"] == "handoff.requested" for e in r["events"]),
            )
        (request,) = [e for e in record["events"] if e["stage"] == "handoff.requested"]
        assert "pressed 0" in request["data"]["reason"]


async def test_webhooks_without_a_valid_signature_are_refused_and_create_nothing(
    embedded_engines: Engines, tmp_path: Path
) -> None:
    async with phone_server(embedded_engines, tmp_path) as server:
        params = incoming_call_params()
        url = f"{server.http}/v1/telephony/twilio/voice"
        for signature in (None, "", sign("another-account-token", url, params), "bm90IGl0"):
            response = await send_voice_webhook(server.http, params, signature=signature)
            assert response.status_code == 403, signature
            assert "Signature" in response.json()["detail"]
        # Signed, but for other fields than those sent: refused too.
        tampered = {**params, "From": "+10000000000"}
        response = await send_voice_webhook(
            server.http, tampered, signature=sign(AUTH_TOKEN, url, params)
        )
        assert response.status_code == 403
        assert not await server.app.state.store.recent_sessions()
        with pytest.raises(WebhookRefused):
            await place_call(server.http, "wrong-token")


async def test_bad_streams_are_closed_and_bad_media_skipped_without_hurting_another_call(
    embedded_engines: Engines, tmp_path: Path
) -> None:
    async with phone_server(embedded_engines, tmp_path) as server:
        good = await call(server)
        other = await call(server)
        async with FakeTwilioCall(good, ws_base(server)) as phone:
            # A stream without a token, with a forged one, with another call's token, or
            # for a session that does not exist: closed before any session opens.
            stranger = server.app.state.tokens.mint("no-such-session", "room-x", "user").token
            cases = [
                (4401, {}, good.call_sid),  # no token
                (4401, {"token": "forged.token.value"}, good.call_sid),
                (4403, {"token": other.parameters["token"]}, good.call_sid),  # another call's
                (4404, {"token": stranger}, new_sid("CA")),  # a session that does not exist
            ]
            for code, parameters, call_sid in cases:
                bad = TwimlStream(good.url, parameters, call_sid)
                async with FakeTwilioCall(bad, ws_base(server)) as intruder:
                    await asyncio.wait_for(intruder.closed.wait(), 10)
                assert intruder.close_code == code, (code, parameters)
            # Malformed messages on the good call: skipped, the call goes on.
            ms = phone.stream_sid
            media = {"track": "inbound", "chunk": "1", "timestamp": "1"}
            for junk in (
                "not json",
                json.dumps({"event": "media", "streamSid": ms, "media": {"payload": "***"}}),
                json.dumps({"event": "media", "streamSid": ms, "media": {**media, "payload": ""}}),
                json.dumps({"event": "launch", "streamSid": ms}),
            ):
                await phone.send_raw(junk)
            await phone.send_dtmf("7")
            sid = session_of(server, good)
            record = await wait_record(
                server, sid, lambda r: any(e["stage"] == "dtmf" for e in r["events"])
            )
            assert not phone.closed.is_set()
        assert [e["data"]["digit"] for e in record["events"] if e["stage"] == "dtmf"] == ["7"]
        async with httpx.AsyncClient(base_url=server.http) as http:
            assert (await http.get("/health")).status_code == 200
