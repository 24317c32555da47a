"""Prometheus metrics for the voice loop, recorded in one place: by observing what each
session already says (its events to the client and its turn records), never by calls
sprinkled through the voice path.

Labels name the transport and the engine or provider, never a session or a user: a
label per session would grow without bound, and metrics must not identify callers. No
metric carries transcript text.

Each app has a registry of its own (tests run many apps in one process); ``GET /metrics``
renders it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from parley.telemetry.cost_metrics import UsageMetrics
from parley.telemetry.costs import CallCost

# Voice timings run from tens of milliseconds (VAD, a probe) to seconds (a slow LLM).
VOICE_BUCKETS = (0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2, 3, 5, 10)
TURN_BUCKETS = (0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60, 120)
ERROR_STAGES = ("stt", "llm", "tts", "vad", "eou", "tools", "orchestration", "store")


def error_stage(code: str) -> str:
    """The pipeline stage an error code names (``llm_error`` → ``llm``), else ``other``."""
    head = code.split("_", 1)[0]
    return head if head in ERROR_STAGES else "other"


@dataclass(frozen=True)
class EngineNames:
    """The engine or provider behind each stage, as metrics label them."""

    stt: str = "unknown"
    llm: str = "unknown"
    tts: str = "unknown"


class VoiceMetrics:
    """Every metric family of a Parley process, in its own registry."""

    def __init__(self, engines: EngineNames | None = None, currency: str = "USD") -> None:
        self.engines = engines or EngineNames()
        self.registry = CollectorRegistry()
        r = self.registry
        self.usage = UsageMetrics(r, currency)

        def hist(name: str, doc: str, labels: Iterable[str], buckets: Any = VOICE_BUCKETS) -> Any:
            return Histogram(name, doc, list(labels), registry=r, buckets=buckets)

        t = ("transport",)
        self.voice_to_voice = hist(
            "parley_voice_to_voice_seconds",
            "User's last speech to the reply's first audio frame sent (server side).",
            t,
        )
        self.end_of_turn_wait = hist(
            "parley_end_of_turn_wait_seconds",
            "User's last speech to the turn confirmed: the silence the end-of-turn rule waited.",
            t,
        )
        self.first_partial = hist(
            "parley_first_partial_transcript_seconds",
            "Start of the user's speech to its first partial transcript.",
            (*t, "stt"),
        )
        self.final_transcript = hist(
            "parley_final_transcript_seconds",
            "User's last speech to the final transcript of the turn.",
            (*t, "stt"),
        )
        self.stt = hist("parley_stt_seconds", "One final transcription.", ("stt",))
        self.eou_model = hist(
            "parley_end_of_turn_model_seconds",
            "The end-of-turn models (audio and words) for one decision.",
            (),
        )
        self.llm_first_token = hist(
            "parley_llm_first_token_seconds", "LLM request to its first token.", ("llm",)
        )
        self.tts_first_audio = hist(
            "parley_tts_first_audio_seconds", "TTS request to its first audio.", ("tts",)
        )
        self.tool_call = hist(
            "parley_tool_call_seconds", "One tool call through the ledger.", ("tool",)
        )
        self.turn_duration = hist(
            "parley_turn_duration_seconds",
            "Start of the user's speech to the end of the agent's reply (or the turn's end).",
            (*t, "state"),
            TURN_BUCKETS,
        )
        self.reconnect_recovery = hist(
            "parley_reconnect_recovery_seconds",
            "A reconnecting session's conversation restored from the store.",
            t,
        )
        self.turns = Counter("parley_turns", "Turns by final state.", (*t, "state"), registry=r)
        self.interruptions = Counter(
            "parley_interruptions", "Replies stopped by the caller (barge-in).", t, registry=r
        )
        self.overlaps_ignored = Counter(
            "parley_overlaps_ignored",
            "Speech or sound over the reply that did not interrupt it (backchannel, noise, "
            "echo): false-interruption candidates.",
            (*t, "kind"),
            registry=r,
        )
        self.errors = Counter(
            "parley_errors",
            "Errors reported to clients, by pipeline stage and code.",
            ("stage", "code"),
            registry=r,
        )
        self.reconnects = Counter("parley_reconnects", "Sessions resumed.", t, registry=r)
        self.fillers = Counter(
            "parley_fillers",
            "Replies whose first audio was late enough that the filler was said first.",
            t,
            registry=r,
        )
        self.failovers_seen = Counter(
            "parley_turn_failovers",
            "Provider failovers inside sessions' turns, by stage.",
            (*t, "stage"),
            registry=r,
        )
        self.handoffs = Counter(
            "parley_handoffs",
            "Handoff steps (requested, accepted, returned), by who took them (caller, agent, "
            "supervisor, phone_transfer).",
            (*t, "step", "by"),
            registry=r,
        )
        self.tool_calls = Counter(
            "parley_tool_calls", "Tool calls by outcome.", ("tool", "status"), registry=r
        )
        self.revisions = Counter(
            "parley_transcript_revisions",
            "Finished turns heard again (stt.revise), by outcome (revised, unchanged, "
            "skipped, failed) and, when skipped, why.",
            (*t, "outcome", "reason"),
            registry=r,
        )
        self.webrtc_packets_lost = Counter(
            "parley_webrtc_packets_lost",
            "Inbound (microphone) RTP packets lost, as aiortc reports them.",
            registry=r,
        )
        self.webrtc_jitter = hist(
            "parley_webrtc_jitter_seconds",
            "Inbound RTP interarrival jitter, sampled every webrtc.stats_interval_secs.",
            (),
            (0.001, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32),
        )
        self.sessions_started = Counter(
            "parley_sessions_started", "Voice connections opened.", t, registry=r
        )
        self.sessions_ended = Counter(
            "parley_sessions_ended",
            "Voice connections closed, by reason.",
            (*t, "reason"),
            registry=r,
        )
        self.active_sessions = Gauge(
            "parley_active_sessions", "Voice sessions connected now.", t, registry=r
        )

    def collect_from(self, collector: Collector) -> None:
        """Add a collector read at scrape time (engine lanes, worker pools)."""
        self.registry.register(collector)

    def observer(self, transport: str) -> MetricsObserver:
        return MetricsObserver(self, transport)


@dataclass
class MetricsObserver:
    """Turns one voice connection's events and turn records into metrics."""

    metrics: VoiceMetrics
    transport: str
    clock: Callable[[], float] = time.monotonic
    _speech_started: dict[int, float] = field(default_factory=dict)
    _first_partial_seen: set[int] = field(default_factory=set)
    _finished: set[int] = field(default_factory=set)
    _open: bool = False
    _packets_lost: int = 0

    # ---- the connection ----------------------------------------------------------------

    def opened(self) -> None:
        self._open = True
        self.metrics.sessions_started.labels(self.transport).inc()
        self.metrics.active_sessions.labels(self.transport).inc()

    def closed(self, reason: str) -> None:
        if not self._open:
            return
        self._open = False
        self.metrics.sessions_ended.labels(self.transport, reason).inc()
        self.metrics.active_sessions.labels(self.transport).dec()

    # ---- what the session says -----------------------------------------------------------

    def event(self, ev: dict[str, Any]) -> None:
        """One event the session sends its client."""
        kind = ev.get("type")
        turn_id = ev.get("turn_id")
        m = self.metrics
        if kind == "vad.speech_started" and isinstance(turn_id, int):
            self._speech_started.setdefault(turn_id, self.clock())
        elif kind == "transcript.partial" and isinstance(turn_id, int):
            started = self._speech_started.get(turn_id)
            if started is not None and turn_id not in self._first_partial_seen:
                self._first_partial_seen.add(turn_id)
                m.first_partial.labels(self.transport, m.engines.stt).observe(
                    self.clock() - started
                )
        elif kind == "turn.metrics":
            self._turn_metrics(ev)
        elif kind == "agent.filler":
            m.fillers.labels(self.transport).inc()
        elif kind == "overlap.ignored":
            m.overlaps_ignored.labels(self.transport, str(ev.get("kind", "unknown"))).inc()
        elif kind == "error":
            code = str(ev.get("code", "unknown"))
            stage = ev.get("stage")
            m.errors.labels(stage if stage in ERROR_STAGES else error_stage(code), code).inc()

    def _turn_metrics(self, ev: dict[str, Any]) -> None:
        m, t = self.metrics, self.transport

        def seconds(key: str) -> float | None:
            value = ev.get(key)
            return value / 1000 if isinstance(value, int | float) else None

        if (v := seconds("voice_to_voice_ms")) is not None:
            m.voice_to_voice.labels(t).observe(v)
        if (v := seconds("eou_ms")) is not None:
            m.end_of_turn_wait.labels(t).observe(v)
        if (v := seconds("eou_model_ms")) is not None:
            m.eou_model.observe(v)
        if (v := seconds("stt_ms")) is not None:
            m.stt.labels(m.engines.stt).observe(v)
        if (v := seconds("llm_ttft_ms")) is not None:
            m.llm_first_token.labels(m.engines.llm).observe(v)
        if (v := seconds("tts_ttfb_ms")) is not None:
            m.tts_first_audio.labels(m.engines.tts).observe(v)
        timeline = ev.get("timeline_ms")
        if isinstance(timeline, dict) and isinstance(timeline.get("stt_done"), int | float):
            final = max(0.0, timeline["stt_done"] / 1000)
            m.final_transcript.labels(t, m.engines.stt).observe(final)

    # ---- what the session records --------------------------------------------------------

    def turn_finished(self, turn_id: int, state: str) -> None:
        """A turn reached its final state (completed, interrupted, failed, cancelled)."""
        if turn_id in self._finished:
            return
        self._finished.add(turn_id)
        m, t = self.metrics, self.transport
        m.turns.labels(t, state).inc()
        if state == "interrupted":
            m.interruptions.labels(t).inc()
        started = self._speech_started.pop(turn_id, None)
        self._first_partial_seen.discard(turn_id)
        if started is not None:
            m.turn_duration.labels(t, state).observe(self.clock() - started)

    def usage(self, call: CallCost) -> None:
        """A provider call the session made, priced (``telemetry/cost_metrics.py``)."""
        self.metrics.usage.count(call)

    def timeline(self, stage: str, turn_id: int | None, data: dict[str, Any]) -> None:
        """A timeline event the session stores."""
        m = self.metrics
        if stage == "session.reconnected":
            m.reconnects.labels(self.transport).inc()
            if isinstance(data.get("recovery_ms"), int | float):
                m.reconnect_recovery.labels(self.transport).observe(data["recovery_ms"] / 1000)
        elif stage == "webrtc.inbound_stats":
            lost = data.get("packets_lost")
            if isinstance(lost, int) and lost > self._packets_lost:
                m.webrtc_packets_lost.inc(lost - self._packets_lost)  # aiortc's is cumulative
                self._packets_lost = lost
            if isinstance(data.get("jitter_ms"), int | float):
                m.webrtc_jitter.observe(data["jitter_ms"] / 1000)
        elif stage == "provider.failover":
            m.failovers_seen.labels(self.transport, str(data.get("stage", "unknown"))).inc()
        elif stage in ("handoff.requested", "handoff.accepted", "handoff.returned"):
            # "supervisor:Maria" counts as "supervisor": names are no label values.
            by = str(data.get("by", "unknown")).split(":", 1)[0]
            m.handoffs.labels(self.transport, stage.removeprefix("handoff."), by).inc()
        elif stage == "transcript.revision":
            outcome, reason = str(data.get("outcome", "unknown")), str(data.get("reason", ""))
            m.revisions.labels(self.transport, outcome, reason).inc()
        elif stage == "tool.result":
            tool = str(data.get("tool", "unknown"))
            m.tool_calls.labels(tool, str(data.get("status", "unknown"))).inc()
            if isinstance(data.get("duration_ms"), int | float):
                m.tool_call.labels(tool).observe(data["duration_ms"] / 1000)


