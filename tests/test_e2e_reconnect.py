"""A client that reconnects to its session gets the conversation back from the server."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from parley.client import CallClient
from voice_helpers import stored_record, wait_reply_done

pytestmark = pytest.mark.e2e


async def test_reconnect_restores_history_from_the_database(server, caller):
    first = CallClient(server.ws_url)
    async with first:
        _, greeted_at = await wait_reply_done(first, after=0)
        await first.say(caller("What time does the store open tomorrow morning"))
        ended_at, ended = await first.wait_for("turn.ended", after=greeted_at, timeout=20)
        await wait_reply_done(first, after=ended_at)
        said = " ".join(e["text"] for e in first.of_type("agent.text") if e["turn_id"] == 1)
        await stored_record(
            server, first, lambda r: r["turns"] and r["turns"][0]["state"] == "completed"
        )
    assert first.session is not None
    sid, old_token = first.session["session_id"], first.session["token"]

    async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
        r = await http.post(
            f"/v1/sessions/{sid}/tokens", json={}, headers={"Authorization": f"Bearer {old_token}"}
        )
        assert r.status_code == 201
        token = r.json()["token"]

        async with CallClient(f"{server.ws_url}?token={token}") as again:
            _, started = await again.wait_for("session.started")
            assert started["resumed"] and started["session_id"] == sid and started["turns"] == 1
            await again.send_json({"type": "status"})
            _, status = await again.wait_for("session.status")
            history = [(m["role"], m["content"]) for m in status["history"]]
            assert history == [("user", ended["text"]), ("assistant", said)]
            # No second greeting; the next turn continues the numbering.
            await asyncio.sleep(1.0)
            assert not again.of_type("agent.text")
            await again.say(caller("Can you tell me a fun fact about the moon"))
            _, nxt = await again.wait_for("turn.ended", timeout=20)
            assert nxt["turn_id"] == 2

        r = await http.get(f"/v1/sessions/{sid}", headers={"Authorization": f"Bearer {token}"})
        assert r.json()["reconnect_count"] == 1
        r = await http.get(
            f"/v1/sessions/{sid}/timeline", headers={"Authorization": f"Bearer {token}"}
        )
        (resumed,) = [e for e in r.json()["events"] if e["stage"] == "session.reconnected"]
        assert resumed["data"]["messages"] == 2 and resumed["data"]["recovery_ms"] >= 0
