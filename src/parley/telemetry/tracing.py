"""OpenTelemetry traces: one trace per turn, a child span per stage.

Like the metrics, traces are built by observing what the session says, not by spans
opened and closed through the voice loop: when a turn reaches its final state, its
recorded timeline (``turn.metrics``'s ``timeline_ms``, the speech start, the tool calls,
the end) becomes a span tree with the real start and end times. The voice path pays
nothing while it runs.

A turn's trace id and root span id are derived from its session and turn ids, so a log
line written during the turn, which knows only those, carries the same ids
(:func:`turn_trace_ids`); no context has to travel through the voice loop's tasks.

Spans carry the session id, the turn id, the transport and timings; the transcript and
the reply only with ``telemetry.trace_content = true``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator

from parley.telemetry.costs import CallCost
from parley.telemetry.trace_ids import turn_trace_ids

STAGES: tuple[tuple[str, str, str], ...] = (
    # span name, start mark, end mark (marks of turn.metrics' timeline_ms)
    ("endpointing", "last_speech", "confirmed"),
    ("stt", "stt_started", "stt_done"),
    ("eou", "eou_started", "eou_done"),
    ("llm", "llm_started", "llm_first_token"),
    ("tts", "tts_started", "tts_first_audio"),
)


class _TurnIds(IdGenerator):
    """Random ids, except for the next root span, whose ids are set just before it."""

    def __init__(self) -> None:
        self._random = RandomIdGenerator()
        self.next_trace: int | None = None
        self.next_span: int | None = None

    def generate_trace_id(self) -> int:
        preset, self.next_trace = self.next_trace, None
        return preset or self._random.generate_trace_id()

    def generate_span_id(self) -> int:
        preset, self.next_span = self.next_span, None
        return preset or self._random.generate_span_id()


class TurnTracer:
    """The process's tracer. Nothing is exported unless ``otlp_endpoint`` is set (or a
    span processor is given, as tests do)."""

    def __init__(
        self,
        otlp_endpoint: str | None = None,
        trace_content: bool = False,
        processors: Sequence[SpanProcessor] = (),
    ) -> None:
        self.trace_content = trace_content
        self._ids = _TurnIds()
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": "parley"}),
            id_generator=self._ids,
            shutdown_on_exit=False,
        )
        if otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            endpoint = otlp_endpoint.rstrip("/")
            if not endpoint.endswith("/v1/traces"):
                endpoint += "/v1/traces"
            self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint)))
        for processor in processors:
            self.provider.add_span_processor(processor)
        self.enabled = bool(otlp_endpoint) or bool(processors)
        self._tracer = self.provider.get_tracer("parley.voice")

    def observer(
        self, session_id: str, transport: str, words: Callable[[str], str] | None = None
    ) -> TraceObserver:
        """``words`` is how the session's text may enter its spans (redacting or not);
        None keeps the words out. They go in only with ``trace_content`` on as well."""
        return TraceObserver(self, session_id, transport, words if self.trace_content else None)

    def record_turn(self, turn: TurnTimeline) -> None:
        """Write one finished turn as a span tree (times in ns since the epoch)."""
        trace_id, span_id = turn_trace_ids(turn.session_id, turn.turn_id)
        self._ids.next_trace, self._ids.next_span = trace_id, span_id
        attributes: dict[str, Any] = {
            "parley.session_id": turn.session_id,
            "parley.turn_id": turn.turn_id,
            "parley.transport": turn.transport,
            "parley.turn_state": turn.state,
            **turn.attributes,
        }
        attributes.update(turn.content)
        root = self._tracer.start_span(
            "turn", context=None, attributes=attributes, start_time=turn.start_ns
        )
        context = trace.set_span_in_context(root)
        ids: dict[str, Any] = {"parley.session_id": turn.session_id, "parley.turn_id": turn.turn_id}
        for name, start, end, extra in turn.children():
            span = self._tracer.start_span(
                name, context=context, attributes={**ids, **extra}, start_time=start
            )
            span.end(end_time=end)
        if turn.state in ("failed",):
            root.set_status(trace.Status(trace.StatusCode.ERROR, turn.error or "failed"))
        root.end(end_time=turn.end_ns)

    def shutdown(self) -> None:
        self.provider.shutdown()


@dataclass
class TurnTimeline:
    """What is known of one turn when it ends (wall-clock ns)."""

    session_id: str
    turn_id: int
    transport: str
    start_ns: int
    end_ns: int = 0
    state: str = "completed"
    marks: dict[str, int] = field(default_factory=dict)
    tools: list[tuple[str, int, int, str]] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict)
    content: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    def children(self) -> list[tuple[str, int, int, dict[str, Any]]]:
        out: list[tuple[str, int, int, dict[str, Any]]] = []
        if "last_speech" in self.marks:
            out.append(("user_speech", self.start_ns, self.marks["last_speech"], {}))
        for name, first, last in STAGES:
            if first in self.marks and last in self.marks:
                begun = self.marks[first]
                out.append((name, begun, max(begun, self.marks[last]), {}))
        for tool, begun, ended, status in self.tools:
            out.append(("tool_call", begun, ended, {"parley.tool": tool, "parley.status": status}))
        if "first_frame" in self.marks:
            out.append(
                (
                    "playout",
                    self.marks["first_frame"],
                    max(self.end_ns, self.marks["first_frame"]),
                    {},
                )
            )
        return out


@dataclass
class TraceObserver:
    """Collects one connection's turns from its events and records, and hands each
    finished one to the tracer."""

    tracer: TurnTracer
    session_id: str
    transport: str
    words: Callable[[str], str] | None = None
    """The caller consented to their words in telemetry: how they go in (else they don't)."""
    clock_ns: Callable[[], int] = time.time_ns
    _turns: dict[int, TurnTimeline] = field(default_factory=dict)

    def _turn(self, turn_id: int) -> TurnTimeline:
        turn = self._turns.get(turn_id)
        if turn is None:
            turn = TurnTimeline(self.session_id, turn_id, self.transport, self.clock_ns())
            self._turns[turn_id] = turn
        return turn

    def opened(self) -> None:
        pass

    def closed(self, reason: str) -> None:
        self._turns.clear()

    def event(self, ev: dict[str, Any]) -> None:
        turn_id = ev.get("turn_id")
        if not isinstance(turn_id, int):
            return
        kind = ev.get("type")
        if kind == "vad.speech_started":
            self._turn(turn_id)
        elif kind == "turn.ended":
            turn = self._turn(turn_id)
            for key in ("eou_probability", "eou_text_probability", "eou_delay"):
                if isinstance(ev.get(key), int | float):
                    turn.attributes[f"parley.{key}"] = ev[key]
            if isinstance(ev.get("text"), str) and self.words is not None:
                turn.content["parley.user_text"] = self.words(ev["text"])
        elif kind == "turn.metrics":
            self._timeline(self._turn(turn_id), ev)
        elif kind == "agent.text" and isinstance(ev.get("text"), str) and self.words is not None:
            turn = self._turn(turn_id)
            said = turn.content.get("parley.agent_text")
            text = self.words(ev["text"])
            turn.content["parley.agent_text"] = f"{said} {text}" if said else text
        elif kind == "error":
            self._turn(turn_id).error = str(ev.get("code", "error"))
        elif (
            kind == "turn.interrupted"
            and isinstance(ev.get("heard"), str)
            and self.words is not None
        ):
            self._turn(turn_id).content["parley.heard"] = self.words(ev["heard"])

    def _timeline(self, turn: TurnTimeline, ev: dict[str, Any]) -> None:
        timeline = ev.get("timeline_ms")
        v2v = ev.get("voice_to_voice_ms")
        if not isinstance(timeline, dict) or not isinstance(v2v, int | float):
            return
        # turn.metrics leaves with the first frame: its arrival here, less the
        # voice-to-voice time, is when the user's speech ended.
        last_speech = self.clock_ns() - int(v2v * 1e6)
        turn.marks["last_speech"] = last_speech
        for name, ms in timeline.items():
            if isinstance(ms, int | float):
                turn.marks[name] = last_speech + int(ms * 1e6)
        # The loop marks the speech's start with its preroll: earlier than the VAD event.
        turn.start_ns = min(turn.start_ns, turn.marks.get("speech_started", turn.start_ns))
        for key in ("stt_ms", "eou_ms", "llm_ttft_ms", "tts_ttfb_ms", "voice_to_voice_ms"):
            if isinstance(ev.get(key), int | float):
                turn.attributes[f"parley.{key}"] = ev[key]

    def turn_finished(self, turn_id: int, state: str) -> None:
        turn = self._turns.pop(turn_id, None)
        if turn is None:
            return
        turn.state = state
        turn.end_ns = max(self.clock_ns(), turn.start_ns)
        self.tracer.record_turn(turn)

    def usage(self, call: CallCost) -> None:
        """Costs are on the turn's record and in the metrics, not in its spans."""

    def timeline(self, stage: str, turn_id: int | None, data: dict[str, Any]) -> None:
        if stage != "tool.result":
            return
        duration = data.get("duration_ms")
        if not isinstance(duration, int | float) or not isinstance(turn_id, int):
            return
        end = self.clock_ns()
        status = str(data.get("status", "unknown"))
        self._turn(turn_id).tools.append(
            (str(data.get("tool", "unknown")), end - int(duration * 1e6), end, status)
        )
