"""A Python tool module as a user would write one (``agent.tools_module``), recording
its side effects so tests can count them."""

from __future__ import annotations

from typing import Any

from parley.orchestration import ToolRegistry

registry = ToolRegistry()
BOOKINGS: list[tuple[dict[str, Any], str]] = []


@registry.tool(
    {
        "type": "object",
        "properties": {"party": {"type": "integer", "minimum": 1}, "time": {"type": "string"}},
        "required": ["party", "time"],
        "additionalProperties": False,
    }
)
async def book_table(arguments: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
    """Book a table for a party at a time."""
    BOOKINGS.append((arguments, idempotency_key))
    return {"confirmation": f"T-{len(BOOKINGS)}"}
