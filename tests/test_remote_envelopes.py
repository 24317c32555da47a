"""Action envelopes from a remote provider (no grammar keeps its JSON whole): the envelope
has its own token budget, and output the budget cut off is never acted on. Only the
model's words are scripted, by a real HTTP server; the provider client, orchestrator,
ledger and store are the real code."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from fake_llm_provider import CHARS_PER_TOKEN, ProviderScript, fake_provider
from parley.config import Settings
from parley.engines.llm_openai import OpenAICompatibleLLM
from parley.server import create_app

ARGUMENTS = {"party": 2, "time": "19:00"}


def booking(spoken_text: str) -> str:
    return (
        f'{{"spoken_text": "{spoken_text}", "escalate": false, '
        f'"tool_calls": [{{"name": "book_table", "arguments": {{"party": 2, "time": "19:00"}}}}]}}'
    )


@pytest.fixture(autouse=True)
def no_bookings() -> None:
    import booking_tools

    booking_tools.BOOKINGS.clear()


@asynccontextmanager
async def agent(
    tmp_path: Path, script: ProviderScript, **llm: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """An app whose LLM is the remote provider serving ``script``, with the booking tool."""
    with fake_provider(script) as url:
        settings = Settings(
            server={"database_url": f"sqlite:///{tmp_path / 'r.db'}"},
            agent={"tools_module": "booking_tools:registry"},
            llm={"provider": "openai", "base_url": url, "model": "tiny", **llm},
        )
        remote = OpenAICompatibleLLM(settings.llm)
        app = create_app(settings, engines=SimpleNamespace(llm=remote))  # type: ignore[arg-type]
        try:
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://p") as client:
                    yield client
        finally:
            await remote.aclose()


async def turn(client: httpx.AsyncClient, text: str) -> dict[str, Any]:
    created = (await client.post("/v1/sessions", json={})).json()
    response = await client.post(
        f"/v1/sessions/{created['session_id']}/turns",
        json={"text": text, "idempotency_key": "k-1"},
        headers={"Authorization": f"Bearer {created['token']}"},
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def test_a_tool_envelope_cut_off_by_the_budget_is_never_acted_on(tmp_path):
    import booking_tools

    reply = booking("Booked, enjoy.")
    budget = 32
    cut = reply[: budget * CHARS_PER_TOKEN]
    assert cut.endswith('"time": "19')  # closed, "19" would fit the tool's schema
    script = ProviderScript([reply], cut_at_max_tokens=True)
    async with agent(tmp_path, script, max_tokens=budget, envelope_max_tokens=budget) as client:
        answer = await turn(client, "A table for two at seven")
    assert answer["state"] == "failed" and "cut off" in answer["error"]
    assert answer["envelope"]["spoken_text"].startswith("Sorry")
    assert answer["tool_results"] == [] and booking_tools.BOOKINGS == []
    assert len(script.requests) == 2  # asked once more, then gave up safely


async def test_whole_looking_json_the_budget_stopped_is_not_acted_on(tmp_path):
    import booking_tools

    script = ProviderScript([booking("Booked.")], finish_reason="length")
    async with agent(tmp_path, script) as client:
        answer = await turn(client, "A table for two at seven")
    assert answer["state"] == "failed" and "cut off" in answer["error"]
    assert booking_tools.BOOKINGS == []


async def test_a_tool_envelope_longer_than_a_spoken_reply_runs_whole(tmp_path):
    """The default budgets: a spoken reply's 60 tokens would cut this envelope in its
    speech; the envelope's own budget lets it finish, and the booking runs once."""
    import booking_tools

    reply = booking("Your table for two is booked for seven tonight. " * 5)
    assert 60 * CHARS_PER_TOKEN < len(reply)
    script = ProviderScript([reply], cut_at_max_tokens=True)
    async with agent(tmp_path, script) as client:
        answer = await turn(client, "A table for two at seven")
    assert answer["state"] == "completed"
    assert [r["status"] for r in answer["tool_results"]] == ["succeeded"]
    assert [arguments for arguments, _ in booking_tools.BOOKINGS] == [ARGUMENTS]
    (request,) = script.requests
    assert request["max_tokens"] == 256


async def test_state_updates_become_the_conversations_state_and_reach_the_next_prompt(
    tmp_path,
):
    from parley.server.inspection import inspection
    from parley.server.sessions_api import session_record

    settled = (
        '{"spoken_text": "A table for four, noted.", "escalate": false, '
        '"state_updates": {"party": "4", "day": "Friday"}}'
    )
    moved = (
        '{"spoken_text": "Saturday then.", "escalate": false, '
        '"state_updates": {"day": "Saturday", "time": null}}'
    )
    script = ProviderScript([settled, moved])
    async with agent(tmp_path, script) as client:
        created = (await client.post("/v1/sessions", json={})).json()
        sid, auth = created["session_id"], {"Authorization": f"Bearer {created['token']}"}
        for key, text in (("k-1", "A table for four on Friday"), ("k-2", "Make it Saturday")):
            r = await client.post(
                f"/v1/sessions/{sid}/turns",
                json={"text": text, "idempotency_key": key},
                headers=auth,
            )
            assert r.status_code == 200 and r.json()["state"] == "completed", r.text
        session = (await client.get(f"/v1/sessions/{sid}", headers=auth)).json()
        assert session["orchestration_state"] == {"party": "4", "day": "Saturday"}
        app = client._transport.app  # type: ignore[attr-defined]
        shown = inspection(await session_record(app.state.store, sid))
        assert shown["memory"]["state"] == {"party": "4", "day": "Saturday"}
    # The second turn's model was told what the first settled.
    system = script.requests[1]["messages"][0]["content"]
    assert system.endswith("Settled so far: day: Friday; party: 4.")
    assert "state_updates" in script.requests[0]["messages"][0]["content"]
