"""A voice session's cost book: each provider call priced as it is reported, held under
its turn until the turn's record is written (the turn's cost goes into its result, and
with it into the session's total, in one write).

Calls are told under the turn whose work made them (``SessionCore._spawn(…, turn_id=)``):
the turn's transcriptions, drafts, reply and the barge-in checks made while it was
spoken. Calls of no turn — the greeting (turn 0), a person's words after a handoff —
are the session's own: they join the session's total with the next turn written, or at
close. A call reported after its turn was written (a reply cancelled by a barge-in
reports what it used as it unwinds) is *late*: it is added to the turn's record and the
session's by a write of its own.
"""

from __future__ import annotations

from parley.telemetry.costs import CallCost, CostSummary

GREETING = 0
"""The greeting's turn number: no caller turn, so its calls are the session's."""


class CostBook:
    def __init__(self, currency: str) -> None:
        self.currency = currency
        self._pending: dict[int | None, CostSummary] = {}
        self._written: set[int] = set()

    def is_late(self, turn_id: int | None) -> bool:
        """The turn's record is written: a call of it now needs a write of its own."""
        return turn_id is not None and turn_id in self._written

    def add(self, turn_id: int | None, call: CallCost) -> None:
        key = None if turn_id == GREETING else turn_id
        self._pending.setdefault(key, CostSummary(self.currency)).add(call)

    def finish(self, turn_id: int) -> tuple[CostSummary | None, CostSummary | None]:
        """The turn's record is being written: its cost (None if it made no call), and
        what the session's total gains with it (the turn's and the session's own calls
        so far; None if nothing)."""
        self._written.add(turn_id)
        turn = self._pending.pop(turn_id, None)
        own = self._pending.pop(None, None)
        gained = CostSummary(self.currency)
        for part in (turn, own):
            if part is not None:
                gained.merge(part)
        return turn, (None if gained.empty else gained)

    def rest(self) -> CostSummary | None:
        """Every call not yet written (at close: turns never stored, the session's own)."""
        gained = CostSummary(self.currency)
        for part in self._pending.values():
            gained.merge(part)
        self._pending.clear()
        return None if gained.empty else gained

    def one(self, call: CallCost) -> CostSummary:
        """A late call as a summary of its own."""
        return CostSummary.of([call], self.currency)
