"""Orchestration: the action envelope the LLM must produce, validated, repaired or retried."""

from parley.orchestration.envelope import ActionEnvelope, EnvelopeError, parse_envelope
from parley.orchestration.orchestrator import OrchestrationError, Orchestrator

__all__ = [
    "ActionEnvelope",
    "EnvelopeError",
    "OrchestrationError",
    "Orchestrator",
    "parse_envelope",
]
