"""No connection dies silently, and a session id has one live voice session at a time:
a WebSocket whose sender dies is closed with its session; a second ``parley`` data
channel on a WebRTC connection is refused; a newer connection (WebSocket or WebRTC)
takes a session over from the older one. Real sockets and aiortc peers against an
in-process server on test-double engines (see inprocess_server.py)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.websockets import WebSocket

from inprocess_server import InProcessServer, one_turn_of_speech, serve
from parley.client import CallClient
from parley.transports.webrtc import peer as peer_module
from parley.transports.webrtc.tracks import InboundResampler
from parley.webrtc_client import WebRTCCallClient


@pytest.fixture
async def app_server(
    request: Any, tmp_path: Any, monkeypatch: Any
) -> AsyncIterator[InProcessServer]:
    """SQLite unless the test asks for another database (``indirect`` parametrisation)."""
    monkeypatch.chdir(tmp_path)  # no ./parley.toml: the defaults (no greeting)
    monkeypatch.delenv("PARLEY_CONFIG", raising=False)
    async for running in serve(tmp_path, getattr(request, "param", "sqlite")):
        yield running


async def converses(call: CallClient) -> None:
    """The session answers a ping and a whole spoken turn."""
    sent_at = asyncio.get_running_loop().time()
    await call.send_json({"type": "ping", "id": "still-here"})
    await call.wait_for("pong", lambda e: e["id"] == "still-here", after=sent_at, timeout=5)
    call.say(one_turn_of_speech())
    _, text = await call.wait_for("agent.text", after=sent_at, timeout=10)
    assert text["text"] == "It is noon."


async def stored_status(server: InProcessServer, session_id: str) -> str:
    record = await server.app.state.store.get_session(session_id)
    assert record is not None
    return str(record.reconnect_status)


async def wait_stored_status(server: InProcessServer, session_id: str, status: str) -> None:
    """The record is written as the connection's clean-up ends: poll it, bounded."""
    async with asyncio.timeout(5):
        while await stored_status(server, session_id) != status:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_a_dead_sender_closes_its_session_and_no_other(
    app_server: InProcessServer, monkeypatch: Any, caplog: Any
) -> None:
    original = WebSocket.send_text

    async def send_text(self: WebSocket, data: str) -> None:
        if "poison" in data:
            raise RuntimeError("socket send exploded")
        await original(self, data)

    monkeypatch.setattr(WebSocket, "send_text", send_text)
    async with CallClient(app_server.ws_url) as good, CallClient(app_server.ws_url) as bad:
        await good.wait_for("session.started")
        await bad.wait_for("session.started")
        assert app_server.voice_sessions == 2
        await bad.send_json({"type": "ping", "id": "poison"})  # its pong kills the sender

        await asyncio.wait_for(bad.closed.wait(), 5)
        assert bad.close_code == 1011
        assert [e["code"] for e in bad.of_type("error")] == ["internal_error"]
        assert bad.session is not None
        await wait_stored_status(app_server, bad.session["session_id"], "disconnected")
        assert app_server.voice_sessions == 1
        failures = [r for r in caplog.records if r.getMessage().startswith("websocket send failed")]
        assert len(failures) == 1 and failures[0].levelno == logging.ERROR
        assert "socket send exploded" in failures[0].fields["error"]

        await converses(good)
        assert not good.of_type("error")


async def test_a_second_parley_data_channel_is_refused(app_server: InProcessServer) -> None:
    async with WebRTCCallClient(app_server.http) as call:
        await call.wait_for("session.started")
        assert call._pc is not None
        extra = call._pc.createDataChannel("parley")
        received: list[dict[str, Any]] = []
        closed = asyncio.Event()
        extra.on("message", lambda m: received.append(json.loads(m)))
        extra.on("close", closed.set)

        await asyncio.wait_for(closed.wait(), 5)
        assert [(e["type"], e["code"]) for e in received] == [("error", "duplicate_channel")]
        assert app_server.voice_sessions == 1
        # The first channel and its session carry on.
        await call.send_json({"type": "ping", "id": 3})
        await call.wait_for("pong", lambda e: e["id"] == 3, timeout=5)
        assert len(call.of_type("session.started")) == 1
        assert app_server.voice_sessions == 1


