"""Orchestration: the action envelope the LLM must produce, validated, repaired or retried."""

from parley.orchestration.envelope import ActionEnvelope, EnvelopeError, parse_envelope
from parley.orchestration.orchestrator import OrchestrationError, Orchestrator
from parley.orchestration.tools import Tool, ToolRegistry

__all__ = [
    "ActionEnvelope",
    "EnvelopeError",
    "OrchestrationError",
    "Orchestrator",
    "Tool",
    "ToolRegistry",
    "parse_envelope",
]
