"""Admission control: past ``server.max_sessions`` live sessions, new ones are refused
(503 + Retry-After, close 4503) while the live ones go on being served, a reconnecting
caller keeps its place, and a place freed by a hang-up is given to the next caller.

The counting rules first (no server), then a full server on the embedded engines with
real WebSocket callers speaking espeak-ng speech."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from types import SimpleNamespace
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
    serve_app,
)
from parley.client import CallClient
from parley.config import ServerSettings, Settings
from parley.engines import Engines
from parley.server import create_app
from parley.transports.admission import Admission, ServerFull
from voice_helpers import wait_reply_done

served = contextlib.asynccontextmanager(serve_app)


# ---- the counting rules ----------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def admission_of(max_sessions: int = 2, hold: float = 10.0) -> tuple[Admission, Any, FakeClock]:
    state = SimpleNamespace(sessions={}, webrtc_peers={})
    clock = FakeClock()
    settings = ServerSettings(max_sessions=max_sessions, reconnect_hold_secs=hold)
    return Admission(state, settings, clock), state, clock


def voice(session_id: str) -> Any:
    return SimpleNamespace(session_id=session_id)


def test_a_session_counts_once_whatever_holds_it():
    admission, state, _ = admission_of(max_sessions=2)
    # A voice session, and the WebRTC peer that holds the same session: one place.
    state.sessions[1] = voice("a")
    state.webrtc_peers["a"] = object()
    assert admission.live == 1 and not admission.full
    state.webrtc_peers["b"] = object()  # a peer whose data channel has not opened yet
    assert admission.live == 2 and admission.full
    with pytest.raises(ServerFull) as refused:
        admission.check_new_session()
    assert refused.value.retry_after_secs == 5 and "capacity of 2" in str(refused.value)
    with pytest.raises(ServerFull):
        admission.check_connection("c")
    admission.check_connection("a")  # a reconnect of a live session: always admitted


def test_a_connection_being_opened_holds_its_place():
    admission, _, _ = admission_of(max_sessions=1)
    with admission.opening("a"):
        assert admission.full
        with pytest.raises(ServerFull), admission.opening("b"):
            pass
        with admission.opening("a"):  # the same session again (a takeover): admitted
            pass
    assert admission.live == 0


def test_a_dropped_session_keeps_its_place_for_the_hold_then_frees_it():
    admission, _, clock = admission_of(max_sessions=1, hold=10.0)
    admission.left("a", dropped=True)
    assert admission.full
    with pytest.raises(ServerFull):
        admission.check_connection("b")
    admission.check_connection("a")  # its caller comes back: admitted
    clock.now += 10.0
    assert admission.live == 0
    admission.left("b", dropped=True)
    admission.left("b", dropped=False)  # then ended on purpose: free at once
    assert admission.live == 0


# ---- a full server ---------------------------------------------------------------------

ASK = "What time does the store open tomorrow morning"


async def spoken_turn(call: CallClient, caller: Any, after: float) -> str:
    """Say ``ASK`` and return what the agent answered (after it finished speaking)."""
    await call.say(caller(ASK))
    ended_at, ended = await call.wait_for("turn.ended", after=after, timeout=60)
    await wait_reply_done(call, after=ended_at, timeout=90)
    return " ".join(
        e["text"] for e in call.of_type("agent.text") if e["turn_id"] == ended["turn_id"]
    )


async def refused_connection(server: InProcessServer, token: str) -> tuple[dict[str, Any], int]:
    """Connect with ``token``; the error event and close code it is refused with."""
    async with connect(f"{server.ws_url}?token={token}") as ws:
        error = json.loads(await ws.recv())
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    return error, closed.value.rcvd.code


async def fresh_token(http: httpx.AsyncClient, call: CallClient) -> str:
    """A new user token for ``call``'s session (what a reconnecting client asks for)."""
    assert call.session is not None
    response = await http.post(
        f"/v1/sessions/{call.session['session_id']}/tokens",
        json={"role": "user"},
        headers={"Authorization": f"Bearer {call.session['token']}"},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


@pytest.mark.e2e
async def test_a_full_server_refuses_newcomers_serves_its_callers_and_admits_after_a_hang_up(
    embedded_engines, caller, tmp_path: Path
):
    settings = Settings(
        server={
            "database_url": f"sqlite:///{tmp_path / 'parley.db'}",
            "token_secret": SECRET,
            "max_sessions": 2,
            "readiness_timeout_secs": 15,
        },
        agent={"greeting": "Hello, this is Parley."},
    )
    app = create_app(settings, engines=embedded_engines)
    async with served(app) as server, httpx.AsyncClient(base_url=server.http, timeout=30) as http:
        # Made while there was room; it connects once there is none.
        late = (await http.post("/v1/sessions", json={})).json()
        async with CallClient(server.ws_url) as first, CallClient(server.ws_url) as second:
            greeted = await asyncio.gather(
                wait_reply_done(first, after=0), wait_reply_done(second, after=0)
            )
            assert app.state.admission.live == 2

            # A new session: refused, saying why and when to come back.
            response = await http.post("/v1/sessions", json={})
            assert response.status_code == 503
            assert response.headers["Retry-After"] == "5"
            error = response.json()["error"]
            assert error["code"] == "server_full" and "capacity of 2" in error["message"]
            assert response.json()["detail"] == error["message"]  # what the page shows

            # /ready says full (every dependency is fine).
            response = await http.get("/ready")
            body = response.json()
            assert response.status_code == 503 and body["status"] == "full", body
            assert body["checks"]["capacity"] == {"ok": False, "live": 2, "max": 2}
            assert response.headers["Retry-After"] == "5"

            # A connection for a session that is not live is refused too.
            event, code = await refused_connection(server, late["token"])
            assert (event["type"], event["code"], code) == ("error", "server_full", 4503)

            # The live callers are still served: both say something and get an answer.
            answers = await asyncio.gather(
                spoken_turn(first, caller, greeted[0][1]),
                spoken_turn(second, caller, greeted[1][1]),
            )
            assert all(a.strip() for a in answers), answers

            # A caller whose connection drops keeps its place and gets back in.
            second.ws.transport.abort()
            await server.wait_until(lambda: server.voice_sessions == 1)
            assert (await http.post("/v1/sessions", json={})).status_code == 503
            token = await fresh_token(http, second)
            async with CallClient(f"{server.ws_url}?token={token}") as back:
                await back.send_json({"type": "status"})
                await back.wait_for("session.status", timeout=20)
                assert app.state.admission.live == 2

                # It hangs up (``end``): its place goes to the next caller at once.
                await back.send_json({"type": "end"})
                await back.wait_for("session.ended", timeout=20)
                await server.wait_until(lambda: server.voice_sessions == 1, timeout=10)
            async with CallClient(server.ws_url) as newcomer:
                await wait_reply_done(newcomer, after=0)
                assert app.state.admission.live == 2


async def test_a_full_server_refuses_a_webrtc_offer_for_a_new_session_only(tmp_path: Path):
    """The WebRTC signalling endpoint applies the same rule (test-double engines: no
    media flows; an offer that passes admission is refused later for its bad SDP)."""
    settings = Settings(
        server={
            "database_url": f"sqlite:///{tmp_path / 'parley.db'}",
            "token_secret": SECRET,
            "max_sessions": 1,
        },
        turn={"preemptive_generation": False},
    )
    engines = Engines(
        stt=FixedSTT(), llm=NoonLLM(), tts=ToneTTS(), vad=LoudnessVAD(), eou=SureEOU()
    )  # type: ignore[arg-type]
    app = create_app(settings, engines=engines)
    async with served(app) as server, httpx.AsyncClient(base_url=server.http, timeout=30) as http:
        other = (await http.post("/v1/sessions", json={})).json()
        async with CallClient(server.ws_url) as call:
            await call.wait_for("session.started", timeout=10)
            assert call.session is not None
            offer = {"sdp": "v=0", "type": "offer"}

            def offer_for(session: dict[str, Any]) -> Any:
                return http.post(
                    f"/v1/sessions/{session['session_id']}/webrtc",
                    json=offer,
                    headers={"Authorization": f"Bearer {session['token']}"},
                )

            refused = await offer_for(other)
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
            assert refused.json()["error"]["code"] == "server_full"
            # The live session's own offer (a reconnect over WebRTC) is admitted.
            assert (await offer_for(call.session)).status_code == 400
