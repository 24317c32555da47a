"""Orchestrator: builds the prompt, asks the LLM for an envelope, validates it, retries."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

from parley.engines import ChatMessage, EngineError
from parley.engines.base import person_message
from parley.engines.completion import JSONCompletion
from parley.orchestration.envelope import (
    ActionEnvelope,
    CutOffError,
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
    ) -> str | JSONCompletion:
        """One completion constrained (or at least asked) to be JSON of ``schema``; with
        the finish reason where the engine tells it (a plain ``str``: it does not)."""
        ...


SHORTER = "\n\n(Your last reply was cut off before it ended. Reply again, shorter.)"
"""Added to the user's message for the retry after a reply cut off by the token budget:
it asks for less (at the end, so the cached prompt prefix is still reused)."""


class OrchestrationError(RuntimeError):
    """No valid envelope after every attempt (or the model failed)."""


class Orchestrator:
    def __init__(
        self,
        llm: StructuredLanguageModel,
        system_prompt: str,
        tools: Sequence[ToolSpec] = (),
        attempts: int = 2,
        *,
        state_updates: bool = True,
    ) -> None:
        """``state_updates``: the model is asked for them (see ``model_schema``)."""
        self._llm = llm
        self._system = f"{system_prompt} {model_instructions(tools, state=state_updates)}"
        self._schema = model_schema(tools, state=state_updates)
        self._attempts = attempts
        self.calls = 0
        """LLM calls made (what idempotency must not repeat)."""
        self.retries = 0
        """Outputs that were not a usable envelope and were asked again (read by metrics)."""
        self.failures = 0
        """Orchestrations that gave up: no valid envelope, or the model failed."""

    async def respond(
        self, history: Sequence[tuple[str, str]], text: str, context: str = ""
    ) -> ActionEnvelope:
        """``context``: added to the system message (what the conversation remembers
        beyond ``history``: a summary, its settled state)."""
        system = f"{self._system}\n\n{context}" if context else self._system
        messages = [ChatMessage("system", system)]
        messages += [
            person_message(t)
            if r == "human"
            else ChatMessage("user" if r == "user" else "assistant", t)
            for r, t in history
        ]
        messages.append(ChatMessage("user", text))
        reasons: list[str] = []
        for attempt in range(1, self._attempts + 1):
            self.calls += 1
            started = time.monotonic()
            try:
                reply = await self._llm.complete_json(messages, self._schema)
            except EngineError as exc:
                self.failures += 1
                # A provider's answer (its body, its URL) is for the log; what callers
                # see, and what is stored on the turn, only says which stage failed.
                log.warning("the model failed", attempt=attempt, error=str(exc))
                raise OrchestrationError("the model failed (engine_error)") from exc
            if not isinstance(reply, JSONCompletion):
                reply = JSONCompletion(reply)
            try:
                envelope = parse_envelope(reply.text, cut_off=reply.cut_off)
            except EnvelopeError as exc:
                reasons.append(str(exc))
                cut_off = reply.cut_off or isinstance(exc, CutOffError)
                log.warning(
                    "model output not used", attempt=attempt, error=str(exc), cut_off=cut_off
                )
                if cut_off:
                    # Asked the same way, a greedy model is cut off at the same place.
                    messages = [*messages[:-1], ChatMessage("user", f"{text}{SHORTER}")]
                if attempt < self._attempts:
                    self.retries += 1
                continue
            log.info(
                "envelope",
                attempt=attempt,
                ms=round((time.monotonic() - started) * 1000),
                finish_reason=reply.finish_reason,
            )
            return envelope
        self.failures += 1
        raise OrchestrationError(f"no valid envelope after {self._attempts} attempts: {reasons}")
