"""The WebRTC transport with a Python aiortc peer: one spoken turn end to end, and the
signalling endpoint's refusals (bad tokens, unknown sessions, malformed offers)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from parley.webrtc_client import WebRTCCallClient

pytestmark = pytest.mark.e2e


async def test_a_turn_over_webrtc(server, caller):
    async with WebRTCCallClient(server.http) as call:
        spoke, _ = await call.wait_for(
            "agent.state", lambda e: e["state"] == "speaking", timeout=60
        )
        mark, _ = await call.wait_for(
            "agent.state", lambda e: e["state"] == "listening", after=spoke, timeout=60
        )
        assert call.first_loud_audio_after(0.0) is not None  # the greeting was heard
        last = await call.say(caller("What is the capital city of France"))
        _, ended = await call.wait_for("turn.ended", after=mark, timeout=60)
        assert "capital" in ended["text"].lower()
        _, text = await call.wait_for("agent.text", lambda e: e["turn_id"] == ended["turn_id"])
        assert text["text"]
        spoke_at, _ = await call.wait_for(
            "agent.state", lambda e: e["state"] == "speaking", after=mark, timeout=60
        )
        await call.wait_for(
            "agent.state", lambda e: e["state"] == "listening", after=spoke_at, timeout=60
        )
        await asyncio.sleep(0.5)  # the last frames are still in the jitter buffers
        assert call.first_loud_audio_after(last) is not None
        await call.send_json({"type": "handoff", "reason": "wants a person"})
        _, handoff = await call.wait_for("handoff.requested")
        assert handoff["reason"] == "wants a person"
        await call.send_json({"type": "mute"})
        await call.send_json({"type": "status"})
        _, status = await call.wait_for("session.status")
        assert status["muted"] is True and status["turns"] >= 1
        await call.send_json({"type": "unmute"})
        await call.send_json({"type": "status"})
        _, status = await call.wait_for("session.status", lambda e: e["muted"] is False)
        # Bad input on the data channel: a clear error each, and the session goes on.
        assert call._channel is not None
        call._channel.send(b"\x00\x01")
        await call.wait_for("error", lambda e: e["code"] == "invalid_message")
        call._channel.send("x" * 9000)
        await call.wait_for("error", lambda e: e["code"] == "message_too_large")
        call._channel.send("{not json")
        await call.wait_for("error", lambda e: e["code"] == "invalid_json")
        await call.send_json({"type": "launch"})
        _, error = await call.wait_for("error", lambda e: e["code"] == "unknown_message_type")
        assert "handoff" in error["message"]
        session = call.session
    # The connection's microphone statistics reached the timeline, and the metrics.
    assert session is not None
    async with httpx.AsyncClient(base_url=server.http, timeout=20) as http:
        timeline = await http.get(
            f"/v1/sessions/{session['session_id']}/timeline",
            headers={"Authorization": f"Bearer {session['token']}"},
        )
        scrape = await http.get("/metrics")
    stats = [e["data"] for e in timeline.json()["events"] if e["stage"] == "webrtc.inbound_stats"]
    assert stats and stats[-1]["packets_received"] > 100, stats
    assert stats[-1]["packets_lost"] >= 0 and stats[-1]["jitter_ms"] >= 0
    assert "parley_webrtc_jitter_seconds_count" in scrape.text
    connected = [e for e in timeline.json()["events"] if e["stage"] == "transport.connected"]
    assert connected and connected[0]["data"]["transport"] == "webrtc"


async def test_signalling_refuses_bad_tokens_sessions_and_offers(server):
    async with httpx.AsyncClient(base_url=server.http, timeout=20) as http:
        session = (await http.post("/v1/sessions", json={})).json()
        other = (await http.post("/v1/sessions", json={})).json()
        sid = session["session_id"]
        assert session["webrtc_offer_url"] == f"/v1/sessions/{sid}/webrtc"
        offer = {"sdp": "v=0\r\n", "type": "offer"}

        def bearer(token: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {token}"}

        r = await http.post(f"/v1/sessions/{sid}/webrtc", json=offer)
        assert r.status_code == 401
        r = await http.post(f"/v1/sessions/{sid}/webrtc", json=offer, headers=bearer("forged"))
        assert r.status_code == 401
        r = await http.post(
            f"/v1/sessions/{sid}/webrtc", json=offer, headers=bearer(other["token"])
        )
        assert r.status_code == 403
        r = await http.post(
            f"/v1/sessions/{sid}/webrtc", json=offer, headers=bearer(session["token"])
        )
        assert r.status_code == 400 and "invalid SDP offer" in r.json()["detail"]
        r = await http.post(
            f"/v1/sessions/{sid}/webrtc",
            json={"sdp": "x", "type": "answer"},
            headers=bearer(session["token"]),
        )
        assert r.status_code == 422
        await http.delete(f"/v1/sessions/{sid}", headers=bearer(session["token"]))
        r = await http.post(
            f"/v1/sessions/{sid}/webrtc", json=offer, headers=bearer(session["token"])
        )
        assert r.status_code in (401, 404)
