"""The tool ledger on both store backends: one invocation per (turn, call id), whatever
the retries, the concurrency or a run that died half-way."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from parley.orchestration.envelope import ToolCall
from parley.orchestration.ledger import ToolLedger
from parley.orchestration.tools import ToolRegistry
from parley.store import Store
from webhooks import webhook_recorder

BOOKING = {
    "type": "object",
    "properties": {"party": {"type": "integer", "minimum": 1}, "time": {"type": "string"}},
    "required": ["party", "time"],
    "additionalProperties": False,
}


def booking_registry(
    calls: list[tuple[dict[str, Any], str]], *, fail: bool = False
) -> ToolRegistry:
    registry = ToolRegistry()

    @registry.tool(BOOKING, description="Book a table.")
    async def book_table(arguments: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        calls.append((arguments, idempotency_key))
        await asyncio.sleep(0.05)  # long enough for concurrent retries to pile up
        if fail:
            raise RuntimeError("restaurant system down")
        return {"confirmation": f"T-{len(calls)}"}

    return registry


async def a_turn(store: Store) -> int:
    session = await store.create_session()
    turn, _ = await store.begin_turn(session.id, "k")
    return turn.id


async def test_concurrent_retries_invoke_a_side_effect_once(store: Store):
    calls: list[tuple[dict[str, Any], str]] = []
    ledger = ToolLedger(store, booking_registry(calls))
    turn_id = await a_turn(store)
    call = ToolCall(id="call-1", name="book_table", arguments={"party": 2, "time": "19:00"})
    outcomes = await asyncio.gather(*(ledger.run(turn_id, call) for _ in range(20)))
    assert len(calls) == 1 and calls[0][1] == f"{turn_id}:call-1"
    assert {o.status for o in outcomes} == {"succeeded"}
    assert {json.dumps(o.result) for o in outcomes} == {'{"confirmation": "T-1"}'}
    assert sum(not o.replayed for o in outcomes) == 1
    # Another call id in the same turn is another booking.
    other = await ledger.run(
        turn_id, ToolCall(id="call-2", name="book_table", arguments=call.arguments)
    )
    assert other.status == "succeeded" and len(calls) == 2


async def test_a_failed_tool_is_recorded_and_not_run_again(store: Store):
    calls: list[tuple[dict[str, Any], str]] = []
    ledger = ToolLedger(store, booking_registry(calls, fail=True))
    turn_id = await a_turn(store)
    call = ToolCall(id="c", name="book_table", arguments={"party": 4, "time": "20:00"})
    first = await ledger.run(turn_id, call)
    again = await ledger.run(turn_id, call)
    assert (
        first.status == again.status == "failed"
        and "restaurant system down" in first.result["error"]
    )
    assert again.replayed and len(calls) == 1


async def test_unknown_tools_and_bad_arguments_are_rejected(store: Store):
    calls: list[tuple[dict[str, Any], str]] = []
    ledger = ToolLedger(store, booking_registry(calls))
    turn_id = await a_turn(store)
    unknown = await ledger.run(turn_id, ToolCall(id="u", name="launch", arguments={}))
    assert unknown.status == "rejected" and "unknown tool" in unknown.result["error"]
    bad = await ledger.run(turn_id, ToolCall(id="b", name="book_table", arguments={"party": 0}))
    assert bad.status == "rejected" and "book_table" in bad.result["error"]
    assert calls == []
    stored = await store.tool_execution(turn_id, "b")
    assert stored is not None and stored.status == "rejected"


async def test_a_call_whose_run_died_is_never_run_again(store: Store):
    """A process that claimed the call and died before recording the outcome leaves it
    running; a retry reports the outcome unknown instead of booking twice."""
    calls: list[tuple[dict[str, Any], str]] = []
    ledger = ToolLedger(store, booking_registry(calls), wait_secs=0.3)
    turn_id = await a_turn(store)
    await store.claim_tool(turn_id, "c", "book_table", {"party": 2, "time": "19:00"})
    outcome = await ledger.run(
        turn_id, ToolCall(id="c", name="book_table", arguments={"party": 2, "time": "19:00"})
    )
    assert outcome.status == "unknown" and outcome.replayed and calls == []


@pytest.fixture
def webhook_server():
    with webhook_recorder(lambda seen: {"booked": True}) as (base, seen):
        yield f"{base}/hooks/book", seen


async def test_webhook_tool_is_called_once_with_the_idempotency_key(store: Store, webhook_server):
    url, seen = webhook_server
    registry = ToolRegistry()
    registry.webhook("book_table", url, BOOKING, description="Book via the restaurant's API.")
    ledger = ToolLedger(store, registry)
    turn_id = await a_turn(store)
    call = ToolCall(id="w1", name="book_table", arguments={"party": 3, "time": "18:30"})
    outcomes = [await ledger.run(turn_id, call) for _ in range(3)]
    assert [o.status for o in outcomes] == ["succeeded"] * 3
    assert outcomes[0].result == {"booked": True}
    assert seen == [(f"{turn_id}:w1", {"tool": "book_table", "arguments": call.arguments})]


async def test_recovery_settles_a_cut_off_call_as_unknown_unless_retry_safe(store: Store):
    """After a takeover (the owner's lease lapsed) a call still ``running`` was cut off:
    an ordinary tool is settled as unknown at once and not re-run; a retry-safe one is
    re-sent with the same idempotency key."""
    calls: list[tuple[dict[str, Any], str]] = []
    registry = booking_registry(calls)
    repeats: list[str] = []

    @registry.tool({"type": "object"}, retry_safe=True)
    async def send_sms(arguments: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        repeats.append(idempotency_key)
        return {"sent": True}

    ledger = ToolLedger(store, registry, wait_secs=30.0)
    turn_id = await a_turn(store)
    booking = ToolCall(id="b", name="book_table", arguments={"party": 2, "time": "19:00"})
    sms = ToolCall(id="s", name="send_sms", arguments={})
    for call in (booking, sms):
        await store.claim_tool(turn_id, call.id, call.name, call.arguments)

    unknown = await asyncio.wait_for(ledger.run(turn_id, booking, recovering=True), 5)
    assert unknown.status == "unknown" and calls == []
    resent = await ledger.run(turn_id, sms, recovering=True)
    assert resent.status == "succeeded" and repeats == [f"{turn_id}:s"]
    # Settled: later runs replay the record, recovering or not.
    for recovering in (False, True):
        assert (await ledger.run(turn_id, booking, recovering=recovering)).status == "unknown"
        assert (await ledger.run(turn_id, sms, recovering=recovering)).replayed
    assert calls == [] and len(repeats) == 1
