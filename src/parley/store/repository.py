"""Store: the operations the server and the voice loop need, one transaction each."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, delete, func, select, update
from sqlalchemy.exc import IntegrityError

from parley.store.db import Database
from parley.store.models import (
    SessionRecord,
    TimelineEvent,
    ToolExecution,
    TranscriptSegment,
    Turn,
    TurnTransition,
    utcnow,
)
from parley.store.turn_states import TurnState, check_transition


class NotFound(LookupError):
    """No such session or turn."""


class Store:
    def __init__(self, db: Database, redact: Callable[[str], str] | None = None) -> None:
        self.db = db
        self._redact = redact

    def stored_text(self, text: str) -> str:
        """``text`` as the store keeps it (redacted when configured)."""
        return self._redact(text) if self._redact is not None else text

    def _stored_result(self, result: dict[str, Any]) -> dict[str, Any]:
        if self._redact is None:
            return result
        out = dict(result)
        for key in ("spoken", "heard"):
            if isinstance(out.get(key), str):
                out[key] = self._redact(out[key])
        envelope = out.get("envelope")
        if isinstance(envelope, dict) and isinstance(envelope.get("spoken_text"), str):
            out["envelope"] = {**envelope, "spoken_text": self._redact(envelope["spoken_text"])}
        return out

    # ---- sessions ---------------------------------------------------------------------------

    async def create_session(
        self,
        *,
        user_id: str | None = None,
        mode: str = "voice",
        consent: dict[str, Any] | None = None,
        session_id: str | None = None,
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
        )
        async with self.db.session() as s:
            s.add(record)
        return record

    async def get_session(self, session_id: str) -> SessionRecord | None:
        async with self.db.session() as s:
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

    async def conversation(
        self, session_id: str, *, before_seq: int | None = None
    ) -> tuple[list[tuple[str, str]], int]:
        """The conversation as stored — (role, text) pairs from the turns (those before
        ``before_seq`` if given), the assistant's side being what was spoken (or, when
        interrupted, heard) — and the last included turn's seq."""
        messages: list[tuple[str, str]] = []
        last_seq = 0
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
        return messages, last_seq

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

    # ---- turns ------------------------------------------------------------------------------

    async def begin_turn(
        self, session_id: str, idempotency_key: str, *, user_text: str | None = None
    ) -> tuple[Turn, bool]:
        """Record a received turn; with a key already used in this session, return that
        turn instead (``created`` False). Safe under concurrent calls with one key: the
        unique (session, key) constraint decides which insert wins."""
        try:
            async with self.db.session() as s:
                if await s.get(SessionRecord, session_id) is None:
                    raise NotFound(f"unknown session {session_id}")
                seq = await s.scalar(
                    select(func.coalesce(func.max(Turn.seq), 0)).where(
                        Turn.session_id == session_id
                    )
                )
                now = utcnow()
                turn = Turn(
                    session_id=session_id,
                    seq=int(seq or 0) + 1,
                    idempotency_key=idempotency_key,
                    state=TurnState.RECEIVED.value,
                    user_text=None if user_text is None else self.stored_text(user_text),
                    created_at=now,
                    updated_at=now,
                )
                s.add(turn)
                await s.flush()
                s.add(TurnTransition(turn_id=turn.id, from_state=None, to_state=turn.state, at=now))
                await self._set_session_turn_state(s, session_id, turn.state)
            return turn, True
        except IntegrityError:
            existing = await self.find_turn(session_id, idempotency_key)
            if existing is None:
                raise
            return existing, False

    async def find_turn(self, session_id: str, idempotency_key: str) -> Turn | None:
        async with self.db.session() as s:
            return await s.scalar(
                select(Turn).where(
                    Turn.session_id == session_id, Turn.idempotency_key == idempotency_key
                )
            )

    async def transition(
        self,
        turn_id: int,
        new_state: TurnState,
        *,
        result: dict[str, Any] | None = None,
        detail: str | None = None,
    ) -> Turn:
        """Move a turn to ``new_state`` (checked against the state machine), persisting the
        transition and its time."""
        async with self.db.session() as s:
            query = select(Turn).where(Turn.id == turn_id)
            if not self.db.is_sqlite:
                query = query.with_for_update()  # SQLite serialises writers already
            turn = await s.scalar(query)
            if turn is None:
                raise NotFound(f"unknown turn {turn_id}")
            current = TurnState(turn.state)
            check_transition(current, new_state)
            now = utcnow()
            turn.state = new_state.value
            turn.updated_at = now
            if result is not None:
                turn.result = self._stored_result(result)
            s.add(
                TurnTransition(
                    turn_id=turn.id,
                    from_state=current.value,
                    to_state=new_state.value,
                    at=now,
                    detail=detail,
                )
            )
            await self._set_session_turn_state(s, turn.session_id, new_state.value)
        return turn

    async def claim_turn(
        self, turn_id: int, owner: str, lease_secs: float
    ) -> tuple[Turn, bool] | None:
        """Claim a turn for ``owner`` for ``lease_secs``: a received turn, or a processing
        one whose lease lapsed (its process died). Returns ``(turn, recovering)`` —
        ``recovering`` True for a takeover — or None when someone else holds it. Each
        attempt is one conditional UPDATE, so of any number of racing claims one wins."""
        now = utcnow()
        lease = now + timedelta(seconds=lease_secs)
        attempts = (
            (TurnState.RECEIVED, Turn.state == TurnState.RECEIVED.value),
            (
                TurnState.PROCESSING,
                (Turn.state == TurnState.PROCESSING.value)
                & Turn.lease_expires_at.is_not(None)
                & (Turn.lease_expires_at < now),
            ),
        )
        for from_state, condition in attempts:
            async with self.db.session() as s:
                previous = await s.scalar(select(Turn.owner).where(Turn.id == turn_id))
                updated = await s.execute(
                    update(Turn)
                    .where(Turn.id == turn_id, condition)
                    .values(
                        state=TurnState.PROCESSING.value,
                        owner=owner,
                        lease_expires_at=lease,
                        updated_at=now,
                    )
                )
                if cast(CursorResult[Any], updated).rowcount != 1:
                    continue
                recovering = from_state is TurnState.PROCESSING
                s.add(
                    TurnTransition(
                        turn_id=turn_id,
                        from_state=from_state.value,
                        to_state=TurnState.PROCESSING.value,
                        at=now,
                        detail=f"taken over from {previous}" if recovering else None,
                    )
                )
                turn = await s.get(Turn, turn_id, populate_existing=True)
                assert turn is not None
                await self._set_session_turn_state(s, turn.session_id, turn.state)
            return turn, recovering
        return None

    async def renew_lease(self, turn_id: int, owner: str, lease_secs: float) -> bool:
        """Extend ``owner``'s claim; False when it no longer holds the turn."""
        async with self.db.session() as s:
            updated = await s.execute(
                update(Turn)
                .where(
                    Turn.id == turn_id,
                    Turn.owner == owner,
                    Turn.state == TurnState.PROCESSING.value,
                )
                .values(lease_expires_at=utcnow() + timedelta(seconds=lease_secs))
            )
            return cast(CursorResult[Any], updated).rowcount == 1

    async def checkpoint(self, turn_id: int, result: dict[str, Any]) -> None:
        """Save a processing turn's progress (e.g. its envelope before the tools run), so
        a process that takes it over resumes rather than asks the model again."""
        async with self.db.session() as s:
            await s.execute(
                update(Turn)
                .where(Turn.id == turn_id, Turn.state == TurnState.PROCESSING.value)
                .values(result=self._stored_result(result), updated_at=utcnow())
            )

    async def transitions(self, turn_id: int) -> Sequence[TurnTransition]:
        async with self.db.session() as s:
            rows = await s.scalars(
                select(TurnTransition)
                .where(TurnTransition.turn_id == turn_id)
                .order_by(TurnTransition.id)
            )
            return rows.all()

    async def turns(self, session_id: str) -> Sequence[Turn]:
        async with self.db.session() as s:
            rows = await s.scalars(
                select(Turn).where(Turn.session_id == session_id).order_by(Turn.seq)
            )
            return rows.all()

    async def _set_session_turn_state(self, s: Any, session_id: str, state: str) -> None:
        record = await s.get(SessionRecord, session_id)
        if record is not None:
            record.turn_state = state

    # ---- tool ledger ------------------------------------------------------------------------

    async def claim_tool(
        self, turn_id: int, call_id: str, tool: str, arguments: dict[str, Any]
    ) -> tuple[ToolExecution, bool]:
        """Record that (turn, call) is about to run; ``created`` False when it was claimed
        before (by this or another process): the unique constraint decides races."""
        try:
            async with self.db.session() as s:
                execution = ToolExecution(
                    turn_id=turn_id,
                    call_id=call_id,
                    tool=tool,
                    arguments=arguments,
                    status="running",
                    started_at=utcnow(),
                )
                s.add(execution)
            return execution, True
        except IntegrityError:
            existing = await self.tool_execution(turn_id, call_id)
            if existing is None:
                raise
            return existing, False

    async def finish_tool(self, execution_id: int, status: str, result: dict[str, Any]) -> None:
        async with self.db.session() as s:
            execution = await s.get(ToolExecution, execution_id)
            if execution is None:
                raise NotFound(f"unknown tool execution {execution_id}")
            execution.status = status
            execution.result = result
            execution.finished_at = utcnow()

    async def tool_execution(self, turn_id: int, call_id: str) -> ToolExecution | None:
        async with self.db.session() as s:
            return await s.scalar(
                select(ToolExecution).where(
                    ToolExecution.turn_id == turn_id, ToolExecution.call_id == call_id
                )
            )

    # ---- transcripts and timeline -----------------------------------------------------------

    async def add_segment(
        self, session_id: str, turn_seq: int, segment_id: int, text: str, *, revised: bool = False
    ) -> TranscriptSegment:
        """Store a final transcript segment, or patch it in place with a revised final."""
        async with self.db.session() as s:
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
        async with self.db.session() as s:
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
        async with self.db.session() as s:
            rows = await s.scalars(
                select(TimelineEvent)
                .where(TimelineEvent.session_id == session_id)
                .order_by(TimelineEvent.id)
            )
            return rows.all()
