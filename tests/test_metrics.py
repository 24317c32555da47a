"""Prometheus metrics: the observer's arithmetic, ``GET /metrics`` and its access, and a
remote provider's real failure counted by stage (in-process server, real WebSocket)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from inprocess_server import (
    one_turn_of_speech,
    serve_doubles,
)
from parley.client import CallClient
from parley.config import LLMSettings
from parley.engines.llm_openai import OpenAICompatibleLLM
from parley.telemetry.metrics import (
    EngineCollector,
    EngineNames,
    LaneView,
    VoiceMetrics,
    error_stage,
)
from parley.testing import free_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, keyed by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape(metrics: VoiceMetrics) -> Samples:
    from prometheus_client import generate_latest

    return parse(generate_latest(metrics.registry).decode())


# ---- the observer -------------------------------------------------------------------------


def test_a_turns_events_fill_the_histograms_and_counters() -> None:
    metrics = VoiceMetrics(EngineNames(stt="whisper", llm="llama", tts="piper"))
    clock = iter([10.0, 10.4, 13.0])
    observer = metrics.observer("websocket")
    observer.clock = lambda: next(clock)
    observer.opened()
    observer.event({"type": "vad.speech_started", "turn_id": 1})  # t = 10.0
    observer.event({"type": "transcript.partial", "turn_id": 1, "text": "what"})  # 10.4
    observer.event({"type": "transcript.partial", "turn_id": 1, "text": "what time"})  # ignored
    observer.event(
        {
            "type": "turn.metrics",
            "turn_id": 1,
            "stt_ms": 120.0,
            "eou_ms": 300.0,
            "eou_model_ms": 90.0,
            "llm_ttft_ms": 200.0,
            "tts_ttfb_ms": 150.0,
            "voice_to_voice_ms": 700.0,
            "timeline_ms": {"stt_done": 110.0},
        }
    )
    observer.timeline("tool.result", 1, {"tool": "book", "status": "succeeded", "duration_ms": 40})
    observer.turn_finished(1, "completed")  # t = 13.0
    observer.turn_finished(1, "completed")  # once only
    observer.event({"type": "error", "code": "tts_error", "message": "x"})
    observer.event({"type": "overlap.ignored", "kind": "backchannel"})
    observer.closed("client_ended")
    observer.closed("client_ended")

    s = scrape(metrics)
    ws = {"transport": "websocket"}
    assert value(s, "parley_voice_to_voice_seconds_sum", **ws) == pytest.approx(0.7)
    assert value(s, "parley_end_of_turn_wait_seconds_sum", **ws) == pytest.approx(0.3)
    assert value(s, "parley_first_partial_transcript_seconds_sum", stt="whisper", **ws) == (
        pytest.approx(0.4)
    )
    assert value(s, "parley_first_partial_transcript_seconds_count", stt="whisper", **ws) == 1
    assert value(s, "parley_final_transcript_seconds_sum", stt="whisper", **ws) == (
        pytest.approx(0.11)
    )
    assert value(s, "parley_stt_seconds_sum", stt="whisper") == pytest.approx(0.12)
    assert value(s, "parley_end_of_turn_model_seconds_sum") == pytest.approx(0.09)
    assert value(s, "parley_llm_first_token_seconds_sum", llm="llama") == pytest.approx(0.2)
    assert value(s, "parley_tts_first_audio_seconds_sum", tts="piper") == pytest.approx(0.15)
    assert value(s, "parley_tool_call_seconds_sum", tool="book") == pytest.approx(0.04)
    assert value(s, "parley_tool_calls_total", tool="book", status="succeeded") == 1
    assert value(s, "parley_turn_duration_seconds_sum", state="completed", **ws) == 3.0
    assert value(s, "parley_turns_total", state="completed", **ws) == 1
    assert value(s, "parley_errors_total", stage="tts", code="tts_error") == 1
    assert value(s, "parley_overlaps_ignored_total", kind="backchannel", **ws) == 1
    assert value(s, "parley_sessions_started_total", **ws) == 1
    assert value(s, "parley_sessions_ended_total", reason="client_ended", **ws) == 1
    assert value(s, "parley_active_sessions", **ws) == 0


def test_an_interrupted_turn_and_a_reconnect_are_counted() -> None:
    metrics = VoiceMetrics()
    observer = metrics.observer("webrtc")
    observer.turn_finished(3, "interrupted")
    observer.timeline("session.reconnected", None, {"recovery_ms": 25.0, "messages": 4})
    observer.timeline("webrtc.inbound_stats", None, {"packets_lost": 3, "jitter_ms": 4.0})
    observer.timeline("webrtc.inbound_stats", None, {"packets_lost": 5, "jitter_ms": 2.0})
    observer.timeline("transcript.revision", 3, {"outcome": "revised", "previous_text": "x"})
    observer.timeline("transcript.revision", 4, {"outcome": "skipped", "reason": "busy"})
    s = scrape(metrics)
    rtc = {"transport": "webrtc"}
    revisions = "parley_transcript_revisions_total"
    assert value(s, revisions, outcome="revised", reason="", **rtc) == 1
    assert value(s, revisions, outcome="skipped", reason="busy", **rtc) == 1
    assert value(s, "parley_interruptions_total", **rtc) == 1
    assert value(s, "parley_turns_total", state="interrupted", **rtc) == 1
    assert value(s, "parley_reconnects_total", **rtc) == 1
    assert value(s, "parley_reconnect_recovery_seconds_sum", **rtc) == pytest.approx(0.025)
    assert value(s, "parley_webrtc_packets_lost_total") == 5  # cumulative counts, not summed
    assert value(s, "parley_webrtc_jitter_seconds_sum") == pytest.approx(0.006)


def test_lanes_workers_and_orchestration_are_read_at_scrape_time() -> None:
    metrics = VoiceMetrics()
    depth = {"pending": 3}
    lane = LaneView("stt", lambda: depth["pending"], lambda: 1, 1)
    metrics.collect_from(EngineCollector(lambda: [lane], lambda: 2, lambda: (4, 1)))
    s = scrape(metrics)
    assert value(s, "parley_engine_lane_queue_depth", lane="stt") == 2
    assert value(s, "parley_engine_lane_busy_workers", lane="stt") == 1
    assert value(s, "parley_piper_workers") == 2
    assert value(s, "parley_envelope_retries_total") == 4
    assert value(s, "parley_orchestration_failures_total") == 1
    depth["pending"] = 1
    assert value(scrape(metrics), "parley_engine_lane_queue_depth", lane="stt") == 0


def test_error_codes_name_their_stage() -> None:
    assert error_stage("llm_timeout") == "llm"
    assert error_stage("stt_error") == "stt"
    assert error_stage("audio_malformed") == "other"


def test_no_metric_is_labelled_by_session_or_carries_text() -> None:
    metrics = VoiceMetrics()
    observer = metrics.observer("websocket")
    observer.event({"type": "transcript.partial", "turn_id": 1, "text": "my card 4111"})
    observer.event({"type": "error", "code": "llm_error", "message": "secret body"})
    observer.turn_finished(1, "failed")
    text = "\n".join(f"{name} {labels}" for name, labels in scrape(metrics))
    assert "4111" not in text and "secret body" not in text and "session" not in text


# ---- over a real socket: a remote LLM that is down ------------------------------------------


@pytest.fixture
async def down_llm_server(tmp_path: Path) -> AsyncIterator[str]:
    closed = free_port()  # nothing listens here: every request is refused
    llm_settings = {"provider": "openai", "base_url": f"http://127.0.0.1:{closed}/v1", "timeout": 2}
    llm = OpenAICompatibleLLM(LLMSettings(**llm_settings))
    try:
        async for server in serve_doubles(
            f"sqlite:///{tmp_path / 'parley.db'}",
            llm_engine=llm,
            llm=llm_settings,
            telemetry={"metrics_require_admin": True, "admin_key": "operator-key-0123456789"},
        ):
            yield f"127.0.0.1:{server.port}"
    finally:
        await llm.aclose()


async def get_metrics(host: str, key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient() as http:
        return await http.get(f"http://{host}/metrics", headers=headers)


async def test_metrics_need_the_admin_key_when_so_configured(down_llm_server: str) -> None:
    assert (await get_metrics(down_llm_server, None)).status_code == 401
    assert (await get_metrics(down_llm_server, "wrong")).status_code == 401
    ok = await get_metrics(down_llm_server, "operator-key-0123456789")
    assert ok.status_code == 200 and ok.headers["content-type"].startswith("text/plain")
    assert "parley_engine_lane_queue_depth" in ok.text or "parley_turns" in ok.text


async def test_a_provider_outage_moves_the_error_counter_with_its_stage(
    down_llm_server: str,
) -> None:
    key = "operator-key-0123456789"
    before = parse((await get_metrics(down_llm_server, key)).text)
    async with CallClient(f"ws://{down_llm_server}/v1/ws") as call:
        await call.wait_for("session.started")
        await call.say(one_turn_of_speech())
        _, error = await call.wait_for("error", timeout=15)
        assert error["stage"] == "llm" and error["code"] == "engine_error"
        live = parse((await get_metrics(down_llm_server, key)).text)
        assert value(live, "parley_active_sessions", transport="websocket") == 1
    await asyncio.sleep(0.3)  # the close is recorded after the socket goes
    after = parse((await get_metrics(down_llm_server, key)).text)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("parley_errors_total", stage="llm", code=error["code"]) == 1
    assert moved("parley_turns_total", transport="websocket", state="failed") == 1
    assert moved("parley_sessions_started_total", transport="websocket") == 1
    assert (
        moved("parley_sessions_ended_total", transport="websocket", reason="disconnected")
        + (moved("parley_sessions_ended_total", transport="websocket", reason="client_ended"))
        == 1
    )
    assert value(after, "parley_active_sessions", transport="websocket") == 0
