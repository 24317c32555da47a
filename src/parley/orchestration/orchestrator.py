"""Orchestrator: builds the prompt, asks the LLM for an envelope, validates it, retries."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

from parley.engines import ChatMessage, EngineError
from parley.orchestration.envelope import (
    ActionEnvelope,
    EnvelopeError,
    ToolSpec,
    model_instructions,
    model_schema,
    parse_envelope,
)
from parley.telemetry import get_logger

log = get_logger(__name__)


class StructuredLanguageModel(Protocol):
    async def complete_json(
        self, messages: Sequence[ChatMessage], schema: dict[str, object]
    ) -> str:
        """One completion constrained (or at least asked) to be JSON of ``schema``."""
        ...


class OrchestrationError(RuntimeError):
    """No valid envelope after every attempt (or the model failed)."""


class Orchestrator:
    def __init__(
        self,
        llm: StructuredLanguageModel,
        system_prompt: str,
        tools: Sequence[ToolSpec] = (),
        attempts: int = 2,
    ) -> None:
        self._llm = llm
        self._system = f"{system_prompt} {model_instructions(tools)}"
        self._schema = model_schema(tools)
        self._attempts = attempts
        self.calls = 0
        """LLM calls made (what idempotency must not repeat)."""

    async def respond(self, history: Sequence[tuple[str, str]], text: str) -> ActionEnvelope:
        messages = [ChatMessage("system", self._system)]
        messages += [ChatMessage("user" if r == "user" else "assistant", t) for r, t in history]
        messages.append(ChatMessage("user", text))
        reasons: list[str] = []
        for attempt in range(1, self._attempts + 1):
            self.calls += 1
            started = time.monotonic()
            try:
                raw = await self._llm.complete_json(messages, self._schema)
            except EngineError as exc:
                raise OrchestrationError(f"the model failed: {exc}") from exc
            try:
                envelope = parse_envelope(raw)
            except EnvelopeError as exc:
                reasons.append(str(exc))
                log.warning("malformed model output", attempt=attempt, error=str(exc))
                continue
            log.info("envelope", attempt=attempt, ms=round((time.monotonic() - started) * 1000))
            return envelope
        raise OrchestrationError(f"no valid envelope after {self._attempts} attempts: {reasons}")
