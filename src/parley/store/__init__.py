"""Where state lives: sessions, turns and their transitions, transcript segments, tool
executions and timeline events — SQLite by default, PostgreSQL when DATABASE_URL says so."""

from parley.store.db import Database, database_url
from parley.store.repository import Store
from parley.store.turn_states import TurnState, TurnTransitionError

__all__ = ["Database", "Store", "TurnState", "TurnTransitionError", "database_url"]
