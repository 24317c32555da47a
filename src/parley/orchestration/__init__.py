"""Orchestration: the action envelope the LLM must produce, validated, repaired or retried."""

from parley.orchestration.envelope import (
    ActionEnvelope,
    CutOffError,
    EnvelopeError,
    parse_envelope,
)
from parley.orchestration.orchestrator import OrchestrationError, Orchestrator
from parley.orchestration.tools import Tool, ToolRegistry

__all__ = [
    "ActionEnvelope",
    "CutOffError",
    "EnvelopeError",
    "OrchestrationError",
    "Orchestrator",
    "Tool",
    "ToolRegistry",
    "parse_envelope",
]
