"""The turn half of the Store: turns and their state machine, claims (fenced leases) and
the tool ledger's records — one transaction per operation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.exc import IntegrityError

from parley.store.db import Database
from parley.store.leases import Claim, Lease, owner_id
from parley.store.models import SessionRecord, ToolExecution, Turn, TurnTransition, utcnow
from parley.store.turn_states import LeaseLost, TurnState, TurnTransitionLost, check_transition
from parley.telemetry import get_logger
from parley.telemetry.costs import merged

log = get_logger(__name__)

NUMBERING_ATTEMPTS = 50
"""begin_turn's tries when the number it chose was taken meanwhile (each try sees at
least one more committed turn, so this bounds the session's concurrent new turns)."""


def _rowcount(result: Any) -> int:
    return int(cast(CursorResult[Any], result).rowcount)


def _fenced(lease: Lease | None) -> tuple[Any, ...]:
    """The conditions that make a write the claim ``lease``'s (none without one)."""
    if lease is None:
        return ()
    return (Turn.owner == lease.owner, Turn.fence == lease.token)


def _holds(turn: Turn, lease: Lease) -> bool:
    return turn.owner == lease.owner and turn.fence == lease.token


class NotFound(LookupError):
    """No such session or turn."""


class TurnStore:
    """Turns, their claims and their tool calls; ``Store`` adds sessions, transcripts and
    the timeline."""

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

    # ---- turns ------------------------------------------------------------------------------

    async def begin_turn(
        self, session_id: str, idempotency_key: str, *, user_text: str | None = None
    ) -> tuple[Turn, bool]:
        """Record a received turn, numbered after the session's last one; with a key
        already used in this session, return that turn instead (``created`` False).

        Safe under concurrent calls: the unique (session, key) constraint decides which
        of several inserts with one key wins, and the unique (session, seq) index refuses
        a number taken meanwhile — that insert numbers again."""
        for _ in range(NUMBERING_ATTEMPTS):
            try:
                return await self._insert_turn(session_id, idempotency_key, user_text), True
            except IntegrityError:
                existing = await self.find_turn(session_id, idempotency_key)
                if existing is not None:
                    return existing, False
                log.info("turn number taken meanwhile; numbering again", session_id=session_id)
        raise RuntimeError(f"could not number a turn of session {session_id}")

    async def _insert_turn(self, session_id: str, key: str, user_text: str | None) -> Turn:
        async with self.db.session() as s:
            # The session row's lock (PostgreSQL; SQLite's BEGIN IMMEDIATE holds the whole
            # database) makes one session's turns number one at a time.
            if await s.get(SessionRecord, session_id, with_for_update=True) is None:
                raise NotFound(f"unknown session {session_id}")
            seq = await s.scalar(
                select(func.coalesce(func.max(Turn.seq), 0)).where(Turn.session_id == session_id)
            )
            now = utcnow()
            turn = Turn(
                session_id=session_id,
                seq=int(seq or 0) + 1,
                idempotency_key=key,
                state=TurnState.RECEIVED.value,
                user_text=None if user_text is None else self.stored_text(user_text),
                created_at=now,
                updated_at=now,
            )
            s.add(turn)
            await s.flush()
            s.add(TurnTransition(turn_id=turn.id, from_state=None, to_state=turn.state, at=now))
            await self._set_session_turn_state(s, session_id, turn.state)
        return turn

    async def find_turn(self, session_id: str, idempotency_key: str) -> Turn | None:
        async with self.db.session(read_only=True) as s:
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
        lease: Lease | None = None,
        session_cost: dict[str, Any] | None = None,
    ) -> Turn:
        """Move a turn to ``new_state`` (checked against the state machine), persisting the
        transition and its time; ``session_cost`` (a cost summary) is added to the
        session's in the same transaction, so a turn's cost counts once.

        The write is conditional on the state read (and, with ``lease``, on the claim
        still being the owner's): if another writer moved the turn first this raises
        ``TurnTransitionLost`` (``LeaseLost`` if the turn was taken over) and changes
        nothing — of two racing transitions exactly one happens."""
        async with self.db.session() as s:
            turn = await s.get(Turn, turn_id)
            if turn is None:
                raise NotFound(f"unknown turn {turn_id}")
            current = TurnState(turn.state)
            if lease is not None and not _holds(turn, lease):
                raise self._lease_lost(lease, "transition", turn)
            check_transition(current, new_state)
            now = utcnow()
            values: dict[str, Any] = {"state": new_state.value, "updated_at": now}
            if result is not None:
                values["result"] = self._stored_result(result)
            updated = await s.execute(
                update(Turn)
                .where(Turn.id == turn_id, Turn.state == current.value, *_fenced(lease))
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            turn = await s.get(Turn, turn_id, populate_existing=True)
            assert turn is not None
            if _rowcount(updated) != 1:
                if lease is not None and not _holds(turn, lease):
                    raise self._lease_lost(lease, "transition", turn)
                log.warning(
                    "turn transition lost to another writer",
                    turn_id=turn_id,
                    expected=current.value,
                    wanted=new_state.value,
                    found=turn.state,
                )
                raise TurnTransitionLost(
                    f"turn {turn_id} moved to {turn.state} before {current.value} → "
                    f"{new_state.value} was written"
                )
            s.add(
                TurnTransition(
                    turn_id=turn_id,
                    from_state=current.value,
                    to_state=new_state.value,
                    at=now,
                    detail=detail,
                )
            )
            if session_cost:
                await self._add_session_cost(s, turn.session_id, session_cost)
            await self._set_session_turn_state(s, turn.session_id, new_state.value)
        return turn

    async def claim_turn(self, turn_id: int, owner: str, lease_secs: float) -> Claim | None:
        """Claim a turn for ``owner`` for ``lease_secs``: a received turn, or a processing
        one whose lease lapsed (its process died or stalled). Returns the turn, whether
        this is a takeover, and the ``Lease`` (with a new fencing token) every later
        write must show; None when someone else holds it. Each attempt is one
        conditional UPDATE, so of any number of racing claims one wins. Expiry is set and
        compared on the database's clock."""
        owner = owner_id(owner)
        clock = self.db.clock()
        attempts = (
            (TurnState.RECEIVED, Turn.state == TurnState.RECEIVED.value),
            (
                TurnState.PROCESSING,
                (Turn.state == TurnState.PROCESSING.value)
                & Turn.lease_until.is_not(None)
                & (Turn.lease_until < clock),
            ),
        )
        for from_state, condition in attempts:
            async with self.db.session() as s:
                previous = await s.scalar(select(Turn.owner).where(Turn.id == turn_id))
                now = utcnow()
                updated = await s.execute(
                    update(Turn)
                    .where(Turn.id == turn_id, condition)
                    .values(
                        state=TurnState.PROCESSING.value,
                        owner=owner,
                        fence=Turn.fence + 1,
                        lease_until=clock + lease_secs,
                        updated_at=now,
                    )
                    .execution_options(synchronize_session=False)
                )
                if _rowcount(updated) != 1:
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
            return Claim(turn, recovering, Lease(turn_id, owner, turn.fence))
        return None

    async def renew_lease(
        self, turn_id: int, owner: str, lease_secs: float, *, token: int | None = None
    ) -> bool:
        """Extend ``owner``'s claim to ``lease_secs`` from now (database clock; 0 frees
        it); False when it no longer holds the turn. With ``token`` (a ``Lease``'s), only
        that very claim is extended."""
        fence = () if token is None else (Turn.fence == token,)
        async with self.db.session() as s:
            updated = await s.execute(
                update(Turn)
                .where(
                    Turn.id == turn_id,
                    Turn.owner == owner_id(owner),
                    Turn.state == TurnState.PROCESSING.value,
                    *fence,
                )
                .values(lease_until=self.db.clock() + lease_secs)
                .execution_options(synchronize_session=False)
            )
            return _rowcount(updated) == 1

    async def renew(self, lease: Lease, lease_secs: float) -> bool:
        """``renew_lease`` for the claim ``lease`` proves."""
        return await self.renew_lease(lease.turn_id, lease.owner, lease_secs, token=lease.token)

    async def checkpoint(
        self, turn_id: int, result: dict[str, Any], *, lease: Lease | None = None
    ) -> None:
        """Save a processing turn's progress (e.g. its envelope before the tools run), so
        a process that takes it over resumes rather than asks the model again. With
        ``lease``, refused (``LeaseLost``) unless that claim still holds the turn."""
        async with self.db.session() as s:
            updated = await s.execute(
                update(Turn)
                .where(
                    Turn.id == turn_id,
                    Turn.state == TurnState.PROCESSING.value,
                    *_fenced(lease),
                )
                .values(result=self._stored_result(result), updated_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            if lease is not None and _rowcount(updated) != 1:
                raise self._lease_lost(lease, "checkpoint", await s.get(Turn, turn_id))

    async def _hold(self, s: Any, lease: Lease, what: str) -> None:
        """Within ``s``: check ``lease`` still holds its turn and keep it so until ``s``
        commits (FOR SHARE blocks a takeover's UPDATE on PostgreSQL; SQLite's write lock
        is held already)."""
        held = await s.scalar(
            select(Turn.id)
            .where(
                Turn.id == lease.turn_id,
                Turn.state == TurnState.PROCESSING.value,
                *_fenced(lease),
            )
            .with_for_update(read=True)
        )
        if held is None:
            raise self._lease_lost(lease, what, await s.get(Turn, lease.turn_id))

    def _lease_lost(self, lease: Lease, what: str, turn: Turn | None) -> LeaseLost:
        log.warning(
            "write refused: the claim on the turn was lost",
            turn_id=lease.turn_id,
            write=what,
            owner=lease.owner,
            # "fence", not "token": a "token=" in a log line is masked as a secret, and this
            # is no secret but the number that says which claim won.
            fence=lease.token,
            holder=None if turn is None else turn.owner,
            holder_fence=None if turn is None else turn.fence,
            state=None if turn is None else turn.state,
        )
        return LeaseLost(
            f"{what} of turn {lease.turn_id} refused: {lease.owner} (fence {lease.token}) "
            "no longer holds it"
        )

    async def transitions(self, turn_id: int) -> Sequence[TurnTransition]:
        async with self.db.session(read_only=True) as s:
            rows = await s.scalars(
                select(TurnTransition)
                .where(TurnTransition.turn_id == turn_id)
                .order_by(TurnTransition.id)
            )
            return rows.all()

    async def turns(self, session_id: str) -> Sequence[Turn]:
        async with self.db.session(read_only=True) as s:
            rows = await s.scalars(
                select(Turn).where(Turn.session_id == session_id).order_by(Turn.seq)
            )
            return rows.all()

    async def _set_session_turn_state(self, s: Any, session_id: str, state: str) -> None:
        record = await s.get(SessionRecord, session_id)
        if record is not None:
            record.turn_state = state

    async def _add_session_cost(self, s: Any, session_id: str, cost: dict[str, Any]) -> None:
        """Within ``s``: add a cost summary to the session's (read and written under the
        row's lock: a reconnect's writes never lose another connection's)."""
        record = await s.get(
            SessionRecord, session_id, with_for_update=True, populate_existing=True
        )
        if record is not None:
            record.cost = merged(record.cost, cost)

    # ---- tool ledger ------------------------------------------------------------------------

    async def claim_tool(
        self,
        turn_id: int,
        call_id: str,
        tool: str,
        arguments: dict[str, Any],
        *,
        lease: Lease | None = None,
    ) -> tuple[ToolExecution, bool]:
        """Record that (turn, call) is about to run; ``created`` False when it was claimed
        before (by this or another process): the unique constraint decides races. With
        ``lease``, refused (``LeaseLost``) unless that claim still holds the turn — a
        stalled owner does not start a side effect its successor owns."""
        try:
            async with self.db.session() as s:
                if lease is not None:
                    await self._hold(s, lease, "tool claim")
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

    async def finish_tool(
        self,
        execution_id: int,
        status: str,
        result: dict[str, Any],
        *,
        lease: Lease | None = None,
    ) -> None:
        """Record a call's outcome. With ``lease``, refused (``LeaseLost``) unless that
        claim still holds the call's turn: the outcome stays the new owner's."""
        async with self.db.session() as s:
            execution = await s.get(ToolExecution, execution_id)
            if execution is None:
                raise NotFound(f"unknown tool execution {execution_id}")
            if lease is not None:
                if lease.turn_id != execution.turn_id:
                    raise ValueError("the lease is for another turn than the tool call's")
                await self._hold(s, lease, "tool outcome")
            execution.status = status
            execution.result = result
            execution.finished_at = utcnow()

    async def tool_execution(self, turn_id: int, call_id: str) -> ToolExecution | None:
        async with self.db.session(read_only=True) as s:
            return await s.scalar(
                select(ToolExecution).where(
                    ToolExecution.turn_id == turn_id, ToolExecution.call_id == call_id
                )
            )
