"""Where state lives: sessions, turns and their transitions, transcript segments, tool
executions and timeline events — SQLite by default, PostgreSQL when DATABASE_URL says so."""

from parley.store.db import Database, database_url
from parley.store.repository import Claim, Lease, Store, owner_id
from parley.store.turn_states import LeaseLost, TurnState, TurnTransitionError, TurnTransitionLost

__all__ = [
    "Claim",
    "Database",
    "Lease",
    "LeaseLost",
    "Store",
    "TurnState",
    "TurnTransitionError",
    "TurnTransitionLost",
    "database_url",
    "owner_id",
]
