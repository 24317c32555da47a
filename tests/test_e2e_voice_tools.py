"""Tools from the voice loop: with tools configured the agent speaks the action
envelope's text and runs its tool calls through the ledger once the turn is confirmed —
once, even though preemptive drafts may ask the model more than once."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from fake_llm_provider import ProviderScript, fake_provider
from parley.client import CallClient
from parley.testing import ServerProcess
from webhooks import webhook_recorder

pytestmark = pytest.mark.e2e

SPOKEN = "Your table for two at seven is booked."
ENVELOPE = json.dumps(
    {
        "spoken_text": SPOKEN,
        "escalate": False,
        "follow_up_prompts": ["Anything else?"],
        "tool_calls": [{"name": "book_table", "arguments": {"party": 2, "time": "19:00"}}],
    }
)


@pytest.fixture
def bookings() -> Any:
    with webhook_recorder(lambda seen: {"confirmation": f"T-{len(seen)}"}) as (base, seen):
        yield f"{base}/book", seen


async def test_voice_turn_speaks_the_envelope_and_books_once(tmp_path, caller, bookings):
    from conftest import ARTIFACTS

    url, seen = bookings
    script = ProviderScript([ENVELOPE])
    with fake_provider(script) as llm_url:
        agent = tmp_path / "agent.toml"
        agent.write_text(
            f"""
[llm]
provider = "openai"
base_url = "{llm_url}"

[[tools]]
name = "book_table"
url = "{url}"
description = "Book a table."
parameters = {{ type = "object", required = ["party", "time"] }}
"""
        )
        server = ServerProcess(
            {
                "PARLEY_CONFIG": str(agent),
                "PARLEY_SERVER__DATABASE_URL": f"sqlite:///{tmp_path / 'tools.db'}",
            },
            ARTIFACTS / "voice-tools.log",
        )
        try:
            async with CallClient(server.ws_url) as call:
                await call.wait_for("session.started")
                await call.say(caller("Please book a table for two at seven tonight"))
                _, ended = await call.wait_for("turn.ended", timeout=60)
                turn = ended["turn_id"]
                _, result = await call.wait_for(
                    "tool.result", lambda e: e["turn_id"] == turn, timeout=30
                )
                _, envelope = await call.wait_for("agent.envelope", lambda e: e["turn_id"] == turn)
                await call.wait_for("turn.metrics", lambda e: e["turn_id"] == turn, timeout=30)
                spoke, _ = await call.wait_for(
                    "agent.state", lambda e: e["state"] == "speaking", timeout=30
                )
                await call.wait_for(
                    "agent.state", lambda e: e["state"] == "listening", after=spoke, timeout=30
                )
                said = " ".join(e["text"] for e in call.of_type("agent.text"))
                assert call.session is not None
                sid, token = call.session["session_id"], call.session["token"]
            async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
                timeline = await http.get(
                    f"/v1/sessions/{sid}/timeline", headers={"Authorization": f"Bearer {token}"}
                )
                record = timeline.json()
        finally:
            server.stop()

    assert result["status"] == "succeeded" and result["result"] == {"confirmation": "T-1"}
    assert envelope["follow_up_prompts"] == ["Anything else?"]
    assert said == SPOKEN
    assert len(seen) == 1  # once, however many drafts asked the model
    key, body = seen[0]
    assert key.endswith(":call_1") and body["arguments"] == {"party": 2, "time": "19:00"}
    (stored,) = [t for t in record["turns"] if t["seq"] == turn]
    assert stored["state"] == "completed"
    assert stored["result"]["envelope"]["tool_calls"][0]["name"] == "book_table"
    assert any(e["stage"] == "tool.result" for e in record["events"])


async def test_an_envelope_that_fails_over_to_the_fallback_llm_books_once(
    tmp_path, caller, bookings
):
    """The agent file's ``[[llm.fallbacks]]`` (a chain built from settings, in a real
    server): the primary answers 500, the fallback's envelope is spoken and its tool runs
    once — a failover never re-runs a tool."""
    from conftest import ARTIFACTS

    url, seen = bookings
    down = ProviderScript(["unused"], status=500)
    with fake_provider(down) as primary_url, fake_provider(ProviderScript([ENVELOPE])) as backup:
        agent = tmp_path / "agent.toml"
        agent.write_text(
            f"""
[llm]
provider = "openai"
name = "primary"
base_url = "{primary_url}"

[[llm.fallbacks]]
provider = "openai"
name = "backup"
base_url = "{backup}"

[[tools]]
name = "book_table"
url = "{url}"
description = "Book a table."
parameters = {{ type = "object", required = ["party", "time"] }}
"""
        )
        server = ServerProcess(
            {
                "PARLEY_CONFIG": str(agent),
                "PARLEY_SERVER__DATABASE_URL": f"sqlite:///{tmp_path / 'tools.db'}",
            },
            ARTIFACTS / "voice-tools-failover.log",
        )
        try:
            async with CallClient(server.ws_url) as call:
                await call.wait_for("session.started")
                await call.say(caller("Please book a table for two at seven tonight"))
                _, ended = await call.wait_for("turn.ended", timeout=60)
                turn = ended["turn_id"]
                _, result = await call.wait_for(
                    "tool.result", lambda e: e["turn_id"] == turn, timeout=30
                )
                spoke, _ = await call.wait_for(
                    "agent.state", lambda e: e["state"] == "speaking", timeout=30
                )
                await call.wait_for(
                    "agent.state", lambda e: e["state"] == "listening", after=spoke, timeout=30
                )
                said = " ".join(e["text"] for e in call.of_type("agent.text"))
                assert call.session is not None
                sid, token = call.session["session_id"], call.session["token"]
            async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
                timeline = await http.get(
                    f"/v1/sessions/{sid}/timeline", headers={"Authorization": f"Bearer {token}"}
                )
                ready = (await http.get("/ready")).json()
        finally:
            server.stop()

    assert down.requests, "the primary was asked first"
    assert result["status"] == "succeeded" and said == SPOKEN
    assert len(seen) == 1
    failovers = [e["data"] for e in timeline.json()["events"] if e["stage"] == "provider.failover"]
    assert failovers and failovers[0]["from"] == "primary" and failovers[0]["to"] == "backup"
    assert [p["provider"] for p in ready["providers"]["llm"]] == ["primary", "backup"]
