"""What the voice loop uses when the agent has tools: the action envelope instead of
free text, and the envelope's tool calls run through the ledger."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from parley.orchestration.envelope import FALLBACK, ActionEnvelope
from parley.orchestration.ledger import ToolLedger
from parley.orchestration.orchestrator import OrchestrationError, Orchestrator
from parley.telemetry import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class AgentActions:
    orchestrator: Orchestrator
    ledger: ToolLedger

    async def decide(
        self, history: Sequence[tuple[str, str]], text: str, context: str = ""
    ) -> ActionEnvelope:
        """The envelope for ``text``; after malformed output on every attempt, or a model
        failure, the fixed apology — never the malformed output, never a tool call.
        ``context``: what the system message adds (the conversation's memory)."""
        try:
            return await self.orchestrator.respond(history, text, context)
        except OrchestrationError as exc:
            log.warning("no valid envelope; apologising", error=str(exc))
            return FALLBACK
