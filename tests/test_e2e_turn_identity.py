"""One turn, one record, one side effect — across a dropped turn and a reconnect.

Over the real WebSocket with real speech: a sound with no words (a dropped turn), a
booking, a reconnect, two more bookings. Turn numbers stay continuous, each booking runs
once for its own turn, and the stored transcript and timeline line up with the turns
the client saw live (what the page rebuilds its transcript from after a reconnect).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import numpy as np
import pytest

from conftest import silence
from fake_llm_provider import ProviderScript, fake_provider
from parley.client import CallClient
from parley.testing import ServerProcess
from webhooks import webhook_recorder

pytestmark = pytest.mark.e2e

OPEN = {"received", "processing"}  # the states a turn leaves once its writes land

SPOKEN = "Your table is booked."
ENVELOPE = json.dumps(
    {
        "spoken_text": SPOKEN,
        "tool_calls": [{"name": "book_table", "arguments": {"party": 2, "time": "19:00"}}],
    }
)
ASKS = [
    "Please book a table for two at seven tonight",
    "Now book another table for four people tomorrow",
    "And one more table for six on Friday evening",
]


def hum(seconds: float, f0: float = 140.0) -> np.ndarray:
    """A voiced hum: harmonics of ``f0`` with soft edges (speech to Silero, no words to
    Whisper)."""
    t = np.arange(int(seconds * 16_000)) / 16_000
    wave = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 12))
    edges = np.minimum(1, t * 20) * np.minimum(1, (seconds - t) * 20)
    return (wave / np.abs(wave).max() * edges * 12_000).astype("<i2")


async def one_booking(call: CallClient, caller: Any, text: str, after: float) -> float:
    """Say ``text``; wait for its turn's tool result and the end of the agent's reply."""
    await call.say(caller(text))
    ended_at, ended = await call.wait_for("turn.ended", after=after, timeout=60)
    turn = ended["turn_id"]
    await call.wait_for("tool.result", lambda e: e["turn_id"] == turn, timeout=30)
    spoke, _ = await call.wait_for(
        "agent.state", lambda e: e["state"] == "speaking", after=ended_at, timeout=30
    )
    done, _ = await call.wait_for(
        "agent.state", lambda e: e["state"] == "listening", after=spoke, timeout=30
    )
    return done


async def settled_timeline(
    http: httpx.AsyncClient, sid: str, auth: dict[str, str], deadline: float = 20.0
) -> dict[str, Any]:
    """The session's stored record once no turn is still processing: the last writes of
    a closed connection land a moment after the client left (they are queued, in order,
    and flushed when the session closes)."""
    loop = asyncio.get_running_loop()
    until = loop.time() + deadline
    while True:
        record: dict[str, Any] = (
            await http.get(f"/v1/sessions/{sid}/timeline", headers=auth)
        ).json()
        if all(t["state"] not in OPEN for t in record["turns"]) or loop.time() > until:
            return record
        await asyncio.sleep(0.2)


async def test_turns_tools_and_records_line_up_across_a_dropped_turn_and_a_reconnect(
    tmp_path, caller
):
    from conftest import ARTIFACTS

    with (
        webhook_recorder(lambda seen: {"confirmation": f"T-{len(seen)}"}) as (base, seen),
        fake_provider(ProviderScript([ENVELOPE])) as llm_url,
    ):
        agent = tmp_path / "agent.toml"
        agent.write_text(
            f"""
[llm]
provider = "openai"
base_url = "{llm_url}"

[stt]
revise = false  # the stored words are compared with the live ones below

[[tools]]
name = "book_table"
url = "{base}/book"
description = "Book a table."
parameters = {{ type = "object", required = ["party", "time"] }}
"""
        )
        server = ServerProcess(
            {
                "PARLEY_CONFIG": str(agent),
                "PARLEY_SERVER__DATABASE_URL": f"sqlite:///{tmp_path / 'identity.db'}",
            },
            ARTIFACTS / "turn-identity.log",
        )
        live: list[dict[str, Any]] = []
        results: list[dict[str, Any]] = []
        try:
            async with CallClient(server.ws_url) as call:
                await call.wait_for("session.started")
                # A sound the VAD takes for speech but Whisper hears no word in (a hum):
                # the turn is dropped.
                await call.say(np.concatenate([hum(0.6), silence(0.1)]))
                await call.wait_for("vad.speech_stopped", timeout=10)
                await asyncio.sleep(2.0)  # the end of turn decision: no words, no turn
                assert not call.of_type("turn.ended")
                await one_booking(call, caller, ASKS[0], after=0)
                live += call.of_type("turn.ended")
                results += call.of_type("tool.result")
                assert call.session is not None
                sid, token = call.session["session_id"], call.session["token"]
            async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
                auth = {"Authorization": f"Bearer {token}"}
                r = await http.post(f"/v1/sessions/{sid}/tokens", json={}, headers=auth)
                token = r.json()["token"]
                auth = {"Authorization": f"Bearer {token}"}
                async with CallClient(f"{server.ws_url}?token={token}") as again:
                    _, started = await again.wait_for("session.started")
                    assert started["resumed"] and started["turns"] == 1
                    done = await one_booking(again, caller, ASKS[1], after=0)
                    await one_booking(again, caller, ASKS[2], after=done)
                    live += again.of_type("turn.ended")
                    results += again.of_type("tool.result")
                record = await settled_timeline(http, sid, auth)
        finally:
            server.stop()

    turns = record["turns"]
    # Continuous numbering, one stored turn per spoken one, each completed as itself.
    assert [t["seq"] for t in turns] == [1, 2, 3]
    assert [e["turn_id"] for e in live] == [1, 2, 3]
    assert [t["user_text"] for t in turns] == [e["text"] for e in live]
    assert [t["state"] for t in turns] == ["completed"] * 3
    # Each booking ran exactly once, for its own turn (the key is "<stored turn>:<call>").
    assert len(seen) == 3
    keys = [key for key, _ in seen]
    assert len(set(keys)) == 3
    assert [r["result"] for r in results] == [{"confirmation": f"T-{i}"} for i in (1, 2, 3)]
    assert all(r["status"] == "succeeded" for r in results)
    # Transcript and timeline are stored under the turns' own numbers.
    by_turn: dict[int, list[str]] = {}
    for segment in record["segments"]:
        by_turn.setdefault(segment["turn"], []).append(segment["text"])
    assert {seq: " ".join(texts) for seq, texts in by_turn.items()} == {
        t["seq"]: t["user_text"] for t in turns
    }
    stages = {(e["stage"], e["turn"]) for e in record["events"]}
    for seq in (1, 2, 3):
        assert {("turn.ended", seq), ("tool.result", seq), ("turn.metrics", seq)} <= stages
    # What the page rebuilds after a reconnect (user words and the agent's spoken reply
    # under each stored turn number) is what the client was shown live.
    assert all(t["result"]["spoken"] == SPOKEN for t in turns)
