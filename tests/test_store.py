"""The store on both backends: SQLite (default) and the PostgreSQL on 127.0.0.1:5432."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta

import pytest

from parley.store import Database, Store, TurnState, TurnTransitionError, database_url
from parley.store.repository import NotFound


def test_database_url_normalises_provider_urls(monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert database_url() == "sqlite+aiosqlite:///parley.db"
    assert database_url("postgres://u:p@h/db") == "postgresql+asyncpg://u:p@h/db"
    assert database_url("postgresql://u@h/db") == "postgresql+asyncpg://u@h/db"
    monkeypatch.setenv("DATABASE_URL", "sqlite:///x.db")
    assert database_url() == "sqlite+aiosqlite:///x.db"


async def test_session_record_round_trip(store: Store):
    record = await store.create_session(user_id="u1", consent={"recording": False})
    again = await store.get_session(record.id)
    assert again is not None
    assert (again.user_id, again.room_id, again.mode) == ("u1", f"room-{record.id}", "voice")
    assert again.consent == {"recording": False} and again.reconnect_count == 0
    assert await store.get_session("nope") is None


async def test_turn_state_machine_is_persisted_with_times(store: Store):
    session = await store.create_session()
    turn, created = await store.begin_turn(session.id, "key-1", user_text="hi")
    assert created and turn.state == "received" and turn.seq == 1
    await store.transition(turn.id, TurnState.PROCESSING)
    await store.transition(turn.id, TurnState.COMPLETED, result={"spoken": "hello"})
    with pytest.raises(TurnTransitionError):
        await store.transition(turn.id, TurnState.PROCESSING)
    steps = await store.transitions(turn.id)
    assert [(t.from_state, t.to_state) for t in steps] == [
        (None, "received"),
        ("received", "processing"),
        ("processing", "completed"),
    ]
    assert all(a.at <= b.at for a, b in itertools.pairwise(steps))
    record = await store.get_session(session.id)
    assert record is not None and record.turn_state == "completed"
    (stored,) = await store.turns(session.id)
    assert stored.result == {"spoken": "hello"}


async def test_idempotency_key_is_unique_per_session_even_under_concurrency(store: Store):
    session = await store.create_session()
    results = await asyncio.gather(*(store.begin_turn(session.id, "same-key") for _ in range(20)))
    assert sum(created for _, created in results) == 1
    assert len({turn.id for turn, _ in results}) == 1
    assert len(await store.turns(session.id)) == 1
    # The same key in another session is another turn.
    other = await store.create_session()
    _, created = await store.begin_turn(other.id, "same-key")
    assert created


async def test_unknown_session_is_a_clear_error(store: Store):
    with pytest.raises(NotFound, match="unknown session"):
        await store.begin_turn("missing", "k")
    with pytest.raises(NotFound, match="unknown turn"):
        await store.transition(10_000, TurnState.PROCESSING)


async def test_segments_final_and_revised(store: Store):
    session = await store.create_session()
    await store.add_segment(session.id, 1, 1, "I want to by a ticket")
    await store.add_segment(session.id, 1, 2, "for tomorrow")
    await store.add_segment(session.id, 1, 1, "I want to buy a ticket", revised=True)
    segments = await store.segments(session.id)
    assert [(s.segment_id, s.kind, s.text) for s in segments] == [
        (1, "revised", "I want to buy a ticket"),
        (2, "final", "for tomorrow"),
    ]


async def test_delete_session_erases_everything_under_it(store: Store):
    keep = await store.create_session()
    gone = await store.create_session()
    for record in (keep, gone):
        turn, _ = await store.begin_turn(record.id, "k")
        await store.add_segment(record.id, turn.seq, 1, "hello")
        await store.add_timeline(record.id, "turn.ended", turn_seq=turn.seq, data={"eou_ms": 300})
    assert await store.delete_session(gone.id)
    assert await store.get_session(gone.id) is None
    assert not await store.turns(gone.id)
    assert not await store.segments(gone.id)
    assert not await store.timeline(gone.id)
    assert not await store.delete_session(gone.id)
    # The other session is untouched.
    assert len(await store.segments(keep.id)) == 1
    assert [e.stage for e in await store.timeline(keep.id)] == ["turn.ended"]


async def test_retention_purges_old_transcripts(store: Store):
    session = await store.create_session()
    await store.add_segment(session.id, 1, 1, "old words")
    future = datetime.now(UTC) + timedelta(seconds=5)
    assert await store.purge_transcripts_before(future - timedelta(days=30)) == 0
    assert await store.purge_transcripts_before(future) == 1
    assert not await store.segments(session.id)


async def test_stored_transcripts_can_be_redacted(tmp_path):
    from parley.telemetry import Redactor

    db = Database(f"sqlite:///{tmp_path / 'r.db'}")
    await db.migrate()
    store = Store(db, redact=Redactor())
    session = await store.create_session()
    turn, _ = await store.begin_turn(session.id, "k", user_text="mail me at bob@example.com")
    await store.add_segment(session.id, 1, 1, "card 4111 1111 1111 1111 please")
    await store.transition(turn.id, TurnState.PROCESSING)
    await store.transition(
        turn.id, TurnState.COMPLETED, result={"spoken": "I'll mail bob@example.com"}
    )
    (stored,) = await store.turns(session.id)
    assert stored.user_text == "mail me at [REDACTED:email]"
    assert stored.result == {"spoken": "I'll mail [REDACTED:email]"}
    assert [s.text for s in await store.segments(session.id)] == ["card [REDACTED:card] please"]
    # The same request retried still matches its stored (redacted) form.
    assert store.stored_text("mail me at bob@example.com") == stored.user_text
    await db.close()


async def test_turn_claims_are_exclusive_and_lapsed_ones_are_taken_over(store: Store):
    session = await store.create_session()
    turn, _ = await store.begin_turn(session.id, "k", user_text="Book a table")
    claims = await asyncio.gather(*(store.claim_turn(turn.id, f"p{i}", 30) for i in range(10)))
    winners = [c for c in claims if c is not None]
    assert len(winners) == 1 and winners[0][1] is False  # a fresh claim, not a takeover
    owner = winners[0][0].owner
    assert owner is not None and await store.renew_lease(turn.id, owner, 30)
    assert await store.claim_turn(turn.id, "other", 30) is None  # the lease holds
    await store.checkpoint(turn.id, {"envelope": {"spoken_text": "Booked."}})

    assert await store.renew_lease(turn.id, owner, -1)  # as if its process died long ago
    taken = await store.claim_turn(turn.id, "rescuer", 30)
    assert taken is not None and taken[1] is True and taken[0].owner == "rescuer"
    assert taken[0].result == {"envelope": {"spoken_text": "Booked."}}
    assert not await store.renew_lease(turn.id, owner, 30)  # the old owner lost it
    moves = [(t.from_state, t.to_state, t.detail) for t in await store.transitions(turn.id)]
    assert moves == [
        (None, "received", None),
        ("received", "processing", None),
        ("processing", "processing", f"taken over from {owner}"),
    ]


async def test_voice_loop_turns_without_a_lease_are_never_taken_over(store: Store):
    session = await store.create_session()
    turn, _ = await store.begin_turn(session.id, "voice-1")
    await store.transition(turn.id, TurnState.PROCESSING)
    assert await store.claim_turn(turn.id, "api", 30) is None


async def test_memory_and_state_are_kept_on_the_session(store: Store):
    session = await store.create_session()
    assert (await store.get_session(session.id)).memory is None  # type: ignore[union-attr]
    await store.save_memory(session.id, {"summary": "Caller: a table for four", "covered": 6})
    state = await store.update_state(session.id, {"party": "4", "day": "Friday"})
    assert state == {"party": "4", "day": "Friday"}
    # A later update sets some keys and removes those set to null.
    state = await store.update_state(session.id, {"day": None, "time": "7 pm"})
    record = await store.get_session(session.id)
    assert record is not None
    assert record.memory == {"summary": "Caller: a table for four", "covered": 6}
    assert record.orchestration_state == state == {"party": "4", "time": "7 pm"}
    with pytest.raises(NotFound):
        await store.update_state("nope", {"x": "y"})


async def test_retention_purges_summaries_with_the_transcripts(store: Store):
    old, new = await store.create_session(), await store.create_session()
    for s in (old, new):
        await store.save_memory(s.id, {"summary": "the caller's words", "covered": 4})
    await store.purge_transcripts_before(datetime.now(UTC) + timedelta(seconds=1))
    assert (await store.get_session(old.id)).memory is None  # type: ignore[union-attr]
    # Only sessions older than the cutoff lose theirs.
    await store.save_memory(new.id, {"summary": "kept", "covered": 2})
    await store.purge_transcripts_before(datetime.now(UTC) - timedelta(days=1))
    assert (await store.get_session(new.id)).memory == {"summary": "kept", "covered": 2}  # type: ignore[union-attr]


async def test_a_revised_turn_patches_its_segments_and_user_text_at_once(store: Store):
    session = await store.create_session()
    turn, _ = await store.begin_turn(session.id, "k", user_text="book a ta ble for two")
    await store.add_segment(session.id, turn.seq, 1, "book a ta")
    await store.add_segment(session.id, turn.seq, 2, "ble for two")
    revised = {1: "book a table", 2: "for two"}
    assert await store.revise_turn(session.id, turn.seq, revised, "book a table for two")
    segments = await store.segments(session.id)
    assert [(s.segment_id, s.kind, s.text) for s in segments] == [
        (1, "revised", "book a table"),
        (2, "revised", "for two"),
    ]
    assert all(s.revised_at is not None for s in segments)
    (stored,) = await store.turns(session.id)
    assert stored.user_text == "book a table for two"
    # A reconnect's history (and a replay) reads the corrected words.
    messages, _ = await store.conversation(session.id)
    assert messages == [("user", "book a table for two")]
    assert not await store.revise_turn(session.id, turn.seq + 1, revised, "nothing here")
