"""A turn's trace ids, derived from its session and turn ids (see telemetry.tracing)."""

from __future__ import annotations

import hashlib


def turn_trace_ids(session_id: str, turn_id: int) -> tuple[int, int]:
    """The trace id and the root span id of a session's turn: the same wherever computed,
    so log lines and spans agree without passing a context around."""
    digest = hashlib.sha256(f"parley-turn/{session_id}/{turn_id}".encode()).digest()
    return int.from_bytes(digest[:16], "big") or 1, int.from_bytes(digest[16:24], "big") or 1
