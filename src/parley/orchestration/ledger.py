"""ToolLedger: every tool call recorded by (turn, call id); a side-effecting tool is never
invoked twice for the same call — not on a retry, not by a second process, not after a
crash."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from parley.orchestration.envelope import ToolCall
from parley.orchestration.tools import ToolArgumentsError, ToolRegistry
from parley.store import Lease, Store
from parley.telemetry import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class ToolOutcome:
    call_id: str
    status: str
    """succeeded | failed | rejected | unknown (claimed by a run that never finished)."""
    result: dict[str, Any]
    replayed: bool


class ToolLedger:
    def __init__(self, store: Store, registry: ToolRegistry, *, wait_secs: float = 30.0) -> None:
        self._store = store
        self._registry = registry
        self._wait_secs = wait_secs

    async def run(
        self,
        turn_id: int,
        call: ToolCall,
        *,
        recovering: bool = False,
        lease: Lease | None = None,
    ) -> ToolOutcome:
        """Run ``call`` of turn ``turn_id`` unless it ran (or started) before.

        ``recovering``: this process took the turn over from one whose claim lapsed, so
        a call still marked ``running`` was cut off mid-way: it is re-sent with the same
        idempotency key if the tool is retry-safe, otherwise settled as ``unknown``.

        ``lease``: the caller's claim on the turn (orchestration endpoint turns). Every
        record is then written only while that claim holds: a stalled owner whose turn
        was taken over gets ``LeaseLost`` and neither starts the call nor overwrites the
        outcome its successor recorded."""
        tool = self._registry.get(call.name)
        problem = None
        if tool is None:
            problem = f"unknown tool {call.name!r}"
        else:
            try:
                tool.validate(call.arguments)
            except ToolArgumentsError as exc:
                problem = str(exc)
        execution, created = await self._store.claim_tool(
            turn_id, call.id, call.name, call.arguments, lease=lease
        )
        if not created:
            if not (recovering and execution.status == "running"):
                return await self._stored_outcome(turn_id, call.id)
            if tool is None or not tool.retry_safe:
                result = {"error": "cut off by a crash mid-call; not run again (not retry-safe)"}
                await self._store.finish_tool(execution.id, "unknown", result, lease=lease)
                return ToolOutcome(call.id, "unknown", result, True)
            log.info("re-sending a call cut off by a crash", tool=call.name, call_id=call.id)
        if problem is not None or tool is None:
            result = {"error": problem or "unknown tool"}
            await self._store.finish_tool(execution.id, "rejected", result, lease=lease)
            return ToolOutcome(call.id, "rejected", result, False)
        try:
            result = await tool.run(call.arguments, f"{turn_id}:{call.id}")
            status = "succeeded"
        except Exception as exc:  # the tool's failure is the call's result, not ours
            result, status = {"error": f"{type(exc).__name__}: {exc}"}, "failed"
        await self._store.finish_tool(execution.id, status, result, lease=lease)
        return ToolOutcome(call.id, status, result, False)

    async def _stored_outcome(self, turn_id: int, call_id: str) -> ToolOutcome:
        """The first run's outcome; if it never finishes (its process died mid-call) the
        outcome is unknown and the tool is NOT run again: at most once, with the
        idempotency key the downstream system saw, is what can be promised."""
        deadline = time.monotonic() + self._wait_secs
        while True:
            execution = await self._store.tool_execution(turn_id, call_id)
            assert execution is not None
            if execution.status != "running":
                return ToolOutcome(call_id, execution.status, execution.result or {}, True)
            if time.monotonic() > deadline:
                return ToolOutcome(
                    call_id,
                    "unknown",
                    {"error": "an earlier run of this call never finished; not run again"},
                    True,
                )
            await asyncio.sleep(0.05)
