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
        '{"spoken_text": "Hi", "tool_calls": [{"name": "x", "arguments": "all"}]}',
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
        self.prompts: list[list[ChatMessage]] = []

    async def complete_json(
        self, messages: Sequence[ChatMessage], schema: dict[str, object]
    ) -> str:
        self.calls += 1
        self.prompts.append(list(messages))
        await asyncio.sleep(self.delay)
        return self.outputs[min(self.calls, len(self.outputs)) - 1]


async def test_orchestrator_retries_malformed_output_then_gives_up():
    llm = ScriptedLLM("oops", '{"spoken_text": "Second time lucky.", "escalate": false}')
    orchestrator = Orchestrator(llm, "Be brief.")
    envelope = await orchestrator.respond([], "hi")
    assert envelope.spoken_text == "Second time lucky." and llm.calls == 2
    assert (orchestrator.retries, orchestrator.failures) == (1, 0)  # what metrics read
    failing = Orchestrator(ScriptedLLM("never json"), "Be brief.")
    with pytest.raises(OrchestrationError, match="no valid envelope"):
        await failing.respond([], "hi")
    assert (failing.retries, failing.failures) == (1, 1)


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


def test_output_cut_off_mid_way_is_repaired_for_speech_only():
    """Cut-off output keeps the words said so far, to be spoken, and nothing else (not a
    half-written follow-up); if it would act it is rejected: ``"time": "19`` would close
    to a time that fits the tool's schema."""
    envelope = parse_envelope(
        '{"spoken_text": "The store opens at nine", "follow_up_prompts": ["Ho'
    )
    assert envelope.spoken_text == "The store opens at nine"
    assert envelope.follow_up_prompts == [] and not envelope.escalate
    said = parse_envelope('{"escalate": false, "spoken_text": "The store opens at ni')
    assert said.spoken_text == "The store opens at ni" and said.tool_calls == []
    booked = '{"spoken_text": "Booked.", "escalate": false, "tool_calls": ['
    for cut in [
        booked + '{"name": "book_table", "arguments": {"party": 2, "time": "19',
        booked + CALL,  # whole arguments, but the envelope was not finished
        booked,  # closes to an empty list, while the speech promises a booking
        '{"spoken_text": "Let me get someone.", "escalate": true',
    ]:
        with pytest.raises(EnvelopeError, match="cut off"):
            parse_envelope(cut)
    # The engine's word counts too: whole-looking JSON stopped by the token budget.
    with pytest.raises(EnvelopeError, match="cut off"):
        parse_envelope(BOOK % CALL, cut_off=True)
    assert parse_envelope(BOOK % CALL).tool_calls[0].arguments["time"] == "19:00"


def test_spoken_text_the_grammar_closed_at_its_bound_keeps_whole_sentences():
    """The grammar makes a rambling model close its words at SPOKEN_MAX_CHARS (instead
    of running into the token budget and being asked again); what it wrote there is
    usually a half word, so only the whole sentences are said."""
    import json

    from parley.orchestration.envelope import MODEL_SCHEMA, SPOKEN_MAX_CHARS

    assert MODEL_SCHEMA["properties"]["spoken_text"]["maxLength"] == SPOKEN_MAX_CHARS
    sentence = "She is a great team player and has a positive attitude. "
    rambling = (sentence * 20)[:SPOKEN_MAX_CHARS]
    assert not rambling.endswith(". ")
    envelope = parse_envelope(json.dumps({"spoken_text": rambling, "escalate": False}))
    assert envelope.spoken_text.endswith("attitude.")
    assert rambling.startswith(envelope.spoken_text)
    assert len(envelope.spoken_text) > SPOKEN_MAX_CHARS - len(sentence)
    # Under the bound nothing is cut, whatever it ends with; one long clause is kept.
    short = "The store opens at nine and closes"
    assert parse_envelope(json.dumps({"spoken_text": short})).spoken_text == short
    clause = "a" * SPOKEN_MAX_CHARS
    assert parse_envelope(json.dumps({"spoken_text": clause})).spoken_text == clause


