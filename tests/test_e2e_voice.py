"""A person's conversation with Parley over the real WebSocket, on the real models."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from conftest import cough, silence
from parley.client import CallClient
from parley.testing import trim_silence as trim
from voice_helpers import (
    ask_for_a_long_reply,
    assert_whole_reply_kept,
    listening,
    stored_record,
    wait_reply_done,
    word_recall,
    words,
)

pytestmark = pytest.mark.e2e


async def test_greeting_then_turn_transcribed_answered_and_spoken(server, caller, whisper_checker):
    async with CallClient(server.ws_url) as call:
        _, greeted_at = await wait_reply_done(call, after=0)
        greeting = [e["text"] for e in call.of_type("agent.text") if e["turn_id"] == 0]
        assert " ".join(greeting) == "Hello, this is Parley."

        await call.say(caller("What time does the store open tomorrow morning"))
        ended_at, ended = await call.wait_for("turn.ended", after=greeted_at, timeout=20)
        heard_words = set(words(ended["text"]))
        assert {"store", "open", "tomorrow", "morning"} <= heard_words, ended["text"]
        finals = [e for e in call.of_type("transcript.final") if e["turn_id"] == ended["turn_id"]]
        assert finals and all(e["text"] for e in finals)
        # Partials came while the user spoke, before the final, and are never committed.
        partials = [
            e for e in call.of_type("transcript.partial") if e["turn_id"] == ended["turn_id"]
        ]
        assert partials and partials[0]["ts"] <= finals[0]["ts"]

        _, done_at = await wait_reply_done(call, after=ended_at)
        said = " ".join(
            e["text"] for e in call.of_type("agent.text") if e["turn_id"] == ended["turn_id"]
        )
        assert said.strip(), "the agent said nothing"

        audio = call.audio_between(ended_at, done_at + 0.2)
        loud = audio[np.abs(audio.astype(np.int32)) > 300]
        assert loud.size > 16_000 * 0.3, "no agent audio arrived"
        heard = await whisper_checker.transcribe(audio.astype(np.float32) / 32768)
        assert word_recall(said, heard.text) >= 0.6, (said, heard.text)

        _, metrics = await call.wait_for("turn.metrics", lambda e: e["turn_id"] == ended["turn_id"])
        await call.send_json({"type": "status"})
        _, status = await call.wait_for("session.status", after=done_at)
        users = [m["content"] for m in status["history"] if m["role"] == "user"]
        assert users == [ended["text"]]

        # The store has the turn with every transition, its final segments and the metrics.
        record = await stored_record(
            server, call, lambda r: r["turns"] and r["turns"][0]["state"] == "completed"
        )
        (turn,) = record["turns"]
        assert [t["to"] for t in turn["transitions"]] == ["received", "processing", "completed"]
        assert turn["user_text"] == ended["text"] and turn["result"]["spoken"] == said
        assert [s["text"] for s in record["segments"]] == [e["text"] for e in finals]
        assert {"turn.ended", "turn.metrics"} <= {e["stage"] for e in record["events"]}
        for key in ("stt_ms", "eou_ms", "llm_ttft_ms", "tts_ttfb_ms", "voice_to_voice_ms"):
            assert isinstance(metrics[key], float) and metrics[key] >= 0, (key, metrics)


async def test_mid_sentence_pause_stays_one_turn(server, caller):
    first = trim(caller("I would like to order a cup of coffee with"))
    second = trim(caller("milk and sugar please"))
    async with CallClient(server.ws_url) as call:
        _, greeted_at = await wait_reply_done(call, after=0)
        await call.say(np.concatenate([first, silence(0.7), second]))
        ended_at, ended = await call.wait_for("turn.ended", after=greeted_at, timeout=20)
        # Give a wrongly split second turn time to show up.
        await asyncio.sleep(2.5)
        turns = [e for t, e in call.events if t >= greeted_at and e["type"] == "turn.ended"]
        assert len(turns) == 1, [e["text"] for e in turns]
        text = set(words(ended["text"]))
        assert "coffee" in text and ({"milk", "sugar"} & text), ended["text"]
        # The pause really was heard as silence: speech stopped and resumed inside the turn.
        stops = [
            e
            for t, e in call.events
            if greeted_at <= t <= ended_at and e["type"] == "vad.speech_stopped"
        ]
        assert len(stops) >= 2


async def test_speech_during_reply_interrupts_it(server, caller):
    async with CallClient(server.ws_url) as call:
        _, ended, spoke_at = await ask_for_a_long_reply(call, caller)
        await asyncio.sleep(0.6)
        assert not [e for t, e in call.events if t > spoke_at and listening(e)], (
            "reply too short to interrupt"
        )

        await call.say(caller("Wait, stop, I have another question"))
        cut_at, cut = await call.wait_for("turn.interrupted", after=spoke_at, timeout=10)
        assert cut["turn_id"] == ended["turn_id"] and cut["reason"] == "speech"
        assert call.audio_between(cut_at - 1.0, cut_at).size > 0, "the reply was not playing"

        # Outbound audio stops at once: nothing loud until the agent answers the new turn.
        await asyncio.sleep(1.0)
        resumed = [
            t
            for t, e in call.events
            if t > cut_at and e["type"] == "agent.state" and e["state"] == "speaking"
        ]
        quiet_until = min([*resumed, cut_at + 1.0])
        late = call.audio_between(cut_at + 0.1, quiet_until)
        assert late.size == 0 or np.abs(late.astype(np.int32)).max() < 300

        # History keeps only what the user heard, a prefix of what the agent had sent.
        sent = " ".join(
            e["text"] for e in call.of_type("agent.text") if e["turn_id"] == ended["turn_id"]
        )
        heard = cut["heard_text"]
        assert sent.startswith(heard)
        await call.send_json({"type": "status"})
        _, status = await call.wait_for("session.status", after=cut_at)
        assistant = [m["content"] for m in status["history"] if m["role"] == "assistant"]
        if heard:
            assert assistant[-1] == heard
        assert not any(m == sent and m != heard for m in assistant)

        record = await stored_record(
            server, call, lambda r: r["turns"] and r["turns"][0]["state"] == "interrupted"
        )
        first = record["turns"][0]
        assert [t["to"] for t in first["transitions"]] == ["received", "processing", "interrupted"]
        assert first["result"]["heard"] == heard

        # The interruption itself becomes the next turn.
        _, nxt = await call.wait_for("turn.ended", after=cut_at, timeout=20)
        heard_next = words(nxt["text"])
        assert {"wait", "stop"} & set(heard_next), nxt["text"]
        assert any(w.startswith("question") for w in heard_next), nxt["text"]


@pytest.mark.parametrize("burst", ["cough", "hm"])
async def test_short_burst_during_reply_does_not_interrupt(server, caller, burst):
    async with CallClient(server.ws_url) as call:
        _, ended, spoke_at = await ask_for_a_long_reply(call, caller)
        await asyncio.sleep(0.5)
        sound = (
            cough(0.25) if burst == "cough" else trim(caller("hm", speed=220))[: int(0.3 * 16_000)]
        )
        assert sound.size <= 0.3 * 16_000
        await call.say(sound)
        done_at, _ = await call.wait_for("agent.state", listening, after=spoke_at, timeout=40)
        cuts = [e for t, e in call.events if t > spoke_at and e["type"] == "turn.interrupted"]
        assert not cuts, [e.get("caller_text") for e in cuts]
        if burst == "hm":
            # The burst was heard as speech, and still did not interrupt.
            assert [
                e
                for t, e in call.events
                if spoke_at < t < done_at and e["type"] == "vad.speech_started"
            ]
        await assert_whole_reply_kept(call, ended["turn_id"], done_at)
