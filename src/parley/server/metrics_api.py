"""``GET /metrics``: the process's Prometheus metrics, in the text exposition format."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from parley.config import Settings
from parley.engines import Engines
from parley.engines.fallback import ProviderChain, provider_chains, stage_engines
from parley.engines.lanes import InferenceLane, live_lanes
from parley.orchestration import Orchestrator
from parley.telemetry.metrics import EngineCollector, EngineNames, LaneView, VoiceMetrics
from parley.telemetry.observing import Telemetry
from parley.telemetry.provider_metrics import ChainView, ProviderCollector
from parley.telemetry.tracing import TurnTracer

router = APIRouter()


def engine_names(settings: Settings) -> EngineNames:
    """How metrics label each stage's engine: the provider, and the model when remote."""
    llm = settings.llm
    llm_name = f"openai:{llm.model}" if llm.provider == "openai" else "llama"
    return EngineNames(stt=settings.stt.provider, llm=llm_name, tts=settings.tts.provider)


def build_telemetry(
    engines: Engines | None, settings: Settings, orchestrator: Orchestrator | None = None
) -> Telemetry:
    """The app's metrics and tracer (``telemetry.*`` settings)."""
    t = settings.telemetry
    tracer = TurnTracer(t.otlp_endpoint, t.trace_content)
    return Telemetry(build_metrics(engines, settings, orchestrator), tracer, enabled=t.enabled)


def build_metrics(
    engines: Engines | None, settings: Settings, orchestrator: Orchestrator | None = None
) -> VoiceMetrics:
    """The app's metrics, with gauges read from ``engines`` at each scrape."""
    metrics = VoiceMetrics(engine_names(settings), settings.costs.currency)

    def view(lane: InferenceLane) -> LaneView:
        return LaneView(lane.name, lambda: lane.pending, lambda: lane.running, lane.concurrency)

    def lanes() -> list[LaneView]:
        return [view(lane) for lane in live_lanes()]

    def tts_workers() -> int | None:
        if engines is None:  # a control plane
            return None
        counts = [getattr(e, "running", None) for e in stage_engines(engines.tts)]
        running = [n for n in counts if isinstance(n, int)]
        return sum(running) if running else None

    def orchestration() -> tuple[int, int] | None:
        return None if orchestrator is None else (orchestrator.retries, orchestrator.failures)

    metrics.collect_from(EngineCollector(lanes, tts_workers, orchestration))
    chains = [chain_view(c) for c in provider_chains(engines).values()]
    if chains:
        metrics.collect_from(ProviderCollector(lambda: chains))
    return metrics


def chain_view(chain: ProviderChain[Any]) -> ChainView:
    return ChainView(
        chain.stage,
        chain.status,
        lambda: chain.attempts,
        lambda: chain.failovers,
        lambda: chain.held_off,
        lambda: {p.name: p.breaker.opened_total for p in chain.providers},
    )


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    settings = request.app.state.settings.telemetry
    if settings.metrics_require_admin:
        key = settings.admin_key.get_secret_value() if settings.admin_key else ""
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not key or not hmac.compare_digest(given.encode(), key.encode()):
            raise HTTPException(401, "metrics need the admin key (Authorization: Bearer …)")
    registry = request.app.state.telemetry.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
