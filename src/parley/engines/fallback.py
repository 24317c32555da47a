"""Fallback chains: a stage's providers in order, each behind its circuit breaker.

A chain implements the same protocol as one engine (it sits beside the protocols in
``base.py``), so nothing above the engines knows there is more than one provider. A
request goes to the first provider whose breaker is closed; a failure (an error, or no
first result within the provider's per-attempt timeout) is recorded on its breaker and
the request moves on to the next one at once. A caller's cancellation (a barge-in, the
whole-call timeout) is not a provider failure. The per-kind rules — what is retried on
the next provider — live in ``fallback_llm.py`` (the rest of a reply) and
``fallback_tts.py`` (the rest of a sentence); speech-to-text simply sends the same audio
to the next provider (below).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from parley.engines.base import EngineError, SpeechToText, Transcript
from parley.engines.breaker import CircuitBreaker
from parley.engines.provider_errors import failure_kind
from parley.telemetry import get_logger

log = get_logger(__name__)

E = TypeVar("E")
T = TypeVar("T")

FailoverListener = Callable[[dict[str, Any]], None]
failover_listener: ContextVar[FailoverListener | None] = ContextVar(
    "parley_failover_listener", default=None
)
"""Set by a voice session for the work it starts: each failover inside that work is
told to it (the session's timeline), since the engines themselves are shared."""


def attempt_timeout(provider: Provider[Any], candidates: list[Provider[Any]]) -> float | None:
    """``provider``'s per-attempt timeout, or None for the last one tried: with no provider
    left to move on to, giving up early would only lose the answer (the stage's whole-call
    timeout still applies)."""
    return None if provider is candidates[-1] else provider.timeout


async def each_within(stream: AsyncIterator[T], timeout: float | None) -> AsyncIterator[T]:
    """``stream``'s items, each within ``timeout`` seconds of the one before (else
    TimeoutError): a provider that stops mid-stream is as failed as one that never
    starts."""
    while True:
        try:
            async with asyncio.timeout(timeout):
                item = await anext(stream)
        except StopAsyncIteration:
            return
        yield item


class AllProvidersFailed(EngineError):
    """Every provider of a stage failed (or is behind an open breaker) for one request."""

    def __init__(self, stage: str, failures: list[tuple[str, str]]) -> None:
        tried = ", ".join(f"{name} ({kind})" for name, kind in failures) or "none available"
        super().__init__(f"every {stage} provider failed: {tried}")
        self.stage = stage
        self.failures = failures


@dataclass
class Provider(Generic[E]):
    name: str
    engine: E
    breaker: CircuitBreaker
    timeout: float
    """Seconds for its first result (and, for streams, between two results)."""


@dataclass
class ProviderChain(Generic[E]):
    """What every chain shares: the providers, their breakers and the tallies read by
    metrics (attempts by provider and outcome, failovers, requests held off by an open
    breaker)."""

    stage: str
    providers: list[Provider[E]]
    attempts: Counter[tuple[str, str]] = field(default_factory=Counter)
    failovers: Counter[tuple[str, str]] = field(default_factory=Counter)
    held_off: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        """Chains that keep per-provider state set it up here."""

    @property
    def primary(self) -> E:
        return self.providers[0].engine

    def candidates(self) -> Iterator[Provider[E]]:
        """The providers to try now, in order (those with open breakers are skipped).
        When every breaker is open they are all tried all the same: skipping them all is
        a certain failure for the caller, and a provider back before its probe says so
        answers at once (LiveKit Agents' fallback adapters do the same)."""
        if not any(provider.breaker.allows for provider in self.providers):
            yield from self.providers
            return
        for provider in self.providers:
            if provider.breaker.allows:
                yield provider
            else:
                self.held_off[provider.name] += 1

    def succeeded(self, provider: Provider[E]) -> None:
        provider.breaker.record_success()
        self.attempts[(provider.name, "ok")] += 1

    def failed(self, provider: Provider[E], exc: BaseException, *, started: float) -> str:
        """Record ``provider``'s failure; returns its kind."""
        kind = failure_kind(exc)
        self.attempts[(provider.name, kind)] += 1
        provider.breaker.record_failure(kind, getattr(exc, "retry_after", None))
        log.warning(
            "provider failed",
            stage=self.stage,
            provider=provider.name,
            kind=kind,
            after_ms=round((time.monotonic() - started) * 1000, 1),
            error=repr(exc),
        )
        return kind

    def moved_on(
        self,
        failed: Provider[E],
        kind: str,
        detail: dict[str, Any],
        candidates: list[Provider[E]],
    ) -> None:
        """Tell the session (its timeline) that a request left ``failed`` for the next of
        ``candidates`` (the providers this request tries, in order)."""
        later = candidates[candidates.index(failed) + 1 :]
        to = later[0].name if later else None
        self.failovers[(failed.name, to or "none")] += 1
        listener = failover_listener.get()
        if listener is not None:
            listener({"stage": self.stage, "from": failed.name, "to": to, "kind": kind, **detail})

    def status(self) -> list[dict[str, object]]:
        return [p.breaker.status() for p in self.providers]

    async def aclose(self) -> None:
        for provider in self.providers:
            await provider.breaker.aclose()
            for name in ("aclose", "close"):
                closer = getattr(provider.engine, name, None)
                if closer is not None:
                    result = closer()
                    if isinstance(result, Awaitable):
                        await result
                    break


class FallbackSTT(ProviderChain[SpeechToText]):
    """Speech-to-text over a chain: a failed or late transcription sends the same audio
    to the next provider."""

    @property
    def busy(self) -> bool:
        first = next((p for p in self.providers if p.breaker.allows), None)
        return first is not None and first.engine.busy

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        failures: list[tuple[str, str]] = []
        candidates = list(self.candidates())
        for provider in candidates:
            started = time.monotonic()
            try:
                async with asyncio.timeout(attempt_timeout(provider, candidates)):
                    result = await provider.engine.transcribe(audio)
            except (EngineError, TimeoutError) as exc:
                kind = self.failed(provider, exc, started=started)
                failures.append((provider.name, kind))
                detail = {"audio_secs": round(audio.size / 16_000, 2)}
                self.moved_on(provider, kind, detail, candidates)
                continue
            self.succeeded(provider)
            return result
        raise AllProvidersFailed(self.stage, failures)


def stage_engines(engine: object) -> list[Any]:
    """The engines behind a stage: a chain's providers', or the one engine."""
    if isinstance(engine, ProviderChain):
        return [p.engine for p in engine.providers]
    return [engine]


def provider_chains(engines: Any) -> dict[str, ProviderChain[Any]]:
    """The stages of ``engines`` that are fallback chains, by stage."""
    stages = {name: getattr(engines, name, None) for name in ("stt", "llm", "tts")}
    return {name: e for name, e in stages.items() if isinstance(e, ProviderChain)}
