"""Store: the operations the server and the voice loop need, one transaction each."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from parley.store.leases import Claim, Lease, owner_id
from parley.store.models import (
    SessionRecord,
    TimelineEvent,
    ToolExecution,
    TranscriptSegment,
    Turn,
    TurnTransition,
    utcnow,
)
from parley.store.turns import NotFound, TurnStore
from parley.telemetry.costs import merged

__all__ = ["Claim", "Lease", "NotFound", "Store", "merge_state", "owner_id"]


HUMAN_SAID = "human.said"
"""The timeline stage of a person's words, once they took over a voice session."""


def merge_state(state: dict[str, Any], updates: dict[str, Any]) -> dict[str, Any]:
    """``state`` with ``updates`` applied: keys set, or removed when set to None."""
    merged = {**state, **updates}
    return {k: v for k, v in merged.items() if v is not None}


class Store(TurnStore):
    """Sessions, transcripts and the timeline here; turns, claims and tool records in
    ``TurnStore`` (store/turns.py)."""

    # ---- sessions ---------------------------------------------------------------------------

    async def create_session(
        self,
        *,
        user_id: str | None = None,
        mode: str = "voice",
        consent: dict[str, Any] | None = None,
        session_id: str | None = None,
        call_sid: str | None = None,
    ) -> SessionRecord:
        sid = session_id or uuid.uuid4().hex
        record = SessionRecord(
            id=sid,
            user_id=user_id,
            room_id=f"room-{sid}",
            mode=mode,
            started_at=utcnow(),
            orchestration_state={},
            reconnect_status="new",
            reconnect_count=0,
            consent=consent or {},
            call_sid=call_sid,
        )
        async with self.db.session() as s:
            s.add(record)
        return record

    async def get_session(self, session_id: str) -> SessionRecord | None:
        async with self.db.session(read_only=True) as s:
            return await s.get(SessionRecord, session_id)

    async def mark_connected(self, session_id: str) -> bool:
        """Record a transport connection; True when it is a reconnect (counted)."""
        async with self.db.session() as s:
            record = await s.get(SessionRecord, session_id)
            if record is None:
                raise NotFound(f"unknown session {session_id}")
            reconnect = record.reconnect_status != "new"
            if reconnect:
                record.reconnect_count += 1
            record.reconnect_status = "reconnected" if reconnect else "connected"
            return reconnect

    async def mark_disconnected(self, session_id: str) -> None:
        async with self.db.session() as s:
            record = await s.get(SessionRecord, session_id)
            if record is not None:
                record.reconnect_status = "disconnected"

    async def end_session(self, session_id: str) -> None:
        """Mark the session ended (once: the first end's time stays). Its tokens are
        refused from then on (see ``transports/session_limits.py``)."""
        async with self.db.session() as s:
            record = await s.get(SessionRecord, session_id)
            if record is not None and record.ended_at is None:
                record.ended_at = utcnow()

    async def add_cost(
        self, session_id: str, cost: dict[str, Any], *, turn_id: int | None = None
    ) -> None:
        """Add a cost summary to the session's and, with ``turn_id``, to that turn's
        (calls that ended after the turn's record was written): one transaction."""
        async with self.db.session() as s:
            if turn_id is not None:
                # The turn's row before the session's, as a transition locks them.
                turn = await s.get(Turn, turn_id, with_for_update=True, populate_existing=True)
                if turn is not None:
                    result = dict(turn.result or {})
                    result["cost"] = merged(result.get("cost"), cost)
                    turn.result = result
            await self._add_session_cost(s, session_id, cost)

    async def conversation(
        self, session_id: str, *, before_seq: int | None = None
    ) -> tuple[list[tuple[str, str]], int]:
        """The conversation as stored — (role, text) pairs from the turns (those before
        ``before_seq`` if given), the assistant's side being what was spoken (or, when
        interrupted, heard) — and the last included turn's seq."""
        messages: list[tuple[str, str]] = []
        last_seq = 0
        # What a person who took the call said, after the turn it followed (human.said).
        person: dict[int | None, list[str]] = {}
        async with self.db.session(read_only=True) as s:
            rows = await s.scalars(
                select(TimelineEvent)
                .where(TimelineEvent.session_id == session_id, TimelineEvent.stage == HUMAN_SAID)
                .order_by(TimelineEvent.id)
            )
            for row in rows:
                text = (row.data or {}).get("text")
                if isinstance(text, str) and text:
                    person.setdefault(row.turn_seq, []).append(text)
        messages += [("human", text) for text in person.pop(None, [])]
        for turn in await self.turns(session_id):
            if before_seq is not None and turn.seq >= before_seq:
                continue
            last_seq = max(last_seq, turn.seq)
            if turn.user_text:
                messages.append(("user", turn.user_text))
            result = turn.result or {}
            said = result.get("spoken") or result.get("heard")
            if isinstance(said, str) and said:
                messages.append(("assistant", said))
            messages += [("human", text) for text in person.pop(turn.seq, [])]
        return messages, last_seq

    async def save_memory(self, session_id: str, memory: dict[str, Any]) -> None:
        """Keep the summary of the session's older turns (replaces the previous one)."""
        async with self.db.session() as s:
            record = await s.get(SessionRecord, session_id)
            if record is not None:
                record.memory = memory

    async def update_state(self, session_id: str, updates: dict[str, Any]) -> dict[str, Any]:
        """Merge ``updates`` into the conversation's state (a key set to null is removed);
        returns the state as stored."""
        async with self.db.session() as s:
            record = await s.get(SessionRecord, session_id)
            if record is None:
                raise NotFound(f"unknown session {session_id}")
            state = merge_state(record.orchestration_state or {}, updates)
            record.orchestration_state = state  # a new dict: the JSON column sees the change
            return state

    async def delete_session(self, session_id: str) -> bool:
        """Erase the session and everything recorded under it. False if it did not exist."""
        async with self.db.session() as s:
            if await s.get(SessionRecord, session_id) is None:
                return False
            turn_ids = select(Turn.id).where(Turn.session_id == session_id)
            # Children first, explicitly: correct whether or not the database cascades.
            await s.execute(delete(ToolExecution).where(ToolExecution.turn_id.in_(turn_ids)))
            await s.execute(delete(TurnTransition).where(TurnTransition.turn_id.in_(turn_ids)))
            await s.execute(delete(Turn).where(Turn.session_id == session_id))
            await s.execute(
                delete(TranscriptSegment).where(TranscriptSegment.session_id == session_id)
            )
            await s.execute(delete(TimelineEvent).where(TimelineEvent.session_id == session_id))
            await s.execute(delete(SessionRecord).where(SessionRecord.id == session_id))
        return True

    # ---- transcripts and timeline -----------------------------------------------------------

    async def add_segment(
        self, session_id: str, turn_seq: int, segment_id: int, text: str, *, revised: bool = False
    ) -> TranscriptSegment:
        """Store a final transcript segment, or patch it in place with a revised final."""
        async with self.db.session() as s:
            return await self._put_segment(s, session_id, turn_seq, segment_id, text, revised)

    async def revise_turn(
        self, session_id: str, turn_seq: int, segments: dict[int, str], user_text: str
    ) -> bool:
        """A revised final of a whole turn, in one transaction: its segments patched in
        place (``kind`` "revised", ``revised_at``) and its user text — what a reconnect's
        history and a replay read — replaced. False if the turn is not stored."""
        async with self.db.session() as s:
            turn = await s.scalar(
                select(Turn).where(Turn.session_id == session_id, Turn.seq == turn_seq)
            )
            if turn is None:
                return False
            turn.user_text = self.stored_text(user_text)
            for segment_id, text in sorted(segments.items()):
                await self._put_segment(s, session_id, turn_seq, segment_id, text, True)
        return True

    async def _put_segment(
        self,
        s: AsyncSession,
        session_id: str,
        turn_seq: int,
        segment_id: int,
        text: str,
        revised: bool,
    ) -> TranscriptSegment:
        existing = await s.scalar(
            select(TranscriptSegment).where(
                TranscriptSegment.session_id == session_id,
                TranscriptSegment.turn_seq == turn_seq,
                TranscriptSegment.segment_id == segment_id,
            )
        )
        text = self.stored_text(text)
        if existing is not None and revised:
            existing.text = text
            existing.kind = "revised"
            existing.revised_at = utcnow()
            return existing
        if existing is not None:
            return existing  # a repeated final: idempotent
        segment = TranscriptSegment(
            session_id=session_id,
            turn_seq=turn_seq,
            segment_id=segment_id,
            kind="revised" if revised else "final",
            text=text,
            created_at=utcnow(),
        )
        s.add(segment)
        return segment

    async def segments(self, session_id: str) -> Sequence[TranscriptSegment]:
        async with self.db.session(read_only=True) as s:
            rows = await s.scalars(
                select(TranscriptSegment)
                .where(TranscriptSegment.session_id == session_id)
                .order_by(TranscriptSegment.turn_seq, TranscriptSegment.segment_id)
            )
            return rows.all()

    async def purge_transcripts_before(self, cutoff: datetime) -> int:
        """Retention: delete transcript segments created before ``cutoff``; returns how many."""
        async with self.db.session() as s:
            result = await s.execute(
                delete(TranscriptSegment).where(TranscriptSegment.created_at < cutoff)
            )
            # A summary is made of the caller's words: it goes with the transcripts.
            await s.execute(
                update(SessionRecord)
                .where(SessionRecord.started_at < cutoff, SessionRecord.memory.is_not(None))
                .values(memory=None)
            )
            return int(getattr(result, "rowcount", 0) or 0)

    async def add_timeline(
        self,
        session_id: str,
        stage: str,
        *,
        turn_seq: int | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        async with self.db.session() as s:
            s.add(
                TimelineEvent(
                    session_id=session_id,
                    turn_seq=turn_seq,
                    stage=stage,
                    at=utcnow(),
                    data=data or {},
                )
            )

    async def timeline(self, session_id: str) -> Sequence[TimelineEvent]:
        async with self.db.session(read_only=True) as s:
            rows = await s.scalars(
                select(TimelineEvent)
                .where(TimelineEvent.session_id == session_id)
                .order_by(TimelineEvent.id)
            )
            return rows.all()

    async def recent_sessions(self, limit: int = 50) -> Sequence[SessionRecord]:
        """The newest sessions first (what an operator's session list shows)."""
        async with self.db.session(read_only=True) as s:
            rows = await s.scalars(
                select(SessionRecord).order_by(SessionRecord.started_at.desc()).limit(limit)
            )
            return rows.all()