async def test_a_dead_webrtc_microphone_task_ends_its_connection(
    app_server: InProcessServer, monkeypatch: Any, caplog: Any
) -> None:
    class BrokenResampler(InboundResampler):
        def convert(self, frame: Any) -> bytes:
            raise ValueError("resampler broke")

    # The server's side only: the client resamples the agent's audio with its own.
    monkeypatch.setattr(peer_module, "InboundResampler", BrokenResampler)
    async with WebRTCCallClient(app_server.http) as call:
        await call.wait_for("session.started")
        _, error = await call.wait_for("error", timeout=5)
        assert error["code"] == "internal_error" and "webrtc-mic" in error["message"]
        await asyncio.wait_for(call.closed.wait(), 5)
        await app_server.wait_until(lambda: app_server.voice_sessions == 0)
        failures = [r for r in caplog.records if r.getMessage() == "webrtc task failed"]
        assert [r.fields["task"] for r in failures] == ["webrtc-mic"]
        assert (
            failures[0].levelno == logging.ERROR
            and "resampler broke" in failures[0].fields["error"]
        )


@pytest.mark.parametrize("app_server", ["sqlite", "postgresql"], indirect=True)
async def test_a_newer_websocket_takes_the_session_over(app_server: InProcessServer) -> None:
    async with CallClient(app_server.ws_url) as first:
        await first.wait_for("session.started")
        assert first.session is not None
        session_id = first.session["session_id"]
        same_session = f"{app_server.ws_url}?token={first.session['token']}"
        async with CallClient(same_session) as second:
            _, started = await second.wait_for("session.started", timeout=5)
            await asyncio.wait_for(first.closed.wait(), 5)
            assert first.close_code == 4409
            (error,) = first.of_type("error")
            assert error["code"] == "session_taken_over" and error["message"]
            assert started["session_id"] == session_id and started["resumed"] is True
            assert app_server.voice_sessions == 1
            # The old connection's close did not mark the session disconnected under
            # the new one.
            assert await stored_status(app_server, session_id) == "reconnected"
            await converses(second)
        await wait_stored_status(app_server, session_id, "disconnected")
        assert app_server.voice_sessions == 0


async def test_a_websocket_takes_the_session_over_from_webrtc(app_server: InProcessServer) -> None:
    async with WebRTCCallClient(app_server.http) as rtc:
        await rtc.wait_for("session.started")
        assert rtc.session is not None
        same_session = f"{app_server.ws_url}?token={rtc.session['token']}"
        async with CallClient(same_session) as ws:
            await ws.wait_for("session.started", timeout=5)
            await rtc.wait_for("error", lambda e: e["code"] == "session_taken_over", timeout=5)
            await asyncio.wait_for(rtc.closed.wait(), 5)
            await app_server.wait_until(lambda: not app_server.app.state.webrtc_peers)
            assert app_server.voice_sessions == 1
            await converses(ws)


async def test_a_webrtc_connection_takes_the_session_over_from_a_websocket(
    app_server: InProcessServer, monkeypatch: Any
) -> None:
    async with CallClient(app_server.ws_url) as ws:
        await ws.wait_for("session.started")
        existing = ws.session

        async def same_session(url: str) -> dict[str, Any]:
            assert existing is not None
            return existing

        monkeypatch.setattr("parley.webrtc_client.create_session", same_session)
        async with WebRTCCallClient(app_server.http) as rtc:
            _, started = await rtc.wait_for("session.started", timeout=5)
            assert started["resumed"] is True
            await asyncio.wait_for(ws.closed.wait(), 5)
            assert ws.close_code == 4409
            assert [e["code"] for e in ws.of_type("error")] == ["session_taken_over"]
            assert app_server.voice_sessions == 1
            await rtc.send_json({"type": "ping", "id": 9})
            await rtc.wait_for("pong", lambda e: e["id"] == 9, timeout=5)


async def test_a_newer_webrtc_connection_takes_the_session_over(
    app_server: InProcessServer, monkeypatch: Any
) -> None:
    async with WebRTCCallClient(app_server.http) as first:
        await first.wait_for("session.started")
        existing = first.session

        async def same_session(url: str) -> dict[str, Any]:
            assert existing is not None
            return existing

        monkeypatch.setattr("parley.webrtc_client.create_session", same_session)
        async with WebRTCCallClient(app_server.http) as second:
            _, started = await second.wait_for("session.started", timeout=5)
            assert started["resumed"] is True
            await first.wait_for("error", lambda e: e["code"] == "session_taken_over", timeout=5)
            await asyncio.wait_for(first.closed.wait(), 5)
            assert app_server.voice_sessions == 1
            await second.send_json({"type": "ping", "id": 11})
            await second.wait_for("pong", lambda e: e["id"] == 11, timeout=5)
