"""Fenced turn leases on both backends: a stalled owner's late writes are refused, leases
run on the database's clock, any process name fits, migrations run once."""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text

from conftest import _create_postgres_database, _drop_postgres_database
from parley.orchestration.envelope import ToolCall
from parley.orchestration.ledger import ToolLedger
from parley.orchestration.tools import ToolRegistry
from parley.store import Database, LeaseLost, Store, TurnState
from parley.store import models as store_models

BOOKING = {
    "type": "object",
    "properties": {"party": {"type": "integer"}},
    "required": ["party"],
}


def booking_ledger(store: Store, calls: list[str]) -> ToolLedger:
    registry = ToolRegistry()

    @registry.tool(BOOKING, description="Book a table.")
    async def book_table(arguments: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        calls.append(idempotency_key)
        return {"confirmation": f"T-{len(calls)}"}

    return ToolLedger(store, registry, wait_secs=0.2)


async def test_a_stalled_owner_cannot_overwrite_the_owner_that_took_over(store: Store):
    session = await store.create_session()
    turn, _ = await store.begin_turn(session.id, "k", user_text="Book for two")
    first = await store.claim_turn(turn.id, "first", 0.05)
    assert first is not None and not first.recovering
    await asyncio.sleep(0.3)  # the first owner stalls past its lease (a GC pause, a hang)
    second = await store.claim_turn(turn.id, "second", 30)
    assert second is not None and second.recovering
    assert second.lease.token == first.lease.token + 1

    calls: list[str] = []
    ledger = booking_ledger(store, calls)
    call = ToolCall(id="c1", name="book_table", arguments={"party": 2})
    done = await ledger.run(turn.id, call, recovering=True, lease=second.lease)
    assert done.status == "succeeded" and calls == [f"{turn.id}:c1"]
    await store.checkpoint(turn.id, {"envelope": {"by": "second"}}, lease=second.lease)

    # The first owner wakes up and carries on as if it still held the turn: refused.
    assert not await store.renew(first.lease, 30)
    with pytest.raises(LeaseLost):
        await store.checkpoint(turn.id, {"envelope": {"by": "first"}}, lease=first.lease)
    with pytest.raises(LeaseLost):  # starting another side effect
        await ledger.run(
            turn.id, ToolCall(id="c2", name="book_table", arguments={"party": 2}), lease=first.lease
        )
    execution = await store.tool_execution(turn.id, "c1")
    assert execution is not None
    with pytest.raises(LeaseLost):  # overwriting the successor's tool outcome
        await store.finish_tool(execution.id, "failed", {"error": "late"}, lease=first.lease)
    with pytest.raises(LeaseLost):
        await store.transition(
            turn.id, TurnState.COMPLETED, result={"by": "first"}, lease=first.lease
        )
    assert calls == [f"{turn.id}:c1"] and await store.tool_execution(turn.id, "c2") is None

    await store.transition(
        turn.id, TurnState.COMPLETED, result={"by": "second"}, lease=second.lease
    )
    (stored,) = await store.turns(session.id)
    assert stored.state == "completed" and stored.result == {"by": "second"}
    execution = await store.tool_execution(turn.id, "c1")
    assert execution is not None and execution.status == "succeeded"
    assert execution.result == {"confirmation": "T-1"}
    assert [t.to_state for t in await store.transitions(turn.id)] == [
        "received",
        "processing",
        "processing",
        "completed",
    ]


async def test_the_lease_is_held_on_the_database_clock(store: Store, monkeypatch):
    """Two app servers whose clocks disagree by an hour: the one ahead must not think
    the other's fresh lease lapsed."""
    session = await store.create_session()
    turn, _ = await store.begin_turn(session.id, "k")
    assert await store.claim_turn(turn.id, "on-time", 30) is not None
    ahead = store_models.utcnow() + timedelta(hours=1)
    import parley.store.repository as repository

    for module in (repository, store_models):
        monkeypatch.setattr(module, "utcnow", lambda: ahead, raising=False)
    try:
        import parley.store.turns as turns_module

        monkeypatch.setattr(turns_module, "utcnow", lambda: ahead)
    except ImportError:  # the store before the split
        pass
    assert await store.claim_turn(turn.id, "clock-ahead", 30) is None


async def test_a_long_process_name_fits_the_owner_column(store: Store):
    host = "h" * 200
    session = await store.create_session()
    names = (f"{host}:4242:0123abcd", f"{host}:4242:89abcdef")
    claimed = []
    for i, name in enumerate(names):
        turn, _ = await store.begin_turn(session.id, f"k{i}")
        claim = await store.claim_turn(turn.id, name, 30)
        assert claim is not None
        claimed.append(claim[0])
        assert claim[0].owner is not None and len(claim[0].owner) <= 64
        assert await store.renew_lease(turn.id, name, 30)  # the same name, the same owner
    assert claimed[0].owner != claimed[1].owner  # distinct processes stay distinct


def test_the_app_names_itself_within_the_owner_column(monkeypatch, tmp_path):
    import socket

    from parley.config import Settings
    from parley.server import create_app

    monkeypatch.setattr(socket, "gethostname", lambda: "node-" + "x" * 195)
    settings = Settings(server={"database_url": f"sqlite:///{tmp_path / 'a.db'}"})
    app = create_app(settings, engines=object())  # type: ignore[arg-type]
    assert 0 < len(app.state.instance_id) <= 64


# Each process imports first and migrates when told to, so that they really race.
MIGRATE = "import asyncio, sys; from parley.store import Database; sys.stdin.readline(); "
MIGRATE += "asyncio.run(Database(sys.argv[1]).migrate())"


async def test_processes_starting_at_once_migrate_a_fresh_postgresql_once():
    """Several server processes start together on one new database: each migrates at
    start-up, and all must come up (one creates the schema, the others find it). The
    race is timing-dependent, so it is run a few times."""
    for _ in range(3):
        url = await _create_postgres_database()
        try:
            errors = await _migrate_at_once(url, processes=4)
            assert errors == []
            db = Database(url)
            async with db.engine.connect() as conn:
                rows = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
            assert len(rows) == 1
            store = Store(db)
            session = await store.create_session()
            assert (await store.begin_turn(session.id, "k"))[1]
            await db.close()
        finally:
            await _drop_postgres_database(url)


async def _migrate_at_once(url: str, processes: int) -> list[str]:
    """Start ``processes`` processes that migrate ``url`` at one signal; their errors."""
    started = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            MIGRATE,
            url,
            stdin=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(processes)
    ]
    outcomes = await asyncio.wait_for(
        asyncio.gather(*(p.communicate(b"go\n") for p in started)), 120
    )
    return [
        err.decode()[-300:] for p, (_, err) in zip(started, outcomes, strict=True) if p.returncode
    ]
