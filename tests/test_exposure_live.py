"""A server safe to expose, over the real WebSocket (in-process server on test-double
engines): where the token may come from, ended sessions and their tokens, idle and
maximum durations, inbound audio bounded to real time, and failures that reach the
client as a code and a safe message while their details go to the log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from inprocess_server import (
    SECRET,
    FixedSTT,
    InProcessServer,
    LoudnessVAD,
    NoonLLM,
    SureEOU,
    ToneTTS,
    one_turn_of_speech,
    serve_app,
)
from parley.client import CallClient
from parley.config import Settings
from parley.engines import ChatMessage, EngineError, Engines
from parley.server import create_app
from parley.webrtc_client import WebRTCCallClient
from voice_helpers import flood

served = contextlib.asynccontextmanager(serve_app)

LEAKY_PROVIDER_ERROR = (
    "the LLM provider answered HTTP 500: upstream http://10.0.0.7:9000/v1 said "
    "'quota exceeded for org-internal-42'"
)


@pytest.fixture(autouse=True)
def _no_agent_file(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)  # no ./parley.toml: the defaults (no greeting)
    monkeypatch.delenv("PARLEY_CONFIG", raising=False)


@contextlib.asynccontextmanager
async def live_server(
    tmp_path: Any, llm: Any = None, vad: Any = None, **server: Any
) -> AsyncIterator[InProcessServer]:
    settings = Settings(
        server={
            "database_url": f"sqlite:///{tmp_path / 'parley.db'}",
            "token_secret": SECRET,
            **server,
        },
        turn={"preemptive_generation": False},
    )
    engines = Engines(
        stt=FixedSTT(),
        llm=llm or NoonLLM(),
        tts=ToneTTS(),
        vad=vad or LoudnessVAD(),
        eou=SureEOU(),
    )  # type: ignore[arg-type]
    async with served(create_app(settings, engines=engines)) as running:
        yield running


async def new_session(server: InProcessServer, **body: Any) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
        r = await http.post("/v1/sessions", json=body)
        assert r.status_code == 201, r.text
        return dict(r.json())


async def first_event_and_close(ws: Any) -> tuple[dict[str, Any], int | None]:
    event = json.loads(await asyncio.wait_for(ws.recv(), 10))
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), 10)
    return event, ws.close_code


# ---- where the token comes from -----------------------------------------------------------


async def test_the_token_may_come_as_a_subprotocol_or_a_first_message(tmp_path):
    async with live_server(tmp_path) as server:
        session = await new_session(server)
        async with connect(
            server.ws_url, subprotocols=["parley", f"parley.token.{session['token']}"]
        ) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == "parley"
            started = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert started["type"] == "session.started"
            assert started["session_id"] == session["session_id"]

        other = await new_session(server)
        async with connect(server.ws_url) as ws:
            await ws.send(json.dumps({"type": "auth", "token": other["token"]}))
            started = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert started["type"] == "session.started"
            assert started["session_id"] == other["session_id"]

        # The query string still works (older clients).
        async with connect(f"{server.ws_url}?token={session['token']}") as ws:
            started = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert started["type"] == "session.started"


# ---- ended sessions, idle and maximum durations -------------------------------------------


async def test_ending_a_session_revokes_its_tokens(tmp_path):
    async with live_server(tmp_path) as server:
        async with CallClient(server.ws_url) as call:
            await call.wait_for("session.started", timeout=10)
            assert call.session is not None
            await call.send_json({"type": "end"})
            await call.wait_for("session.ended", timeout=10)
            await asyncio.wait_for(call.closed.wait(), 10)
        token = call.session["token"]
        async with asyncio.timeout(5):
            while (  # noqa: ASYNC110 - the record is written as the connection ends
                await server.app.state.store.get_session(call.session["session_id"])
            ).ended_at is None:
                await asyncio.sleep(0.05)
        async with connect(f"{server.ws_url}?token={token}") as ws:
            error, code = await first_event_and_close(ws)
        assert (error["code"], code) == ("session_ended", 4410)
        async with httpx.AsyncClient(base_url=server.http) as http:
            r = await http.post(
                f"/v1/sessions/{call.session['session_id']}/tokens",
                json={},
                headers={"Authorization": f"Bearer {token}"},
            )
        assert r.status_code == 401


@pytest.mark.parametrize("how", ["end", "delete"])
async def test_ending_or_deleting_over_http_closes_the_live_connection(
    tmp_path: Any, caplog: Any, how: str
) -> None:
    async with live_server(tmp_path) as server:
        async with CallClient(server.ws_url) as call:
            await call.wait_for("session.started", timeout=10)
            assert call.session is not None
            sid, token = call.session["session_id"], call.session["token"]
            headers = {"Authorization": f"Bearer {token}"}
            async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
                if how == "end":
                    r = await http.post(f"/v1/sessions/{sid}/end", headers=headers)
                else:
                    r = await http.delete(f"/v1/sessions/{sid}", headers=headers)
                assert r.status_code == 204
                _, error = await call.wait_for("error", timeout=10)
                await asyncio.wait_for(call.closed.wait(), 10)
                assert error["code"] == "session_ended" and call.close_code == 4410
                r = await http.get(f"/v1/sessions/{sid}", headers=headers)
                assert r.status_code == (401 if how == "end" else 404)
        record = await server.app.state.store.get_session(sid)
        assert (record is None) == (how == "delete")
        assert record is None or record.ended_at is not None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_an_idle_session_is_closed_and_ended(tmp_path):
    async with live_server(tmp_path, idle_timeout_secs=1.0) as server:
        async with CallClient(server.ws_url) as call:  # it streams silence: no speech
            await call.wait_for("session.started", timeout=10)
            _, error = await call.wait_for("error", timeout=10)
            await asyncio.wait_for(call.closed.wait(), 10)
        assert error["code"] == "idle_timeout" and call.close_code == 4408
        assert call.session is not None
        record = await server.app.state.store.get_session(call.session["session_id"])
        assert record is not None and record.ended_at is not None


async def test_control_messages_and_speech_keep_a_session_from_idling(tmp_path):
    async with live_server(tmp_path, idle_timeout_secs=1.0) as server:
        async with CallClient(server.ws_url) as call:
            await call.wait_for("session.started", timeout=10)
            for _ in range(4):
                await asyncio.sleep(0.5)
                await call.send_json({"type": "ping"})
            call.say(one_turn_of_speech())
            await call.wait_for("agent.text", timeout=10)
            assert not call.of_type("error") and not call.closed.is_set()


async def test_a_session_is_closed_at_its_maximum_duration(tmp_path):
    async with live_server(tmp_path, max_session_secs=2.0) as server:
        async with CallClient(server.ws_url) as call:
            await call.wait_for("session.started", timeout=10)
            call.say(one_turn_of_speech())  # activity does not extend it
            _, error = await call.wait_for("error", timeout=10)
            await asyncio.wait_for(call.closed.wait(), 10)
        assert error["code"] == "session_expired" and call.close_code == 4410


@pytest.mark.parametrize("limit", ["idle", "maximum_age"])
async def test_a_webrtc_session_is_closed_at_its_limits_like_a_websocket(tmp_path, limit):
    # A WebRTC call takes a few seconds to set up on a busy machine: a maximum age that
    # lapses before the offer is answered would refuse the offer instead.
    settings = {"idle_timeout_secs": 1.0} if limit == "idle" else {"max_session_secs": 8.0}
    code = "idle_timeout" if limit == "idle" else "session_expired"
    async with live_server(tmp_path, **settings) as server:
        async with WebRTCCallClient(server.http) as call:  # the microphone sends silence
            await call.wait_for("session.started", timeout=10)
            _, error = await call.wait_for("error", timeout=10)
            await asyncio.wait_for(call.closed.wait(), 10)
            assert call.session is not None
            session_id, token = call.session["session_id"], call.session["token"]
        assert error["code"] == code
        await server.wait_until(lambda: server.voice_sessions == 0)
        record = await server.app.state.store.get_session(session_id)
        assert record is not None and record.ended_at is not None
        async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
            refreshed = await http.post(
                f"/v1/sessions/{session_id}/tokens",
                json={},
                headers={"Authorization": f"Bearer {token}"},
            )
        assert refreshed.status_code == 401  # the ended session's token is revoked


class StuckVAD(LoudnessVAD):
    """Hears fine for a while, then times out like a stuck inference lane."""

    def __init__(self) -> None:
        self.windows = 0

    def stream(self) -> StuckVAD:
        return self

    async def probability(self, window: Any) -> float:
        self.windows += 1
        if self.windows > 20:
            raise TimeoutError
        return await super().probability(window)


async def test_a_deaf_session_is_closed_not_left_connected(tmp_path):
    async with live_server(tmp_path, vad=StuckVAD()) as server:
        async with CallClient(server.ws_url) as call:
            await call.wait_for("session.started", timeout=10)
            _, error = await call.wait_for("error", timeout=10)
            await asyncio.wait_for(call.closed.wait(), 10)
        assert error["code"] == "internal_error" and "TimeoutError" not in error["message"]
        assert call.close_code == 1011
        assert call.session is not None
        record = await server.app.state.store.get_session(call.session["session_id"])
        assert record is not None and record.ended_at is None  # a reconnect resumes it


# ---- inbound audio bounded to real time ---------------------------------------------------


async def _turn_latency(call: CallClient) -> float:
    """Seconds from the caller's last speech frame to the agent's first reply audio."""
    sent = await call.say(one_turn_of_speech())
    at, _ = await call.wait_for("agent.text", after=sent, timeout=20)
    return at - sent


async def _flood(server: InProcessServer, token: str) -> tuple[list[dict[str, Any]], int | None]:
    """Send silence at 10x real time until the server closes; its events and close code."""
    return await flood(server.ws_url, token, bytes(640), timeout=15)


@pytest.mark.usefixtures("frozen_heap")
async def test_audio_at_ten_times_real_time_is_refused_without_starving_others(tmp_path):
    async with live_server(tmp_path) as server:
        async with CallClient(server.ws_url) as steady:
            await steady.wait_for("session.started", timeout=10)
            baseline = await _turn_latency(steady)
            flooder = await new_session(server)
            flood = asyncio.create_task(_flood(server, flooder["token"]))
            await asyncio.sleep(0.3)  # the flood is under way (past its burst allowance)
            during = await _turn_latency(steady)
            events, close_code = await flood
        errors = [e for e in events if e["type"] == "error"]
        assert errors and all(e["code"] == "audio_too_fast" for e in errors)
        assert len(errors) <= 2  # one when dropping starts, one at the close: not per frame
        assert close_code == 4429
        # The other session's turn is not slowed beyond noise.
        assert during < baseline + 0.3, (baseline, during)
        assert not steady.of_type("error")


# ---- failures reach clients as a code and a safe message ---------------------------------


class LeakyFailingLLM(NoonLLM):
    async def stream_chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[str]:
        raise EngineError(LEAKY_PROVIDER_ERROR)
        yield ""  # pragma: no cover - an async generator


async def test_a_provider_failure_reaches_the_client_as_a_code_without_its_text(
    tmp_path: Any, caplog: Any
) -> None:
    async with live_server(tmp_path, llm=LeakyFailingLLM()) as server:
        async with CallClient(server.ws_url) as call:
            await call.wait_for("session.started", timeout=10)
            call.say(one_turn_of_speech())
            _, error = await call.wait_for("error", timeout=10)
    assert error["code"] == "engine_error" and error["stage"] == "llm"
    assert error["message"] == "the language model failed; please try again"
    assert "10.0.0.7" not in json.dumps(call.events[-1][1])
    assert all("org-internal" not in json.dumps(e) for _, e in call.events)
    # The details are in the server's log.
    failed = [r for r in caplog.records if r.getMessage() == "reply failed"]
    assert failed and "org-internal-42" in failed[0].fields["error"]  # type: ignore[attr-defined]


# ---- transcripts in the logs --------------------------------------------------------------


@pytest.mark.parametrize("consented", [False, True])
async def test_transcripts_reach_info_logs_only_with_consent(
    tmp_path: Any, caplog: Any, consented: bool
) -> None:
    caplog.set_level(logging.INFO)
    async with live_server(tmp_path) as server:
        session = await new_session(server, consent={"log_transcripts": consented})
        async with CallClient(f"{server.ws_url}?token={session['token']}") as call:
            await call.wait_for("session.started", timeout=10)
            call.say(one_turn_of_speech())
            await call.wait_for("agent.text", timeout=10)
    info_text = [
        r
        for r in caplog.records
        if r.levelno >= logging.INFO and "What time is it?" in json.dumps(r.__dict__, default=str)
    ]
    assert bool(info_text) == consented
    ended = [r for r in caplog.records if r.getMessage() == "turn ended"]
    assert ended and ended[0].levelno == logging.INFO