async def test_turn_requests_need_a_valid_token_and_body(api):
    client, _ = api
    sid, headers = await session_headers(client)
    r = await client.post(f"/v1/sessions/{sid}/turns", json={"text": "hi", "idempotency_key": "k"})
    assert r.status_code == 401
    r = await client.post(f"/v1/sessions/{sid}/turns", json={"text": ""}, headers=headers)
    assert r.status_code == 422


BOOK = '{"spoken_text": "Booked.", "escalate": false, "tool_calls": [%s]}'
CALL = '{"name": "book_table", "arguments": {"party": 2, "time": "19:00"}}'


@pytest.fixture
async def tool_api(tmp_path) -> AsyncIterator[tuple[httpx.AsyncClient, Any, Any]]:
    import booking_tools

    booking_tools.BOOKINGS.clear()
    llm = ScriptedLLM(BOOK % CALL)
    settings = Settings(
        server={"database_url": f"sqlite:///{tmp_path / 't.db'}"},
        agent={"tools_module": "booking_tools:registry"},
    )
    app = create_app(settings, engines=SimpleNamespace(llm=llm))  # type: ignore[arg-type]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://parley") as client:
            yield client, llm, app


def test_the_model_schema_offers_only_real_tools_and_calls_get_stable_ids():
    import booking_tools
    from parley.orchestration.envelope import model_instructions, model_schema

    schema = model_schema(list(booking_tools.registry))
    (choice,) = schema["properties"]["tool_calls"]["items"]["anyOf"]
    assert choice["properties"]["name"] == {"const": "book_table"}
    assert "book_table" in model_instructions(list(booking_tools.registry))
    envelope = parse_envelope(BOOK % f"{CALL}, {CALL}")
    assert [c.id for c in envelope.tool_calls] == ["call_1", "call_2"]
    # State updates are asked of a model that can write them (not the embedded one).
    assert "state_updates" in schema["properties"]
    assert "state_updates" in model_instructions(list(booking_tools.registry))
    tools = list(booking_tools.registry)
    assert "state_updates" not in model_schema(tools, state=False)["properties"]
    assert "state_updates" not in model_instructions(tools, state=False)


async def test_envelope_tool_calls_run_through_the_ledger_once(tool_api):
    import booking_tools

    client, llm, _ = tool_api
    sid, headers = await session_headers(client)
    body = {"text": "A table for two at seven", "idempotency_key": "k-book"}
    answers = await asyncio.gather(
        *(client.post(f"/v1/sessions/{sid}/turns", json=body, headers=headers) for _ in range(5))
    )
    payloads = [a.json() for a in answers]
    assert {p["tool_results"][0]["status"] for p in payloads} == {"succeeded"}
    assert {p["tool_results"][0]["result"]["confirmation"] for p in payloads} == {"T-1"}
    assert len(booking_tools.BOOKINGS) == 1 and llm.calls == 1
    assert booking_tools.BOOKINGS[0][1].endswith(":call_1")


def same_id_calls(*parties: int) -> str:
    """Tool calls to which the model gave one id of its own."""
    calls = (
        f'{{"id": "c", "name": "book_table", "arguments": {{"party": {n}, "time": "19:00"}}}}'
        for n in parties
    )
    return BOOK % ", ".join(calls)


def test_call_ids_are_the_servers_whatever_the_model_wrote():
    envelope = parse_envelope(same_id_calls(2, 4))
    assert [c.id for c in envelope.tool_calls] == ["call_1", "call_2"]


async def test_two_calls_the_model_gave_one_id_each_run_for_themselves(tool_api):
    import booking_tools

    client, llm, _ = tool_api
    llm.outputs = [same_id_calls(2, 4)]
    sid, headers = await session_headers(client)
    body = {"text": "Two tables, for two and for four", "idempotency_key": "k-two"}
    answer = (await client.post(f"/v1/sessions/{sid}/turns", json=body, headers=headers)).json()
    results = answer["tool_results"]
    assert [r["call_id"] for r in results] == ["call_1", "call_2"]
    assert [r["result"]["confirmation"] for r in results] == ["T-1", "T-2"]
    assert [arguments["party"] for arguments, _ in booking_tools.BOOKINGS] == [2, 4]


