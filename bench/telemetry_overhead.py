"""What metrics and tracing cost on voice-to-voice.

Two servers on the same models, one with telemetry on (metrics, and traces exported over
OTLP/HTTP to a local receiver) and one with ``telemetry.enabled = false``. One caller
session on each; every prompt is said to both, alternating which goes first, so that the
machine's drift falls on both alike. Each server has its own LLM prompt cache: neither
replays the other's.

On two cores the voice-to-voice spread between turns (tens of ms) is far above what an
observer costs, so the difference of medians is reported with the direct measure too: the
CPU time the observers take for one turn's events on the event loop (a recorded turn's
events, replayed through them many times).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from opentelemetry.sdk.trace import SpanProcessor

from parley.client import CallClient
from parley.telemetry.metrics import VoiceMetrics
from parley.telemetry.observing import Telemetry
from parley.telemetry.tracing import TurnTracer


async def alternate(on_url: str, off_url: str, prompts: list[str]) -> dict[str, Any]:
    """Each prompt to both servers, alternating the order; client voice-to-voice of each."""
    from voice_to_voice import one_turn, pct

    results: dict[str, list[float]] = {"on": [], "off": []}
    recorded: list[dict[str, Any]] = []
    async with CallClient(on_url) as on, CallClient(off_url) as off:
        calls = {"on": on, "off": off}
        marks: dict[str, float] = {}
        for name, call in calls.items():
            spoke, _ = await call.wait_for(
                "agent.state", lambda e: e["state"] == "speaking", timeout=60
            )
            marks[name], _ = await call.wait_for(
                "agent.state", lambda e: e["state"] == "listening", after=spoke, timeout=60
            )
        for i, text in enumerate(prompts):
            for name in ("on", "off") if i % 2 == 0 else ("off", "on"):
                turn, marks[name] = await one_turn(calls[name], text, marks[name])
                if isinstance(turn.get("client_voice_to_voice_ms"), int | float):
                    results[name].append(turn["client_voice_to_voice_ms"])
                await asyncio.sleep(0.5)
        recorded = [ev for _, ev in on.events]
    p50 = {name: pct(values, 50) for name, values in results.items()}
    return {
        "turns": {name: len(v) for name, v in results.items()},
        "client_voice_to_voice_p50_ms": p50,
        "difference_p50_ms": round(p50["on"] - p50["off"], 1)
        if all(isinstance(v, int | float) for v in p50.values())
        else None,
        "observer_ms_per_turn": observer_cost(recorded),
    }


def observer_cost(events: list[dict[str, Any]], rounds: int = 200) -> float | None:
    """Milliseconds of event-loop time the metrics and trace observers take for one turn:
    a real session's events replayed through fresh observers (traces built in memory)."""
    turns = {e["turn_id"] for e in events if e.get("type") == "turn.metrics"}
    if not turns:
        return None
    tracer = TurnTracer(processors=[_NullProcessor()])
    telemetry = Telemetry(VoiceMetrics(), tracer)
    started = time.perf_counter()
    for _ in range(rounds):
        observer = telemetry.observer("websocket", "bench-session")
        observer.opened()
        for ev in events:
            observer.event(ev)
        for turn_id in turns:
            observer.turn_finished(turn_id, "completed")
        observer.closed("client_ended")
    return round((time.perf_counter() - started) * 1000 / (rounds * len(turns)), 3)


class _NullProcessor(SpanProcessor):
    """Drops every span (the OTLP export itself runs in the SDK's background thread, off
    the event loop; building the spans is what the loop pays)."""
