"""A process's claim on a turn: who holds it and with which fencing token."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import NamedTuple

from parley.store.models import OWNER_MAX, Turn


def owner_id(name: str) -> str:
    """``name`` as stored in ``turns.owner``: unchanged when it fits, else cut and suffixed
    with a hash of the whole, so it always fits and one process always gets one id (a
    long host name must not make every claim fail on PostgreSQL)."""
    if len(name) <= OWNER_MAX:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return f"{name[: OWNER_MAX - len(digest) - 1]}#{digest}"


@dataclass(frozen=True)
class Lease:
    """Proof of a claim: every write the owner makes checks ``owner`` and ``token`` in
    the same statement, and is refused (``LeaseLost``) once another claim succeeded."""

    turn_id: int
    owner: str
    token: int
    """The turn's ``fence`` as this claim set it."""


class Claim(NamedTuple):
    turn: Turn
    recovering: bool
    """True for a takeover from an owner whose lease lapsed."""
    lease: Lease
