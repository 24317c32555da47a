"""OpenTelemetry traces of a turn, exported over real OTLP/HTTP to a collector stand-in
that decodes the protobuf; and log lines carrying the same trace ids."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from inprocess_server import one_turn_of_speech, serve_doubles
from parley.client import CallClient
from parley.telemetry import Redactor
from parley.telemetry.logs import JsonFormatter, bind_session, bind_turn
from parley.telemetry.trace_ids import turn_trace_ids
from parley.telemetry.tracing import TurnTracer
from parley.testing import OTLPReceiver
from voice_helpers import wait_reply_done


@pytest.fixture
def collector() -> Iterator[OTLPReceiver]:
    c = OTLPReceiver()
    yield c
    c.stop()


async def one_traced_turn(
    tmp_path: Path, collector: OTLPReceiver, content: bool, consent: dict[str, bool] | None = None
) -> tuple[str, list[Any]]:
    telemetry = {"otlp_endpoint": collector.url, "trace_content": content}
    async for server in serve_doubles(f"sqlite:///{tmp_path / 'parley.db'}", telemetry=telemetry):
        app = server.app
        async with CallClient(server.ws_url, consent=consent) as call:
            await call.wait_for("session.started")
            await call.say(one_turn_of_speech())
            ended_at, _ = await call.wait_for("turn.ended", timeout=15)
            await wait_reply_done(call, after=ended_at)
            session_id = call.session["session_id"]  # type: ignore[index]
        await asyncio.sleep(0.3)
        await asyncio.to_thread(app.state.telemetry.tracer.provider.force_flush)
    return session_id, collector.spans


async def test_a_turn_is_one_trace_with_a_child_span_per_stage(
    tmp_path: Path, collector: OTLPReceiver
) -> None:
    session_id, spans = await one_traced_turn(tmp_path, collector, content=False)
    trace_id, root_id = turn_trace_ids(session_id, 1)
    turn = [s for s in spans if s.trace_id == trace_id.to_bytes(16, "big")]
    (root,) = [s for s in turn if s.name == "turn"]
    assert root.span_id == root_id.to_bytes(8, "big") and not root.parent_span_id
    children = {s.name: s for s in turn if s is not root}
    assert {"user_speech", "endpointing", "stt", "llm", "tts", "playout"} <= set(children)
    for child in children.values():
        assert child.parent_span_id == root.span_id, child.name
        assert root.start_time_unix_nano <= child.start_time_unix_nano
        assert child.start_time_unix_nano <= child.end_time_unix_nano <= root.end_time_unix_nano + 1
    attributes = {a.key: a.value for a in root.attributes}
    assert attributes["parley.session_id"].string_value == session_id
    assert attributes["parley.turn_id"].int_value == 1
    assert attributes["parley.turn_state"].string_value == "completed"
    assert attributes["parley.voice_to_voice_ms"].double_value > 0
    # Timings and ids only: no words unless trace_content is on.
    assert not any("text" in a.key for s in turn for a in s.attributes)


async def test_trace_content_puts_the_words_of_a_consenting_caller_in_the_turn_span(
    tmp_path: Path, collector: OTLPReceiver
) -> None:
    consent = {"log_transcripts": True}
    _, spans = await one_traced_turn(tmp_path, collector, content=True, consent=consent)
    (root,) = [s for s in spans if s.name == "turn"]
    attributes = {a.key: a.value.string_value for a in root.attributes}
    assert attributes["parley.user_text"] == "What time is it?"
    assert attributes["parley.agent_text"] == "It is noon."


async def test_trace_content_keeps_out_the_words_of_a_caller_who_did_not_consent(
    tmp_path: Path, collector: OTLPReceiver
) -> None:
    _, spans = await one_traced_turn(tmp_path, collector, content=True)
    (root,) = [s for s in spans if s.name == "turn"]
    assert {"parley.turn_state", "parley.voice_to_voice_ms"} <= {a.key for a in root.attributes}
    assert not any("text" in a.key or "heard" in a.key for s in spans for a in s.attributes)


def test_traced_words_are_redacted_as_the_store_redacts_them() -> None:
    exporter = InMemorySpanExporter()
    tracer = TurnTracer(trace_content=True, processors=[SimpleSpanProcessor(exporter)])
    observer = tracer.observer("s-1", "websocket", Redactor(("email",)))
    observer.event({"type": "vad.speech_started", "turn_id": 1})
    observer.event({"type": "turn.ended", "turn_id": 1, "text": "mail ann@example.com please"})
    observer.event({"type": "agent.text", "turn_id": 1, "text": "Sent to ann@example.com."})
    observer.turn_finished(1, "completed")
    (root,) = exporter.get_finished_spans()
    words = f"{root.attributes['parley.user_text']} {root.attributes['parley.agent_text']}"
    assert "ann@example.com" not in words and "please" in words and "Sent to" in words


def test_log_lines_carry_the_turns_trace_and_span_ids() -> None:
    formatter = JsonFormatter(Redactor(()))
    record = logging.LogRecord("parley.test", logging.INFO, __file__, 1, "hello", None, None)
    bind_session("s-123")
    bind_turn(4)
    try:
        line = json.loads(formatter.format(record))
    finally:
        bind_turn(None)
        bind_session(None)
    trace_id, span_id = turn_trace_ids("s-123", 4)
    assert line["trace_id"] == f"{trace_id:032x}" and line["span_id"] == f"{span_id:016x}"
