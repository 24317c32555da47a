"""Turn numbering and the turn state machine hold under concurrency on both backends:
SQLite (whose driver would begin a transaction only at the first write) and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from parley.store import Database, Store, TurnState, TurnTransitionError


async def test_concurrent_new_turns_get_one_number_each(store: Store):
    session = await store.create_session()
    results = await asyncio.gather(
        *(store.begin_turn(session.id, f"key-{i}", user_text=f"turn {i}") for i in range(12))
    )
    assert all(created for _, created in results)
    assert sorted(turn.seq for turn, _ in results) == list(range(1, 13))
    assert [t.seq for t in await store.turns(session.id)] == list(range(1, 13))
    # A key already used still answers with its turn, not a new number.
    again, created = await store.begin_turn(session.id, "key-3")
    assert not created and again.user_text == "turn 3"
    assert len(await store.turns(session.id)) == 12


async def test_a_session_cannot_hold_two_turns_with_one_number(store: Store):
    session = await store.create_session()
    await store.begin_turn(session.id, "k1")
    with pytest.raises(IntegrityError):
        async with store.db.session() as s:
            await s.execute(
                text(
                    "INSERT INTO turns (session_id, seq, idempotency_key, state, created_at,"
                    " updated_at) VALUES (:s, 1, 'k2', 'received', :t, :t)"
                ),
                {"s": session.id, "t": datetime.now(UTC)},
            )


async def test_racing_final_transitions_one_wins_the_other_is_refused(store: Store):
    session = await store.create_session()
    for attempt in range(20):
        turn, _ = await store.begin_turn(session.id, f"race-{attempt}")
        await store.transition(turn.id, TurnState.PROCESSING)
        outcomes = await asyncio.gather(
            store.transition(turn.id, TurnState.COMPLETED, result={"spoken": "done"}),
            store.transition(turn.id, TurnState.CANCELLED, result={"heard": "cancelled"}),
            return_exceptions=True,
        )
        won = [o for o in outcomes if not isinstance(o, BaseException)]
        lost = [o for o in outcomes if isinstance(o, BaseException)]
        assert len(won) == 1 and len(lost) == 1, f"attempt {attempt}: {outcomes}"
        # Lost: either it read the state after the winner wrote it (not allowed any
        # more) or before (TurnTransitionLost, a TurnTransitionError too).
        assert isinstance(lost[0], TurnTransitionError)
        (stored,) = [t for t in await store.turns(session.id) if t.id == turn.id]
        assert stored.state == won[0].state
        assert stored.result == (
            {"spoken": "done"} if stored.state == "completed" else {"heard": "cancelled"}
        )
        finals = [t for t in await store.transitions(turn.id) if t.from_state == "processing"]
        assert [t.to_state for t in finals] == [stored.state]


async def test_migrating_renumbers_turns_the_old_race_numbered_twice(tmp_path):
    """A database written before 0003 may hold one number twice in a session: the
    migration renumbers them in order instead of failing on the new unique index."""
    from alembic import command
    from alembic.config import Config

    from parley.store.db import MIGRATIONS

    db = Database(f"sqlite:///{tmp_path / 'old.db'}")

    def upgrade_to_0002(connection):  # type: ignore[no-untyped-def]
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = connection
        command.upgrade(config, "0002")

    async with db.engine.begin() as connection:
        await connection.run_sync(upgrade_to_0002)
    store = Store(db)
    session_id = "old-session"
    async with db.session() as s:
        # Raw SQL: today's model has columns (0004's call_sid) this old schema lacks.
        await s.execute(
            text(
                "INSERT INTO sessions (id, room_id, mode, started_at, orchestration_state,"
                " reconnect_status, reconnect_count, consent)"
                " VALUES (:s, :r, 'voice', :t, '{}', 'new', 0, '{}')"
            ),
            {"s": session_id, "r": f"room-{session_id}", "t": datetime.now(UTC)},
        )
        for key, seq in (("a", 1), ("b", 1), ("c", 2), ("d", 1)):
            await s.execute(
                text(
                    "INSERT INTO turns (session_id, seq, idempotency_key, state, created_at,"
                    " updated_at) VALUES (:s, :n, :k, 'completed', :t, :t)"
                ),
                {"s": session_id, "n": seq, "k": key, "t": datetime.now(UTC)},
            )
    await db.migrate()
    turns = await store.turns(session_id)
    assert [(t.idempotency_key, t.seq) for t in turns] == [("a", 1), ("b", 2), ("d", 3), ("c", 4)]
    turn, created = await store.begin_turn(session_id, "e")
    assert created and turn.seq == 5
    await db.close()
