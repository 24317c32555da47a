"""Human handoff over the real transports of one process: a caller on the WebSocket, a
supervisor console on its WebSocket, the supervisor listening and speaking over a real
aiortc WebRTC connection. Engines are doubles (what is said is set by the test), so the
console's protocol, the take-over and the audio paths are what is under test."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from conftest import SUPERVISOR_KEY
from inprocess_server import SECRET, InProcessServer, LoudnessVAD, SureEOU, ToneTTS, serve_app
from parley.client import CallClient
from parley.config import Settings
from parley.engines import ChatMessage, Engines
from parley.server import create_app
from test_handoff import SaidSTT

pytestmark = pytest.mark.e2e


class PromptedLLM:
    def __init__(self) -> None:
        self.prompts: list[list[ChatMessage]] = []

    async def stream_chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[str]:
        self.prompts.append(list(messages))
        yield "Happy to help."

    async def prefill(self, messages: Sequence[ChatMessage]) -> None:
        return None


def speech(secs: float = 1.0, period: float = 5.0) -> np.ndarray:
    """A loud tone (speech for the loudness VAD), then a second of silence."""
    n = int(secs * 16_000)
    tone = (np.sin(np.arange(n) / period) * 20_000).astype("<i2")
    return np.concatenate([tone, np.zeros(16_000, "<i2")])


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[InProcessServer, SaidSTT, PromptedLLM]]:
    stt, llm = SaidSTT("hello"), PromptedLLM()
    settings = Settings(
        server={"database_url": f"sqlite:///{tmp_path / 'parley.db'}", "token_secret": SECRET},
        turn={"preemptive_generation": False},
        agent={"greeting": ""},
        handoff={"supervisor_key": SUPERVISOR_KEY},
    )
    engines = Engines(stt=stt, llm=llm, tts=ToneTTS(), vad=LoudnessVAD(), eou=SureEOU())
    async for server in serve_app(create_app(settings, engines=engines)):  # type: ignore[arg-type]
        yield server, stt, llm


async def console_token(server: InProcessServer, name: str = "Maria") -> str:
    async with httpx.AsyncClient(base_url=server.http) as http:
        minted = await http.post(
            "/v1/supervisor/tokens",
            json={"name": name},
            headers={"Authorization": f"Bearer {SUPERVISOR_KEY}"},
        )
    assert minted.status_code == 201, minted.text
    return str(minted.json()["token"])


class Console:
    """A supervisor console's WebSocket, as the page opens it."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token
        self.messages: list[dict[str, Any]] = []
        self.changed = asyncio.Event()

    async def __aenter__(self) -> Console:
        self.ws = await connect(
            self.url,
            subprotocols=[Subprotocol("parley"), Subprotocol(f"parley.token.{self.token}")],
        )
        self.reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.reader.cancel()
        await self.ws.close()

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            async for text in self.ws:
                self.messages.append(json.loads(text))
                self.changed.set()

    async def send(self, **message: Any) -> None:
        await self.ws.send(json.dumps(message))

    async def wait(self, match: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                for message in self.messages:
                    if match(message):
                        return message
                self.changed.clear()
                await self.changed.wait()


class ToneMicrophone(MediaStreamTrack):
    """The supervisor's microphone: a steady tone (speech for the caller to hear)."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._pts = 0
        self._start: float | None = None

    async def recv(self) -> Any:
        from parley.transports.webrtc.tracks import pcm_frame

        loop = asyncio.get_running_loop()
        self._start = self._start or loop.time()
        self._pts += 320
        await asyncio.sleep(max(0.0, self._start + self._pts / 16_000 - loop.time()))
        tone = (np.sin((np.arange(320) + self._pts) / 7) * 12_000).astype("<i2")
        frame = pcm_frame(tone.tobytes(), self._pts, 16_000)
        frame.time_base = fractions.Fraction(1, 16_000)
        return frame


async def listen(server: InProcessServer, token: str, session_id: str) -> tuple[Any, list[float]]:
    """A supervisor's WebRTC connection to the session: the levels it hears, per frame."""
    pc = RTCPeerConnection()
    pc.addTrack(ToneMicrophone())
    levels: list[float] = []

    async def hear(track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            samples = frame.to_ndarray().astype(np.float32) / 32768
            levels.append(float(np.sqrt(np.mean(samples * samples))))

    pc.on("track", lambda track: asyncio.ensure_future(hear(track)))
    await pc.setLocalDescription(await pc.createOffer())
    async with httpx.AsyncClient(base_url=server.http, timeout=20) as http:
        answered = await http.post(
            f"/v1/supervisor/sessions/{session_id}/webrtc",
            json={"sdp": pc.localDescription.sdp, "type": "offer"},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert answered.status_code == 200, answered.text
    await pc.setRemoteDescription(RTCSessionDescription(**answered.json()))
    return pc, levels


def loud_audio_after(call: CallClient, at: float) -> int:
    return sum(1 for a in call.audio if a.at >= at and a.level_dbfs() > -30)


async def test_a_supervisor_sees_the_request_takes_over_speaks_and_hands_back(served: Any) -> None:
    server, stt, llm = served
    token = await console_token(server)
    console_url = f"ws://127.0.0.1:{server.port}/v1/supervisor/ws"
    async with Console(console_url, token) as console, CallClient(server.ws_url) as call:
        session_id = call.session["session_id"]  # type: ignore[index]
        await console.wait(
            lambda m: (
                m["type"] == "sessions"
                and any(s["session_id"] == session_id for s in m["sessions"])
            )
        )
        stt.text = "I want to talk to a person."
        call.say(speech())
        flagged = await console.wait(lambda m: m["type"] == "handoff.requested")
        assert flagged["session_id"] == session_id and flagged["by"] == "caller"
        assert {"role": "caller", "text": "I want to talk to a person."} in [
            {k: line[k] for k in ("role", "text")} for line in flagged["transcript"]
        ]
        await call.wait_for("handoff.requested")
        await call.wait_for("agent.state", lambda e: e["state"] == "listening", after=0)

        await console.send(type="watch", session_id=session_id)
        shown = await console.wait(lambda m: m["type"] == "transcript")
        assert any(line["text"] == "I want to talk to a person." for line in shown["lines"])

        pc, heard = await listen(server, token, session_id)
        try:
            # Listening only: the supervisor's microphone does not reach the caller yet.
            await asyncio.sleep(1.5)
            loop = asyncio.get_running_loop()
            assert loud_audio_after(call, loop.time() - 1.0) == 0
            # The caller speaks: the supervisor hears it.
            before = len(heard)
            stt.text = "Are you still there?"
            call.say(speech())
            await asyncio.sleep(1.5)
            assert max(heard[before:], default=0.0) > 0.05

            await console.send(type="take_over", session_id=session_id, id="t1")
            result = await console.wait(lambda m: m["type"] == "result" and m["id"] == "t1")
            assert result["ok"] is True
            _, accepted = await call.wait_for("handoff.accepted")
            assert accepted["by"] == "supervisor:Maria"
            taken_at = loop.time()
            # Now the supervisor's voice reaches the caller; the agent says nothing.
            stt.text = "Hello, this is Maria. Your order ships tomorrow."
            await asyncio.sleep(2.0)
            assert loud_audio_after(call, taken_at) > 25  # > 0.5 s of the supervisor
            replies = len(llm.prompts)
            call.say(speech())
            await call.wait_for("turn.ended", after=taken_at)
            await asyncio.sleep(0.5)
            assert len(llm.prompts) == replies
        finally:
            await pc.close()
        # Stopping the microphone ends the supervisor's utterance: it is transcribed.
        said = await console.wait(
            lambda m: m["type"] == "session.event" and m["event"]["type"] == "human.text"
        )
        assert said["event"]["text"] == "Hello, this is Maria. Your order ships tomorrow."

        await console.send(type="hand_back", session_id=session_id, id="h1")
        result = await console.wait(lambda m: m["type"] == "result" and m["id"] == "h1")
        assert result["ok"] is True
        await call.wait_for("handoff.returned")
        stt.text = "When does it arrive?"
        back_at = asyncio.get_running_loop().time()
        call.say(speech())
        await call.wait_for("agent.text", after=back_at)
        history = [m.content for m in llm.prompts[-1]]
        assert "[a human colleague said:] Hello, this is Maria. Your order ships tomorrow." in (
            history
        )
    # Each step is counted, by who took it (never by name).
    async with httpx.AsyncClient(base_url=server.http) as http:
        metrics = (await http.get("/metrics")).text
    for step, by in (
        ("requested", "caller"),
        ("accepted", "supervisor"),
        ("returned", "supervisor"),
    ):
        line = f'parley_handoffs_total{{by="{by}",step="{step}",transport="websocket"}} 1.0'
        assert line in metrics, step


async def test_console_tokens_and_commands_are_checked(served: Any) -> None:
    server, _, _ = served
    async with httpx.AsyncClient(base_url=server.http) as http:
        wrong = await http.post(
            "/v1/supervisor/tokens", headers={"Authorization": "Bearer not-the-key"}
        )
        assert wrong.status_code == 401
        session = (await http.post("/v1/sessions", json={})).json()
        # A caller's token is no console token, and a console token opens no session.
        user = {"Authorization": f"Bearer {session['token']}"}
        assert (await http.get("/v1/supervisor/sessions", headers=user)).status_code == 403
        token = await console_token(server)
        console = {"Authorization": f"Bearer {token}"}
        listed = await http.get("/v1/supervisor/sessions", headers=console)
        assert listed.status_code == 200 and listed.json() == {"sessions": []}
        inspection = await http.get(
            f"/v1/sessions/{session['session_id']}/inspection", headers=console
        )
        assert inspection.status_code == 403
        offer = {"sdp": "v=0", "type": "offer"}
        missing = await http.post(
            "/v1/supervisor/sessions/nope/webrtc", json=offer, headers=console
        )
        assert missing.status_code == 404
    url = f"ws://127.0.0.1:{server.port}/v1/supervisor/ws"
    async with Console(url, session["token"]) as refused:
        error = await refused.wait(lambda m: m["type"] == "error")
        assert error["code"] == "unauthorized"
    async with Console(url, token) as console_ws:
        await console_ws.ws.send("{not json")
        bad = await console_ws.wait(lambda m: m.get("code") == "invalid_json")
        assert bad["type"] == "error"
        await console_ws.send(type="take_over", session_id="nope", id="x")
        result = await console_ws.wait(lambda m: m["type"] == "result")
        assert result == {
            "type": "result",
            "id": "x",
            "action": "take_over",
            "ok": False,
            "error": "no such live session",
        }


async def test_the_agent_ending_the_call_ends_the_session_after_its_goodbye(served: Any) -> None:
    """The transport's half of ``end_call`` (the envelope's half is the orchestration's):
    once the goodbye was said, the client is told, the session ends, the socket closes."""
    server, _, _ = served
    async with CallClient(server.ws_url) as call:
        await call.wait_for("session.started")
        (session,) = server.app.state.sessions.values()
        session._end_call()
        _, ended = await call.wait_for("session.ended")
        assert ended["by"] == "agent"
        await asyncio.wait_for(call.closed.wait(), 5)
        assert call.close_code == 1000
        async with httpx.AsyncClient(base_url=server.http) as http:
            token = call.session["token"]  # type: ignore[index]
            record = await http.get(
                f"/v1/sessions/{session.session_id}",
                headers={"Authorization": f"Bearer {token}"},
            )
        assert record.status_code == 401  # ended: its tokens are refused


async def test_two_supervisors_of_one_name_are_two_people(served: Any) -> None:
    """Who holds a call is told by their token, not by the name they typed; a colleague
    takes a call over from a holder who left only on purpose (``force``)."""
    server, _, _ = served
    url = f"ws://127.0.0.1:{server.port}/v1/supervisor/ws"
    first, second = await console_token(server), await console_token(server)
    async with (
        CallClient(server.ws_url) as call,
        Console(url, first) as maria,
        Console(url, second) as other_maria,
    ):
        await call.wait_for("session.started")
        session_id = call.session["session_id"]  # type: ignore[index]
        await maria.send(type="take_over", session_id=session_id, id="1")
        assert (await maria.wait(lambda m: m.get("id") == "1"))["ok"] is True
        await other_maria.send(type="take_over", session_id=session_id, id="2")
        refused = await other_maria.wait(lambda m: m.get("id") == "2")
        assert refused["ok"] is False and refused["error"] == "another supervisor has it"
        await other_maria.send(type="hand_back", session_id=session_id, id="3")
        assert (await other_maria.wait(lambda m: m.get("id") == "3"))["ok"] is False

        # The other Maria's microphone does not reach the caller: the holder's would.
        pc, _ = await listen(server, second, session_id)
        try:
            loop = asyncio.get_running_loop()
            await asyncio.sleep(1.5)
            assert loud_audio_after(call, loop.time() - 1.0) == 0
            # Maria left without handing back: her colleague takes the call on purpose.
            await other_maria.send(type="take_over", session_id=session_id, id="4", force=True)
            assert (await other_maria.wait(lambda m: m.get("id") == "4"))["ok"] is True
            taken = loop.time()
            await asyncio.sleep(1.5)
            assert loud_audio_after(call, taken) > 25
        finally:
            await pc.close()
        await maria.send(type="hand_back", session_id=session_id, id="5")
        assert (await maria.wait(lambda m: m.get("id") == "5"))["ok"] is False
        await other_maria.send(type="hand_back", session_id=session_id, id="6")
        assert (await other_maria.wait(lambda m: m.get("id") == "6"))["ok"] is True


async def test_a_caller_who_reconnects_stays_with_the_person(served: Any) -> None:
    """The connection drops while a person has the call, and the server notices before the
    caller is back: the resumed session is still the person's, with their words."""
    from test_handoff import supervisor_speech

    server, stt, llm = served
    token = await console_token(server)
    url = f"ws://127.0.0.1:{server.port}/v1/supervisor/ws"
    async with Console(url, token) as console:
        async with CallClient(server.ws_url) as call:
            await call.wait_for("session.started")
            session = call.session
            assert session is not None
            await console.send(type="take_over", session_id=session["session_id"], id="t")
            assert (await console.wait(lambda m: m.get("id") == "t"))["ok"] is True
            (live,) = server.app.state.sessions.values()
            stt.text = "Maria here, your order ships tomorrow."
            for frame in supervisor_speech():  # as the holder's microphone would
                live.human_audio(frame)
            await call.wait_for("human.text")
            await call.ws.close(4000)  # a drop, not an end (1000 would end the session)
        await server.wait_until(lambda: server.voice_sessions == 0)
        resumed_url = f"{server.ws_url}?token={session['token']}"
        async with CallClient(resumed_url) as back:
            _, started = await back.wait_for("session.started")
            assert started["resumed"] is True
            await back.send_json({"type": "status"})
            _, status = await back.wait_for("session.status")
            assert status["handoff"] == "human"
            said = {
                "role": "assistant",
                "content": "[a human colleague said:] Maria here, your order ships tomorrow.",
            }
            assert said in status["history"]
            stt.text = "Hello? Are you still there?"
            replies = len(llm.prompts)
            at = asyncio.get_running_loop().time()
            back.say(speech())
            await back.wait_for("turn.ended", after=at)
            await asyncio.sleep(0.5)
            assert len(llm.prompts) == replies  # the person still has the call
            await console.send(type="hand_back", session_id=session["session_id"], id="h")
            assert (await console.wait(lambda m: m.get("id") == "h"))["ok"] is True