@dataclass
class LaneView:
    """What a gauge needs to know of an inference lane."""

    name: str
    pending: Callable[[], int]
    running: Callable[[], int]
    concurrency: int


class EngineCollector(Collector):
    """Engine lanes, worker pools and the orchestrator's tallies, read when Prometheus
    scrapes (no polling task, nothing called from the code that does the work)."""

    def __init__(
        self,
        lanes: Callable[[], Iterable[LaneView]],
        tts_workers: Callable[[], int | None],
        orchestration: Callable[[], tuple[int, int] | None] = lambda: None,
    ) -> None:
        self._lanes = lanes
        self._tts_workers = tts_workers
        self._orchestration = orchestration

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        queued = GaugeMetricFamily(
            "parley_engine_lane_queue_depth",
            "Inference calls waiting for a lane's workers.",
            labels=["lane"],
        )
        busy = GaugeMetricFamily(
            "parley_engine_lane_busy_workers",
            "A lane's workers running a call now.",
            labels=["lane"],
        )
        size = GaugeMetricFamily(
            "parley_engine_lane_workers", "A lane's workers (its concurrency).", labels=["lane"]
        )
        for lane in self._lanes():
            running = lane.running()
            queued.add_metric([lane.name], max(0, lane.pending() - running))
            busy.add_metric([lane.name], running)
            size.add_metric([lane.name], lane.concurrency)
        yield queued
        yield busy
        yield size
        counts = self._orchestration()
        if counts is not None:
            retries, failures = counts
            yield CounterMetricFamily(
                "parley_envelope_retries",
                "LLM outputs that were not a usable action envelope and were asked again.",
                value=retries,
            )
            yield CounterMetricFamily(
                "parley_orchestration_failures",
                "Orchestrations (voice or HTTP) that got no valid envelope or whose model failed.",
                value=failures,
            )
        workers = self._tts_workers()
        if workers is not None:
            yield GaugeMetricFamily(
                "parley_piper_workers", "Piper TTS worker processes running.", value=workers
            )
