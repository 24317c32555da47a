"""Phone calls that end and transfer, end to end: the fake Twilio of tests/fake_twilio.py
places the call and streams the caller's speech; tests/fake_twilio_rest.py is Twilio's
REST API (HTTP Basic auth, form-encoded call updates, Twilio's JSON answers and errors);
tests/handoff_receiver.py receives the handoff webhook. The server is the real app on
the embedded STT/TTS/VAD/end-of-turn models, served over real sockets; only the model's
words come from a scripted OpenAI-compatible server (tests/fake_llm_provider.py), so the
agent's envelope (``end_call``) is fixed.

What must hold: pressing 0 makes the caller hear the transfer line, then the webhook
gets the signed transcript, then — only then — Twilio gets ``<Dial>`` with the transfer
number; with Twilio's API failing the call stays with the agent, which goes on
answering; an ``end_call`` envelope hangs the call up through the API once the goodbye
was heard (and closes the stream itself when the API fails)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fake_llm_provider import ProviderScript, fake_provider
from fake_twilio import DEFAULT_ACCOUNT_SID, FakeTwilioCall, TwimlStream, new_sid, place_call
from fake_twilio_rest import FakeTwilioRest, RestRequest, dialled, fake_twilio_rest
from handoff_receiver import handoff_receiver
from inprocess_server import SECRET, InProcessServer, serve_app
from parley.config import Settings
from parley.engines import Engines
from parley.engines.llm_openai import OpenAICompatibleLLM
from parley.server import create_app
from parley.testing import free_port
from parley.transports.handoff_webhook import sign, verify_signature
from parley.transports.twilio_calls import TwilioCallError, TwilioCalls

pytestmark = pytest.mark.e2e

served = contextlib.asynccontextmanager(serve_app)
AUTH_TOKEN = "twilio-auth-token-for-handoff-tests"
ACCOUNT_SID = DEFAULT_ACCOUNT_SID
TRANSFER_TO = "+15557654321"
WEBHOOK_SECRET = "handoff-webhook-secret-0123456789"
QUESTION = "What is the capital city of France"
ANSWER = "The capital of France is Paris."
GOODBYE = json.dumps({"spoken_text": "Goodbye.", "escalate": False, "end_call": True})
LOUD_DBFS = -40.0
TRANSFER_LINE = "Connecting you to a colleague now."  # handoff.transfer_line's default


@dataclasses.dataclass
class LaggingCall(FakeTwilioCall):
    """Twilio playing what it receives ``lag`` seconds late (the network and its jitter
    buffer on the way): the server's real-time pacing then no longer says when the
    caller heard something — only the echoed marks do."""

    lag: float = 0.3

    async def _handle(self, now: float, msg: dict[str, Any]) -> None:
        if msg["event"] == "clear":
            await super()._handle(now, msg)
            return
        await super()._handle(now + self.lag, msg)
        # Arrival times stay true; only the playing is late.
        if msg["event"] == "media":
            self.audio[-1].at = now
        else:
            self.marks[-1] = (now, self.marks[-1][1])


@contextlib.asynccontextmanager
async def phone_server(
    engines: Engines,
    tmp_path: Path,
    reply: str,
    rest: FakeTwilioRest,
    *,
    webhook_url: str | None = None,
    tools: bool = False,
    account_sid: str | None = ACCOUNT_SID,
) -> AsyncIterator[InProcessServer]:
    """The app with Twilio's REST API at ``rest``, a transfer number, the handoff webhook
    at ``webhook_url``, and a remote LLM answering ``reply`` (an envelope when ``tools``:
    the voice loop asks for envelopes only when the agent has tools)."""
    with fake_provider(ProviderScript([reply])) as llm_url:
        settings = Settings(
            server={"database_url": f"sqlite:///{tmp_path / 'parley.db'}", "token_secret": SECRET},
            telephony={
                "twilio": {
                    "auth_token": AUTH_TOKEN,
                    "account_sid": account_sid,
                    "api_base_url": rest.url,
                    "transfer_number": TRANSFER_TO,
                }
            },
            handoff={"webhook_url": webhook_url, "webhook_secret": WEBHOOK_SECRET},
            llm={"provider": "openai", "base_url": llm_url, "model": "scripted"},
            # No greeting (./parley.toml has one): the caller's first words must not
            # race it into a barge-in, and the agent says nothing unasked.
            agent={"greeting": "", "tools_module": "booking_tools:registry" if tools else None},
        )
        remote = OpenAICompatibleLLM(settings.llm)
        try:
            app = create_app(settings, engines=dataclasses.replace(engines, llm=remote))
            async with served(app) as server:
                yield server
        finally:
            await remote.aclose()


async def open_call(
    server: InProcessServer, rest: FakeTwilioRest
) -> tuple[TwimlStream, FakeTwilioCall, str]:
    """Ring the server (the call known to the REST fake too): the stream, the connected
    media stream (not yet entered) and the session id."""
    stream = await place_call(server.http, AUTH_TOKEN, account_sid=ACCOUNT_SID)
    rest.add_call(stream.call_sid)
    phone = LaggingCall(stream, f"ws://127.0.0.1:{server.port}")
    granted = server.app.state.tokens.verify(stream.parameters["token"], None)
    return stream, phone, str(granted.session_id)


def stop_stream_on_update(rest: FakeTwilioRest, phone: FakeTwilioCall) -> None:
    """As Twilio does: a call redirected (``<Dial>``) or ended stops its media stream."""
    loop = asyncio.get_running_loop()

    def stop(call: Any, request: RestRequest) -> None:
        asyncio.run_coroutine_threadsafe(phone.hang_up(), loop)

    rest.on_update = stop


async def record_of(server: InProcessServer, session_id: str) -> dict[str, Any]:
    from parley.server.sessions_api import session_record

    return await session_record(server.app.state.store, session_id)


async def wait_record(
    server: InProcessServer, session_id: str, done: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    async with asyncio.timeout(20):
        while not done(record := await record_of(server, session_id)):  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    return record


async def wait_ended(server: InProcessServer, session_id: str) -> None:
    """Until the session is ended in the store (its tokens are dead)."""
    store = server.app.state.store
    async with asyncio.timeout(20):
        while (await store.get_session(session_id)).ended_at is None:  # noqa: ASYNC110
            await asyncio.sleep(0.1)


def stages(record: dict[str, Any]) -> list[str]:
    return [e["stage"] for e in record["events"]]


def last_loud(phone: FakeTwilioCall) -> float:
    return max((a.at for a in phone.audio if a.level_dbfs() > LOUD_DBFS), default=0.0)


async def answered(phone: FakeTwilioCall, speech: np.ndarray) -> float:
    """Say ``speech``; once the agent's spoken answer was heard (its first mark came
    back and it has been quiet a second), the loop time it started arriving."""
    loop = asyncio.get_running_loop()
    sent = await phone.say(speech)
    await phone.wait_for("mark", timeout=60, after=sent)
    first = phone.first_loud_audio_after(sent, LOUD_DBFS)
    assert first is not None, "no spoken answer"
    async with asyncio.timeout(60):
        while loop.time() - last_loud(phone) < 1.0:  # noqa: ASYNC110 - no event for silence
            await asyncio.sleep(0.1)
    return first


async def wait_update(rest: FakeTwilioRest, call_sid: str, timeout: float = 60) -> RestRequest:
    async with asyncio.timeout(timeout):
        while not rest.updates(call_sid):  # noqa: ASYNC110 - the fake's thread has no hook
            await asyncio.sleep(0.05)
    (update,) = rest.updates(call_sid)
    return update


def loud_audio_between(phone: FakeTwilioCall, start: float, end: float) -> list[Any]:
    return [a for a in phone.audio if start <= a.at <= end and a.level_dbfs() > LOUD_DBFS]


# ---- the REST client and the signature, without a call ----------------------------------------


async def test_the_rest_client_talks_to_the_configured_api_and_fails_clearly() -> None:
    with fake_twilio_rest(ACCOUNT_SID, AUTH_TOKEN) as rest:
        call_sid = new_sid("CA")
        rest.add_call(call_sid)
        calls = TwilioCalls(ACCOUNT_SID, AUTH_TOKEN, api_base_url=rest.url)
        await calls.transfer(call_sid, TRANSFER_TO)
        await calls.hang_up(call_sid)
        dial, hang_up = rest.requests
        path = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{call_sid}.json"
        assert dial.path == hang_up.path == path and dial.authorized
        assert dialled(dial.form["Twiml"]) == TRANSFER_TO and "Status" not in dial.form
        assert hang_up.form == {"Status": "completed"}
        # An ended call, an unknown call, a wrong token, Twilio down, nobody listening:
        # each a TwilioCallError saying what happened.
        with pytest.raises(TwilioCallError) as ended:
            await calls.transfer(call_sid, TRANSFER_TO)
        assert (ended.value.status, ended.value.code) == (400, 21220)
        with pytest.raises(TwilioCallError) as unknown:
            await calls.hang_up(new_sid("CA"))
        assert (unknown.value.status, unknown.value.code) == (404, 20404)
        intruder = TwilioCalls(ACCOUNT_SID, "not-the-token", api_base_url=rest.url)
        with pytest.raises(TwilioCallError) as refused:
            await intruder.hang_up(call_sid)
        assert refused.value.status == 401
        rest.fail_with = 500
        with pytest.raises(TwilioCallError) as down:
            await calls.hang_up(call_sid)
        assert down.value.status == 500
    closed = TwilioCalls(ACCOUNT_SID, AUTH_TOKEN, api_base_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(TwilioCallError) as unreachable:
        await closed.hang_up(call_sid)
    assert unreachable.value.status is None and "could not reach twilio" in str(unreachable.value)


def test_a_tampered_body_a_wrong_secret_or_an_old_timestamp_fail_verification() -> None:
    body = json.dumps({"session_id": "s-1", "transcript": []}).encode()
    now = int(time.time())
    ts = str(now)
    header = sign(WEBHOOK_SECRET, ts, body)
    assert verify_signature(WEBHOOK_SECRET, ts, body, header)
    assert not verify_signature(WEBHOOK_SECRET, ts, body.replace(b"s-1", b"s-2"), header)
    assert not verify_signature("another-secret", ts, body, header)
    assert not verify_signature(WEBHOOK_SECRET, str(now + 1), body, header)  # ts is signed
    old = str(now - 3600)
    assert not verify_signature(WEBHOOK_SECRET, old, body, sign(WEBHOOK_SECRET, old, body))
    assert not verify_signature(WEBHOOK_SECRET, "not-a-number", body, header)
    assert not verify_signature(WEBHOOK_SECRET, ts, body, header.replace("sha256=", "sha1="))


# ---- calls ------------------------------------------------------------------------------------


async def test_the_handoff_key_says_the_line_posts_the_transcript_then_dials(
    embedded_engines: Engines, caller: Callable[..., np.ndarray], tmp_path: Path
) -> None:
    with fake_twilio_rest(ACCOUNT_SID, AUTH_TOKEN) as rest, handoff_receiver() as hook:
        async with phone_server(
            embedded_engines, tmp_path, ANSWER, rest, webhook_url=hook.url
        ) as server:
            stream, phone, sid = await open_call(server, rest)
            async with phone:
                stop_stream_on_update(rest, phone)
                await answered(phone, caller(QUESTION))
                pressed = asyncio.get_running_loop().time()
                await phone.send_dtmf("0")
                dial = await wait_update(rest, stream.call_sid, timeout=30)
                await asyncio.wait_for(phone.closed.wait(), 10)  # Twilio stopped the stream
                assert not phone.errors, phone.errors
            await wait_ended(server, sid)
            record = await wait_record(server, sid, lambda r: "handoff.accepted" in stages(r))
            # What the caller heard between the key and the dial: the transfer line.
            line = loud_audio_between(phone, pressed, dial.at)
            assert sum(a.duration for a in line) >= 1.0, "the transfer line was not heard"
            # ... and all of it had played out before the call was redirected.
            assert max(a.plays_at + a.duration for a in line) <= dial.at + 0.05
            pcm = np.concatenate([np.frombuffer(a.pcm, "<i2") for a in line])
            said = await embedded_engines.stt.transcribe(pcm.astype(np.float32) / 32768)
            assert "colleague" in said.text.lower(), said.text

    assert dialled(dial.form["Twiml"]) == TRANSFER_TO and "Status" not in dial.form
    (delivery,) = hook.deliveries
    assert delivery.at < dial.at  # the person has the transcript before the phone rings
    timestamp = delivery.headers["x-parley-timestamp"]
    signature = delivery.headers["x-parley-signature"]
    assert verify_signature(WEBHOOK_SECRET, timestamp, delivery.body, signature)
    payload = json.loads(delivery.body)
    assert payload["session_id"] == sid and payload["call_sid"] == stream.call_sid
    assert payload["by"] == "caller" and "pressed 0" in payload["reason"]
    assert payload["transfer_to"] == TRANSFER_TO
    lines = payload["transcript"]
    assert [line["role"] for line in lines] == ["caller", "agent", "agent"], lines
    assert "capital" in lines[0]["text"].lower()
    assert lines[1:] == [{"role": "agent", "text": t} for t in (ANSWER, TRANSFER_LINE)]
    assert "pressed 0" in payload["summary"] and "1 caller turn" in payload["summary"]
    events = {e["stage"]: e for e in record["events"]}
    assert events["handoff.requested"]["data"]["by"] == "caller"
    accepted = events["handoff.accepted"]["data"]
    assert accepted["by"] == "phone_transfer" and accepted["reason"].endswith("4321")
    assert TRANSFER_TO not in json.dumps(record["events"])  # the last digits only


async def test_with_twilios_api_down_the_call_stays_with_the_agent(
    embedded_engines: Engines,
    caller: Callable[..., np.ndarray],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    with fake_twilio_rest(ACCOUNT_SID, AUTH_TOKEN) as rest:
        rest.fail_with = 500
        async with phone_server(embedded_engines, tmp_path, ANSWER, rest) as server:
            stream, phone, sid = await open_call(server, rest)
            async with phone:
                await asyncio.sleep(0.3)
                await phone.send_dtmf("0")
                async with asyncio.timeout(30):
                    while not rest.requests:  # noqa: ASYNC110 - the fake's thread has no hook
                        await asyncio.sleep(0.05)
                await asyncio.sleep(0.3)
                # The agent still answers, and the stream stays open.
                await answered(phone, caller(QUESTION))
                assert not phone.closed.is_set() and not phone.errors
            record = await wait_record(
                server, sid, lambda r: any(t["state"] == "completed" for t in r["turns"])
            )
    (attempt,) = rest.requests
    assert attempt.status == 500 and dialled(attempt.form["Twiml"]) == TRANSFER_TO
    failures = [r for r in caplog.records if r.getMessage().startswith("phone transfer failed")]
    assert failures and failures[0].levelno == logging.ERROR
    fields = failures[0].fields  # type: ignore[attr-defined]
    assert fields["status"] == 500 and fields["call_sid"] == stream.call_sid
    assert AUTH_TOKEN not in repr([vars(r) for r in caplog.records])
    assert "handoff.requested" in stages(record) and "handoff.accepted" not in stages(record)
    # The caller was told, and the call is the agent's again (they may ask again).
    (returned,) = [e for e in record["events"] if e["stage"] == "handoff.returned"]
    assert returned["data"]["by"] == "phone_transfer"
    assert returned["data"]["reason"] == "transfer failed"
    (turn,) = record["turns"]
    assert "capital" in (turn["user_text"] or "").lower() and turn["state"] == "completed"


async def test_without_api_credentials_the_handoff_waits_for_a_supervisor(
    embedded_engines: Engines, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with fake_twilio_rest(ACCOUNT_SID, AUTH_TOKEN) as rest:
        async with phone_server(
            embedded_engines, tmp_path, ANSWER, rest, account_sid=None
        ) as server:
            _, phone, sid = await open_call(server, rest)
            async with phone:
                await asyncio.sleep(0.3)
                pressed = asyncio.get_running_loop().time()
                await phone.send_dtmf("0")
                record = await wait_record(server, sid, lambda r: "handoff.requested" in stages(r))
                await asyncio.sleep(1.5)  # the transfer line would have started by now
                assert not loud_audio_between(phone, pressed, asyncio.get_running_loop().time())
                assert not phone.closed.is_set()
    assert not rest.requests
    (impossible,) = [r for r in caplog.records if "transfer impossible" in r.getMessage()]
    assert impossible.levelno == logging.ERROR
    assert "handoff.accepted" not in stages(record)


async def test_end_call_hangs_up_through_the_api_once_the_goodbye_was_heard(
    embedded_engines: Engines,
    caller: Callable[..., np.ndarray],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    bye = caller("Thank you, that is all I needed")
    with fake_twilio_rest(ACCOUNT_SID, AUTH_TOKEN) as rest:
        async with phone_server(embedded_engines, tmp_path, GOODBYE, rest, tools=True) as server:
            # Twilio's API down: Parley closes the stream itself (nothing follows
            # <Connect><Stream> in the call's TwiML: Twilio ends the call).
            rest.fail_with = 500
            stream, phone, failed_sid = await open_call(server, rest)
            async with phone:
                sent = await phone.say(bye)
                await asyncio.wait_for(phone.closed.wait(), 60)
            assert phone.close_code == 1000
            assert phone.first_loud_audio_after(sent, LOUD_DBFS) is not None
            (attempt,) = rest.requests
            assert attempt.status == 500 and attempt.form == {"Status": "completed"}
            assert any(r.getMessage().startswith("twilio hang-up failed") for r in caplog.records)
            await wait_ended(server, failed_sid)

            # Twilio's API up: the call is hung up through it.
            rest.fail_with = None
            stream, phone, sid = await open_call(server, rest)
            async with phone:
                stop_stream_on_update(rest, phone)
                sent = await phone.say(bye)
                hang_up = await wait_update(rest, stream.call_sid)
                await asyncio.wait_for(phone.closed.wait(), 10)
            await wait_ended(server, sid)
            record = await wait_record(server, sid, lambda r: "call.ending" in stages(r))

    assert hang_up.form == {"Status": "completed"} and hang_up.status == 200
    goodbye = loud_audio_between(phone, sent, hang_up.at)
    assert sum(a.duration for a in goodbye) >= 0.3, "the goodbye was not heard"
    # The hang-up came once the goodbye had played, not while it was still playing.
    assert max(a.plays_at + a.duration for a in goodbye) <= hang_up.at + 0.05
    assert any(at <= hang_up.at for at, _ in phone.echoed)
    (turn,) = record["turns"]
    assert turn["state"] == "completed" and turn["result"]["envelope"]["end_call"] is True
    assert "call.ending" in stages(record)
