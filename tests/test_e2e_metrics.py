"""``GET /metrics`` moves with a real spoken conversation over the WebSocket (real
models): a completed turn fills every per-turn histogram, an interruption moves the
interruption and turn-state counters."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from parley.client import CallClient
from parley.testing import trim_silence as trim
from test_metrics import Samples, parse, value
from voice_helpers import listening, speaking, wait_reply_done

pytestmark = pytest.mark.e2e

TURN_HISTOGRAMS = [
    ("parley_voice_to_voice_seconds_count", {"transport": "websocket"}),
    ("parley_end_of_turn_wait_seconds_count", {"transport": "websocket"}),
    ("parley_first_partial_transcript_seconds_count", {"transport": "websocket", "stt": "whisper"}),
    ("parley_final_transcript_seconds_count", {"transport": "websocket", "stt": "whisper"}),
    ("parley_stt_seconds_count", {"stt": "whisper"}),
    ("parley_end_of_turn_model_seconds_count", {}),
    ("parley_llm_first_token_seconds_count", {"llm": "llama"}),
    ("parley_tts_first_audio_seconds_count", {"tts": "piper"}),
    ("parley_turn_duration_seconds_count", {"transport": "websocket", "state": "completed"}),
]


async def scrape(server) -> Samples:  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{server.http}/metrics")
    response.raise_for_status()
    return parse(response.text)


async def test_a_conversation_moves_the_metrics(server, caller):
    before = await scrape(server)
    async with CallClient(server.ws_url) as call:
        _, greeted_at = await wait_reply_done(call, after=0)
        await call.say(caller("What time does the store open tomorrow morning"))
        ended_at, _ = await call.wait_for("turn.ended", after=greeted_at, timeout=20)
        _, done_at = await wait_reply_done(call, after=ended_at)
        await asyncio.sleep(0.2)
        middle = await scrape(server)
        assert value(middle, "parley_active_sessions", transport="websocket") >= 1
        for name, labels in TURN_HISTOGRAMS:
            assert value(middle, name, **labels) > value(before, name, **labels), (name, labels)
        moved = value(middle, "parley_voice_to_voice_seconds_sum", transport="websocket") - value(
            before, "parley_voice_to_voice_seconds_sum", transport="websocket"
        )
        assert 0.1 < moved < 5.0, moved  # one plausible voice-to-voice time, in seconds
        assert value(middle, "parley_engine_lane_workers", lane="stt") >= 1

        await call.say(
            caller("Tell me a long story about a brave little dragon who learned to fly")
        )
        story_at, _ = await call.wait_for("turn.ended", after=done_at, timeout=20)
        spoke_at, _ = await call.wait_for("agent.state", speaking, after=story_at, timeout=20)
        await asyncio.sleep(0.6)
        await call.say(trim(caller("No, that's the wrong day.", speed=170)))
        await call.wait_for("turn.interrupted", after=spoke_at, timeout=10)
        await call.wait_for("agent.state", listening, after=spoke_at, timeout=10)
    await asyncio.sleep(0.5)
    after = await scrape(server)

    def moved_by(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    ws = {"transport": "websocket"}
    assert moved_by("parley_turns_total", state="completed", **ws) >= 1
    assert moved_by("parley_turns_total", state="interrupted", **ws) == 1
    assert moved_by("parley_interruptions_total", **ws) == 1
    assert moved_by("parley_sessions_started_total", **ws) == 1
    ended = sum(
        moved_by("parley_sessions_ended_total", reason=r, **ws)
        for r in ("client_ended", "disconnected")
    )
    assert ended == 1
