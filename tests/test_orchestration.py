"""The action envelope and the orchestration endpoint: malformed model output is
repaired, retried or rejected — never passed on — and one idempotency key runs once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from parley.config import Settings
from parley.engines import ChatMessage
from parley.orchestration import EnvelopeError, OrchestrationError, Orchestrator, parse_envelope
from parley.server import create_app


def test_valid_and_repairable_envelopes():
    ok = parse_envelope('{"spoken_text": " Hello. ", "escalate": false}')
    assert ok.spoken_text == "Hello." and ok.tool_calls == [] and not ok.escalate
    wrapped = parse_envelope('Sure! ```json\n{"spoken_text": "Hi", "escalate": true,}\n``` done')
    assert wrapped.spoken_text == "Hi" and wrapped.escalate


@pytest.mark.parametrize(
    "raw",
    [
        "I am not JSON at all",
        '{"escalate": false}',
        '{"spoken_text": "", "escalate": false}',
        '{"spoken_text": "Hi", "launch_missiles": true}',
        '{"spoken_text": "Hi", "tool_calls": [{"name": "x"}]}',
        "[1, 2, 3]",
    ],
)
def test_malformed_envelopes_are_rejected_with_a_reason(raw):
    with pytest.raises(EnvelopeError) as info:
        parse_envelope(raw)
    assert str(info.value)


class ScriptedLLM:
    """Answers from a script (one entry per call), counting calls; a test double."""

    def __init__(self, *outputs: str, delay: float = 0.0) -> None:
        self.outputs = list(outputs)
        self.calls = 0
        self.delay = delay

    async def complete_json(
        self, messages: Sequence[ChatMessage], schema: dict[str, object]
    ) -> str:
        self.calls += 1
        await asyncio.sleep(self.delay)
        return self.outputs[min(self.calls, len(self.outputs)) - 1]


async def test_orchestrator_retries_malformed_output_then_gives_up():
    llm = ScriptedLLM("oops", '{"spoken_text": "Second time lucky.", "escalate": false}')
    envelope = await Orchestrator(llm, "Be brief.").respond([], "hi")
    assert envelope.spoken_text == "Second time lucky." and llm.calls == 2
    with pytest.raises(OrchestrationError, match="no valid envelope"):
        await Orchestrator(ScriptedLLM("never json"), "Be brief.").respond([], "hi")


@pytest.fixture
async def api(tmp_path) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    llm = ScriptedLLM('{"spoken_text": "It opens at nine.", "escalate": false}', delay=0.2)
    settings = Settings(server={"database_url": f"sqlite:///{tmp_path / 'o.db'}"})
    app = create_app(settings, engines=SimpleNamespace(llm=llm))  # type: ignore[arg-type]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://parley") as client:
            yield client, llm


async def session_headers(client: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
    created = (await client.post("/v1/sessions", json={})).json()
    return created["session_id"], {"Authorization": f"Bearer {created['token']}"}


async def test_twenty_concurrent_requests_with_one_key_execute_once(api):
    client, llm = api
    sid, headers = await session_headers(client)
    body = {"text": "When do you open?", "segment_ids": [1], "idempotency_key": "k-1"}
    responses = await asyncio.gather(
        *(client.post(f"/v1/sessions/{sid}/turns", json=body, headers=headers) for _ in range(20))
    )
    assert [r.status_code for r in responses] == [200] * 20
    payloads = [r.json() for r in responses]
    assert llm.calls == 1
    assert sum(not p["replayed"] for p in payloads) == 1
    assert len({str(p["envelope"]) for p in payloads}) == 1
    assert payloads[0]["envelope"]["spoken_text"] == "It opens at nine."
    # A later retry is answered from the store, still without a model call.
    again = await client.post(f"/v1/sessions/{sid}/turns", json=body, headers=headers)
    assert again.json()["replayed"] and llm.calls == 1
    # The same key for a different request is a conflict, not a silent replay.
    other = await client.post(
        f"/v1/sessions/{sid}/turns", json={**body, "text": "Something else"}, headers=headers
    )
    assert other.status_code == 409 and "different request" in other.json()["detail"]


async def test_malformed_model_output_fails_the_turn_cleanly(api):
    client, llm = api
    llm.outputs = ["{not json", "still not json"]
    sid, headers = await session_headers(client)
    body = {"text": "Hello?", "idempotency_key": "k-bad"}
    r = await client.post(f"/v1/sessions/{sid}/turns", json=body, headers=headers)
    assert r.status_code == 200
    answer = r.json()
    # Never the model's output: a fixed apology, and the turn is failed with the reason.
    assert answer["state"] == "failed" and "invalid JSON" in answer["error"]
    assert answer["envelope"]["spoken_text"].startswith("Sorry")
    assert "not json" not in str(answer)
    record = (await client.get(f"/v1/sessions/{sid}/timeline", headers=headers)).json()
    (turn,) = record["turns"]
    assert turn["state"] == "failed" and "invalid JSON" in turn["result"]["error"]
    # Its key does not run again either: the stored outcome is replayed.
    r = await client.post(f"/v1/sessions/{sid}/turns", json=body, headers=headers)
    assert r.json()["replayed"] and r.json()["state"] == "failed"
    assert llm.calls == 2


def test_output_cut_off_mid_way_is_repaired_not_invented():
    envelope = parse_envelope(
        '{"spoken_text": "The store opens at nine", "follow_up_prompts": ["Ho'
    )
    assert envelope.spoken_text == "The store opens at nine"
    assert envelope.follow_up_prompts == ["Ho"] and not envelope.escalate


async def test_turn_requests_need_a_valid_token_and_body(api):
    client, _ = api
    sid, headers = await session_headers(client)
    r = await client.post(f"/v1/sessions/{sid}/turns", json={"text": "hi", "idempotency_key": "k"})
    assert r.status_code == 401
    r = await client.post(f"/v1/sessions/{sid}/turns", json={"text": ""}, headers=headers)
    assert r.status_code == 422
