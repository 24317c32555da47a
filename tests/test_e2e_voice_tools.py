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
        "state_updates": {"party": "2", "time": "19:00"},
    }
)


TOOL_TABLE = """
[[tools]]
name = "book_table"
url = "{url}"
description = "Book a table."
parameters = {{ type = "object", required = ["party", "time"] }}
"""


def tools_server(tmp_path: Any, llm_tables: str, url: str, log: str) -> ServerProcess:
    """A real server whose agent file has ``llm_tables`` and the booking webhook tool."""
    from conftest import ARTIFACTS

    agent = tmp_path / "agent.toml"
    agent.write_text(llm_tables + TOOL_TABLE.format(url=url))
    return ServerProcess(
        {
            "PARLEY_CONFIG": str(agent),
            "PARLEY_SERVER__DATABASE_URL": f"sqlite:///{tmp_path / 'tools.db'}",
        },
        ARTIFACTS / log,
    )


async def book_by_voice(server: ServerProcess, caller: Any) -> dict[str, Any]:
    """Ask for a booking by voice; what the call and the session's record showed."""
    async with CallClient(server.ws_url) as call:
        await call.wait_for("session.started")
        await call.say(caller("Please book a table for two at seven tonight"))
        _, ended = await call.wait_for("turn.ended", timeout=60)
        turn = ended["turn_id"]
        _, result = await call.wait_for("tool.result", lambda e: e["turn_id"] == turn, timeout=30)
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
        auth = {"Authorization": f"Bearer {token}"}
        record = (await http.get(f"/v1/sessions/{sid}/timeline", headers=auth)).json()
        ready = (await http.get("/ready")).json()
    return {
        "turn": turn,
        "result": result,
        "envelope": envelope,
        "said": said,
        "record": record,
        "ready": ready,
    }


@pytest.fixture
def bookings() -> Any:
    with webhook_recorder(lambda seen: {"confirmation": f"T-{len(seen)}"}) as (base, seen):
        yield f"{base}/book", seen


async def test_voice_turn_speaks_the_envelope_and_books_once(tmp_path, caller, bookings):
    url, seen = bookings
    with fake_provider(ProviderScript([ENVELOPE])) as llm_url:
        llm = f'[llm]\nprovider = "openai"\nbase_url = "{llm_url}"\n'
        server = tools_server(tmp_path, llm, url, "voice-tools.log")
        try:
            seen_by_caller = await book_by_voice(server, caller)
        finally:
            server.stop()

    result, record = seen_by_caller["result"], seen_by_caller["record"]
    assert result["status"] == "succeeded" and result["result"] == {"confirmation": "T-1"}
    assert seen_by_caller["envelope"]["follow_up_prompts"] == ["Anything else?"]
    assert seen_by_caller["said"] == SPOKEN
    assert len(seen) == 1  # once, however many drafts asked the model
    key, body = seen[0]
    assert key.endswith(":call_1") and body["arguments"] == {"party": 2, "time": "19:00"}
    (stored,) = [t for t in record["turns"] if t["seq"] == seen_by_caller["turn"]]
    assert stored["state"] == "completed"
    assert stored["result"]["envelope"]["tool_calls"][0]["name"] == "book_table"
    assert any(e["stage"] == "tool.result" for e in record["events"])
    # What the turn settled is the conversation's state, on the session's record.
    assert record["memory"]["state"] == {"party": "2", "time": "19:00"}
    (updated,) = [e for e in record["events"] if e["stage"] == "state.updated"]
    assert updated["data"] == {"keys": ["party", "time"]}


async def test_an_envelope_that_fails_over_to_the_fallback_llm_books_once(
    tmp_path, caller, bookings
):
    """The agent file's ``[[llm.fallbacks]]`` (a chain built from settings, in a real
    server): the primary answers 500, the fallback's envelope is spoken and its tool runs
    once — a failover never re-runs a tool."""
    url, seen = bookings
    down = ProviderScript(["unused"], status=500)
    with fake_provider(down) as primary_url, fake_provider(ProviderScript([ENVELOPE])) as backup:
        llm = (
            f'[llm]\nprovider = "openai"\nname = "primary"\nbase_url = "{primary_url}"\n'
            f'[[llm.fallbacks]]\nprovider = "openai"\nname = "backup"\nbase_url = "{backup}"\n'
        )
        server = tools_server(tmp_path, llm, url, "voice-tools-failover.log")
        try:
            seen_by_caller = await book_by_voice(server, caller)
        finally:
            server.stop()

    assert down.requests, "the primary was asked first"
    assert seen_by_caller["result"]["status"] == "succeeded"
    assert seen_by_caller["said"] == SPOKEN
    assert len(seen) == 1
    events = seen_by_caller["record"]["events"]
    failovers = [e["data"] for e in events if e["stage"] == "provider.failover"]
    assert failovers and failovers[0]["from"] == "primary" and failovers[0]["to"] == "backup"
    providers = seen_by_caller["ready"]["providers"]["llm"]
    assert [p["provider"] for p in providers] == ["primary", "backup"]