WHOLE_BOOKING = BOOK % CALL
CUT_BOOKING = WHOLE_BOOKING[: WHOLE_BOOKING.index("19:00") + 2]  # ends in "time": "19


async def test_cut_off_tool_calls_are_asked_again_and_never_run(tool_api):
    import booking_tools

    client, llm, _ = tool_api
    llm.outputs = [CUT_BOOKING, BOOK % CALL]
    sid, headers = await session_headers(client)
    body = {"text": "A table for two at seven", "idempotency_key": "k-cut-1"}
    answer = (await client.post(f"/v1/sessions/{sid}/turns", json=body, headers=headers)).json()
    # The retry asked for less (a greedy model asked the same way is cut the same way)
    # and only its whole answer ran.
    assert answer["state"] == "completed" and llm.calls == 2
    assert "cut off" in llm.prompts[1][-1].content and "cut off" not in str(llm.prompts[0])
    assert [arguments for arguments, _ in booking_tools.BOOKINGS] == [{"party": 2, "time": "19:00"}]
    # Cut off every time: the turn fails with the apology, and nothing is booked.
    llm.outputs = [CUT_BOOKING]
    body = {"text": "And another at seven", "idempotency_key": "k-cut-2"}
    answer = (await client.post(f"/v1/sessions/{sid}/turns", json=body, headers=headers)).json()
    assert answer["state"] == "failed" and "cut off" in answer["error"]
    assert answer["envelope"]["spoken_text"].startswith("Sorry") and answer["tool_results"] == []
    assert len(booking_tools.BOOKINGS) == 1 and llm.calls == 4


async def test_a_turn_left_by_a_dead_process_resumes_from_its_checkpoint(tool_api):
    """As a crashed process leaves it: the envelope checkpointed, call_1 done, call_2
    cut off mid-call, the lease lapsed. The retry takes over without asking the model
    again, replays call_1 and settles call_2 as unknown (book_table is not retry-safe)."""
    import booking_tools

    client, llm, app = tool_api
    store = app.state.store
    sid, headers = await session_headers(client)
    text = "Two tables please"
    turn, _ = await store.begin_turn(sid, "k-crash", user_text=text)
    assert await store.claim_turn(turn.id, "dead-process", 30)
    envelope = parse_envelope(BOOK % f"{CALL}, {CALL}")
    await store.checkpoint(turn.id, {"envelope": envelope.model_dump()})
    args = envelope.tool_calls[0].arguments
    first, _ = await store.claim_tool(turn.id, "call_1", "book_table", args)
    await store.finish_tool(first.id, "succeeded", {"confirmation": "T-0"})
    await store.claim_tool(turn.id, "call_2", "book_table", args)
    await store.renew_lease(turn.id, "dead-process", -1)

    r = await client.post(
        f"/v1/sessions/{sid}/turns",
        json={"text": text, "idempotency_key": "k-crash"},
        headers=headers,
    )
    assert r.status_code == 200 and r.json()["state"] == "completed"
    assert [t["status"] for t in r.json()["tool_results"]] == ["succeeded", "unknown"]
    assert llm.calls == 0 and booking_tools.BOOKINGS == []


def test_loading_tools_leaves_the_modules_registry_as_it_was():
    """Two apps in one process (tests, workers) each load the agent's tools: the
    module's registry is copied, so the webhooks are not added to it twice."""
    import booking_tools
    from parley.config import WebhookToolSettings
    from parley.orchestration.tools import load_registry

    hooks = [WebhookToolSettings(name="notify", url="http://127.0.0.1:9/notify")]
    first = load_registry("booking_tools:registry", hooks)
    second = load_registry("booking_tools:registry", hooks)
    assert [t.name for t in first] == [t.name for t in second] == ["book_table", "notify"]
    assert [t.name for t in booking_tools.registry] == ["book_table"]
