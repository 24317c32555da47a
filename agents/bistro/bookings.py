"""Juniper Bistro's bookings: the demo agent's tools (``agent.tools_module =
"bookings.py:registry"`` in agents/bistro/bookings.toml), as a business would write
them — a table booked or cancelled in the restaurant's own database, here a SQLite
file (``BISTRO_BOOKINGS_DB``, default ``./bistro-bookings.db``).

Each call carries Parley's idempotency key; a repeat of the same key (a crash
recovery) returns the booking it made, never a second one, so both tools are
retry-safe.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
from typing import Any

from parley.orchestration import ToolRegistry

registry = ToolRegistry()

LARGEST_PARTY = 8
"""Larger groups book the private room by email (the knowledge file says so)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bookings (
    reference TEXT PRIMARY KEY,
    idempotency_key TEXT UNIQUE NOT NULL,
    name TEXT NOT NULL,
    day TEXT NOT NULL,
    time TEXT NOT NULL,
    party INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'booked',
    cancel_key TEXT UNIQUE
)
"""


def database_path() -> str:
    return os.environ.get("BISTRO_BOOKINGS_DB", "bistro-bookings.db")


def _connect() -> sqlite3.Connection:
    db = sqlite3.connect(database_path(), timeout=5)
    db.execute(_SCHEMA)
    return db


def _book(arguments: dict[str, Any], key: str) -> dict[str, Any]:
    with _connect() as db:
        row = db.execute(
            "SELECT reference, name, day, time, party FROM bookings WHERE idempotency_key = ?",
            (key,),
        ).fetchone()
        if row is None:
            row = (
                f"JB-{secrets.token_hex(3).upper()}",
                arguments["name"].strip(),
                arguments["day"].strip(),
                arguments["time"].strip(),
                arguments["party"],
            )
            db.execute(
                "INSERT INTO bookings (reference, idempotency_key, name, day, time, party)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (row[0], key, *row[1:]),
            )
    reference, name, day, time, party = row
    return {"reference": reference, "name": name, "day": day, "time": time, "party": party}


def _cancel(reference: str, key: str) -> dict[str, Any]:
    with _connect() as db:
        row = db.execute(
            "SELECT status, cancel_key FROM bookings WHERE reference = ?", (reference,)
        ).fetchone()
        if row is None:
            return {"cancelled": False, "reason": f"no booking {reference}"}
        status, cancel_key = row
        if status == "cancelled" and cancel_key != key:
            return {"cancelled": False, "reason": f"{reference} was already cancelled"}
        db.execute(
            "UPDATE bookings SET status = 'cancelled', cancel_key = ? WHERE reference = ?",
            (key, reference),
        )
    return {"cancelled": True, "reference": reference}


@registry.tool(
    {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 80},
            "day": {"type": "string", "minLength": 1, "maxLength": 40},
            "time": {"type": "string", "minLength": 1, "maxLength": 20},
            "party": {"type": "integer", "minimum": 1, "maximum": LARGEST_PARTY},
        },
        "required": ["name", "day", "time", "party"],
        "additionalProperties": False,
    },
    retry_safe=True,
)
async def book_table(arguments: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
    """Book a table: the caller's name, the day, the time and how many people."""
    return await asyncio.to_thread(_book, arguments, idempotency_key)


@registry.tool(
    {
        "type": "object",
        "properties": {"reference": {"type": "string", "pattern": "^JB-[0-9A-F]{6}$"}},
        "required": ["reference"],
        "additionalProperties": False,
    },
    retry_safe=True,
)
async def cancel_booking(arguments: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
    """Cancel a booking by its reference (JB- and six characters)."""
    return await asyncio.to_thread(_cancel, arguments["reference"], idempotency_key)
