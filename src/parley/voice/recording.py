"""What a VoiceSession records in the store: its turns (with every state transition),
final transcript segments, timeline events and what its provider calls cost (per turn
and for the session: ``voice/costing.py``). Never audio, never partials.

Writes go through a queue drained by one task per session, so the audio path never
waits on the database and the writes of a session keep their order.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from parley.store import Store, TurnState
from parley.telemetry import get_logger
from parley.telemetry.costs import CallCost, PriceTable
from parley.telemetry.usage import Usage
from parley.voice.costing import CostBook

log = get_logger(__name__)

Write = Callable[[], Awaitable[None]]


class RecordObserver(Protocol):
    """Shown what is recorded, as it is recorded (the metrics observer)."""

    def turn_finished(self, turn_id: int, state: str) -> None: ...

    def timeline(self, stage: str, turn_id: int | None, data: dict[str, Any]) -> None: ...

    def usage(self, call: CallCost) -> None: ...


class SessionRecorder:
    def __init__(
        self,
        store: Store,
        session_id: str,
        observer: RecordObserver | None = None,
        prices: PriceTable | None = None,
    ) -> None:
        self._store = store
        self._session_id = session_id
        self._observer = observer
        self._prices = prices or PriceTable()
        self._costs = CostBook(self._prices.currency)
        # voice turn id -> the stored turn's id and number (set by the writes, once the
        # turn is stored as this turn: never an older turn's row)
        self._turns: dict[int, int] = {}
        self._seqs: dict[int, int] = {}
        self._open: set[int] = set()  # turns started and not finished (set by the callers)
        self._queue: asyncio.Queue[Write | None] = asyncio.Queue()
        self._worker = asyncio.create_task(self._drain(), name="recorder")

    # ---- called by the session (never blocks) ------------------------------------------

    def stored_text(self, text: str) -> str:
        """``text`` as the store keeps spoken words (redacted when it redacts them)."""
        return self._store.stored_text(text)

    def turn_started(self, turn_id: int, text: str) -> None:
        self._open.add(turn_id)
        # A key of its own for every voice turn: the loop's numbers are reused (a dropped
        # turn gives its number to the next) and restart from the store's on a reconnect,
        # so a key built from them could name an older turn and replay its result.
        key = f"voice-{uuid.uuid4().hex}"

        async def write() -> None:
            turn, created = await self._store.begin_turn(self._session_id, key, user_text=text)
            if not created:  # cannot happen with a fresh key; never adopt another turn
                raise RuntimeError(f"idempotency key {key} already used")
            await self._store.transition(turn.id, TurnState.PROCESSING)
            self._turns[turn_id] = turn.id
            self._seqs[turn_id] = turn.seq
            if turn.seq != turn_id:
                # Only when other turns (the HTTP endpoint's) were stored in this session
                # meanwhile: the record keeps the store's number.
                log.warning("voice turn stored under another number", turn_id=turn_id, seq=turn.seq)

        self._queue.put_nowait(write)

    def turn_finished(self, turn_id: int, state: TurnState, result: dict[str, Any]) -> None:
        if turn_id not in self._open:
            return  # never started (the greeting, a draft): nothing to finish
        self._open.discard(turn_id)
        if self._observer is not None:
            self._observer.turn_finished(turn_id, state.value)
        cost, gained = self._costs.finish(turn_id)
        if cost is not None:
            result = {**result, "cost": cost.to_json()}
        session_cost = None if gained is None else gained.to_json()

        async def write() -> None:
            stored = self._turns.get(turn_id)
            if stored is not None:
                await self._store.transition(
                    stored, state, result=result, session_cost=session_cost
                )
            elif session_cost is not None:  # the turn's row was never written
                await self._store.add_cost(self._session_id, session_cost)

        self._queue.put_nowait(write)

    def usage(self, turn_id: int | None, usage: Usage) -> None:
        """A provider call made for turn ``turn_id`` (None: for the session itself)."""
        call = self._prices.price(usage)
        if self._observer is not None:
            self._observer.usage(call)
        if not self._costs.is_late(turn_id):
            self._costs.add(turn_id, call)
            return
        cost = self._costs.one(call).to_json()

        async def write() -> None:
            assert turn_id is not None
            stored = self._turns.get(turn_id)
            await self._store.add_cost(self._session_id, cost, turn_id=stored)

        self._queue.put_nowait(write)

    async def stored_turn_id(self, turn_id: int) -> int | None:
        """The stored id of voice turn ``turn_id`` (what the tool ledger keys on), once
        the queued writes before this call are done; None if it was never stored."""
        found: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()

        async def write() -> None:
            if not found.done():
                found.set_result(self._turns.get(turn_id))

        self._queue.put_nowait(write)
        return await found

    def segment(self, turn_id: int, segment_id: int, text: str) -> None:
        async def write() -> None:
            seq = self._seqs.get(turn_id)
            if seq is None:
                log.warning("recorder: segment of a turn never stored", turn_id=turn_id)
                return
            await self._store.add_segment(self._session_id, seq, segment_id, text)

        self._queue.put_nowait(write)

    def revision(self, turn_id: int, segments: dict[int, str], text: str) -> None:
        """Patch turn ``turn_id``'s stored segments and user text with a revised final."""

        async def write() -> None:
            seq = self._seqs.get(turn_id)
            if seq is None:
                log.warning("recorder: revision of a turn never stored", turn_id=turn_id)
                return
            await self._store.revise_turn(self._session_id, seq, segments, text)

        self._queue.put_nowait(write)

    def event(self, stage: str, turn_id: int | None, data: dict[str, Any]) -> None:
        if self._observer is not None:
            self._observer.timeline(stage, turn_id, data)

        async def write() -> None:
            seq = None if turn_id is None else self._seqs.get(turn_id)
            stored = data if seq is not None or turn_id is None else {**data, "voice_turn": turn_id}
            await self._store.add_timeline(self._session_id, stage, turn_seq=seq, data=stored)

        self._queue.put_nowait(write)

    def memory(self, memory: dict[str, Any]) -> None:
        """The summary of the turns that left the prompt's window (replaces the last)."""

        async def write() -> None:
            await self._store.save_memory(self._session_id, memory)

        self._queue.put_nowait(write)

    def state(self, updates: dict[str, Any]) -> None:
        """Merge an envelope's state updates into the conversation's state."""

        async def write() -> None:
            await self._store.update_state(self._session_id, updates)

        self._queue.put_nowait(write)

    async def close(self, timeout: float = 5.0) -> None:
        """Finish the queued writes (turns still open become cancelled), then stop."""
        # Tracked by the callers' side: a turn whose start is still queued is closed too.
        for turn_id in list(self._open):
            self.turn_finished(turn_id, TurnState.CANCELLED, {"reason": "session closed"})
        rest = self._costs.rest()
        if rest is not None:
            cost = rest.to_json()

            async def write() -> None:
                await self._store.add_cost(self._session_id, cost)

            self._queue.put_nowait(write)
        self._queue.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._worker), timeout)
        except TimeoutError:
            log.warning("recorder: writes still pending at close were dropped")
            self._worker.cancel()
            with contextlib.suppress(BaseException):
                await self._worker

    async def _drain(self) -> None:
        while (write := await self._queue.get()) is not None:
            try:
                await write()
            except Exception as exc:  # the conversation goes on; the record says what failed
                log.warning("recorder: write failed", error=repr(exc))
