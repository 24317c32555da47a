"""Fallback chains as metrics, read when Prometheus scrapes: each provider's breaker
state, its attempts by outcome, requests held off by an open breaker, and failovers
from one provider to the next. (Telemetry reads what the chains tally; it imports none
of them: ``chains`` gives plain views.)"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


@dataclass(frozen=True)
class ChainView:
    """What the metrics need of one stage's chain."""

    stage: str
    breakers: Callable[[], Iterable[Mapping[str, object]]]
    """Each provider's ``{"provider", "state"}``."""
    attempts: Callable[[], Mapping[tuple[str, str], int]]
    failovers: Callable[[], Mapping[tuple[str, str], int]]
    held_off: Callable[[], Mapping[str, int]]
    opened: Callable[[], Mapping[str, int]]


class ProviderCollector(Collector):
    def __init__(self, chains: Callable[[], Iterable[ChainView]]) -> None:
        self._chains = chains

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        state = GaugeMetricFamily(
            "parley_provider_breaker_state",
            "A provider's circuit breaker: 0 closed, 1 half-open (probing), 2 open.",
            labels=["stage", "provider"],
        )
        attempts = CounterMetricFamily(
            "parley_provider_attempts",
            "Requests sent to a provider of a chain, by outcome (ok or the failure kind).",
            labels=["stage", "provider", "outcome"],
        )
        held = CounterMetricFamily(
            "parley_provider_held_off",
            "Requests not sent to a provider because its breaker was open.",
            labels=["stage", "provider"],
        )
        opened = CounterMetricFamily(
            "parley_provider_breaker_opened",
            "Times a provider's breaker opened.",
            labels=["stage", "provider"],
        )
        failovers = CounterMetricFamily(
            "parley_provider_failovers",
            "Requests that moved from a failed provider to the next (to: none = none left).",
            labels=["stage", "from_provider", "to_provider"],
        )
        for chain in self._chains():
            for breaker in chain.breakers():
                name = str(breaker["provider"])
                state.add_metric([chain.stage, name], BREAKER_STATES.get(str(breaker["state"]), 2))
            for (name, outcome), n in chain.attempts().items():
                attempts.add_metric([chain.stage, name, outcome], n)
            for name, n in chain.held_off().items():
                held.add_metric([chain.stage, name], n)
            for name, n in chain.opened().items():
                opened.add_metric([chain.stage, name], n)
            for (src, dst), n in chain.failovers().items():
                failovers.add_metric([chain.stage, src, dst], n)
        yield from (state, attempts, held, opened, failovers)
