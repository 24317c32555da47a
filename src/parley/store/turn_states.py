"""The persisted turn state machine: received → processing → completed | failed |
cancelled | interrupted."""

from __future__ import annotations

from enum import StrEnum


class TurnState(StrEnum):
    RECEIVED = "received"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


ALLOWED: dict[TurnState, frozenset[TurnState]] = {
    TurnState.RECEIVED: frozenset({TurnState.PROCESSING, TurnState.CANCELLED, TurnState.FAILED}),
    TurnState.PROCESSING: frozenset(
        {TurnState.COMPLETED, TurnState.FAILED, TurnState.CANCELLED, TurnState.INTERRUPTED}
    ),
    TurnState.COMPLETED: frozenset(),
    TurnState.FAILED: frozenset(),
    TurnState.CANCELLED: frozenset(),
    TurnState.INTERRUPTED: frozenset(),
}


class TurnTransitionError(ValueError):
    """A transition the state machine does not allow (e.g. completed → processing)."""


def check_transition(current: TurnState, new: TurnState) -> None:
    if new not in ALLOWED[current]:
        raise TurnTransitionError(f"turn cannot go from {current.value} to {new.value}")


def is_final(state: TurnState) -> bool:
    return not ALLOWED[state]


class TurnTransitionLost(TurnTransitionError):
    """The turn changed between reading its state and writing the new one: another
    writer moved it first (e.g. it was cancelled while it completed). The stored state is
    the other writer's; this transition did not happen."""


class LeaseLost(RuntimeError):
    """A claimed turn's owner wrote after losing the claim (its lease lapsed and another
    process took the turn over, or it freed it): the write was refused, the stored turn is
    the new owner's. The work must stop."""
