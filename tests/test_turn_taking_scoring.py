"""The turn-taking bench's scoring, on made-up received audio (no server, no models, no
espeak-ng): cut-ins, stops and unanswered turns are read from frame levels alone."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import turn_taking_scoring as tts

LOUD, QUIET = -20.0, -90.0


def received(loud: list[tuple[float, float]], until: float) -> list[tuple[float, float]]:
    """20 ms frames from 0 to ``until``, loud inside the (start, end) spans: what the
    client logs, (arrival time, dBFS)."""
    frames = []
    for i in range(round(until / 0.02)):
        at = round(i * 0.02, 3)
        frames.append((at, LOUD if any(a <= at < b for a, b in loud) else QUIET))
    return frames


def test_agent_audio_during_the_callers_pause_is_a_cut_in() -> None:
    # Caller speaks 0-1.0 s, pauses, goes on 1.8-3.0 s; the agent starts at 1.5 s.
    frames = received([(1.5, 4.0)], until=4.0)
    row = tts.score_turn(frames, clip_start=0.0, speech_end=3.0)
    assert row["cut_in"] is True
    assert row["cut_in_after_ms"] == pytest.approx(1500, abs=1)


def test_an_answer_after_the_turn_is_not_a_cut_in_and_its_latency_is_measured() -> None:
    frames = received([(3.7, 6.0)], until=6.0)
    row = tts.score_turn(frames, clip_start=0.0, speech_end=3.0)
    assert row["cut_in"] is False
    assert row["latency_ms"] == pytest.approx(700, abs=1)
    assert row["answered_in_time"] is True


def test_a_turn_with_no_agent_audio_is_unanswered_and_infinitely_late() -> None:
    frames = received([], until=12.0)
    row = tts.score_turn(frames, clip_start=0.0, speech_end=2.0)
    assert row == {
        "cut_in": False,
        "cut_in_after_ms": None,
        "latency_ms": None,
        "answered_in_time": False,
    }
    late = tts.score_turn(received([(4.0, 6.0)], until=6.0), 0.0, 2.0)
    assert late["latency_ms"] == pytest.approx(2000, abs=1)
    assert late["answered_in_time"] is False  # answered, but after 1.5 s
    rows = [{"kind": "complete", **row}, {"kind": "complete", **late}]
    fig = tts.figures(rows)
    assert fig["complete_no_answer_1_5s"] == {"percent": 100.0, "n": 2}
    assert fig["complete_latency"]["p50"] == "timeout"  # the midpoint touches the no-answer
    assert fig["complete_latency"]["no_answer"] == 1


def test_a_250_ms_gap_between_sentences_is_not_a_stop() -> None:
    # The reply runs 0-6 s with a 250 ms pause between sentences at 1.2 s.
    frames = received([(0.0, 1.2), (1.45, 6.0)], until=6.0)
    row = tts.score_overlap(frames, clip_start=1.0, horizon=2.0)
    assert row == {"outcome": "kept_talking", "stop_ms": None}


def test_the_stop_time_is_the_end_of_the_last_loud_frame() -> None:
    # The clip starts at 2.0 s; the agent's last loud frame arrives at 2.36 s (it covers
    # 20 ms), then nothing until its answer to the interruption at 4.0 s.
    frames = received([(0.0, 2.38), (4.0, 5.0)], until=5.0)
    row = tts.score_overlap(frames, clip_start=2.0, horizon=4.0, interrupted_at=[2.4])
    assert row["outcome"] == "stopped"
    assert row["stop_ms"] == pytest.approx(380, abs=1)


def test_a_reply_that_ends_on_its_own_is_left_out_and_a_resumed_pause_is_no_stop() -> None:
    ended = received([(0.0, 2.5)], until=5.0)
    row = tts.score_overlap(ended, clip_start=2.0, horizon=2.0)
    assert row["outcome"] == "ended_on_its_own"
    # A 600 ms wait for the TTS inside the reply, with no interruption reported.
    paused = received([(0.0, 2.3), (2.9, 6.0)], until=6.0)
    assert tts.score_overlap(paused, 2.0, 2.0)["outcome"] == "kept_talking"
    # The reply ends at 2.5 s (the server says listening) and the agent then answers
    # the clip: audio resumes, but it is a new reply, not the same one going on.
    answered = received([(0.0, 2.5), (3.4, 5.0)], until=5.0)
    row = tts.score_overlap(answered, 2.0, 2.0, listening_at=[2.55])
    assert row["outcome"] == "ended_on_its_own"
    quiet = received([(0.0, 1.0)], until=4.0)
    assert tts.score_overlap(quiet, 2.0, 2.0)["outcome"] == "not_speaking"


def test_figures_count_stops_per_kind_and_never_stopped_interruptions_as_late() -> None:
    rows: list[dict[str, Any]] = [
        {"kind": "backchannel", "outcome": "stopped", "stop_ms": 600.0},
        {"kind": "backchannel", "outcome": "kept_talking", "stop_ms": None},
        {"kind": "noise", "outcome": "kept_talking", "stop_ms": None},
        {"kind": "noise", "outcome": "ended_on_its_own", "stop_ms": None},
        {"kind": "interruption", "outcome": "stopped", "stop_ms": 400.0},
        {"kind": "interruption", "outcome": "stopped", "stop_ms": 1200.0},
        {"kind": "interruption", "outcome": "kept_talking", "stop_ms": None},
    ]
    fig = tts.figures(rows)
    assert fig["backchannel_stops"] == {"stopped": 1, "n": 2, "excluded": 0}
    assert fig["noise_stops"] == {"stopped": 0, "n": 1, "excluded": 1}
    assert fig["interruption_stopped_1s"]["percent"] == pytest.approx(33.3)
    assert fig["interruption_stopped_1s"]["never_stopped"] == 1
    assert fig["interruption_stop_ms"]["p50"] == 1200.0
    assert fig["interruption_stop_ms"]["p95"] == "timeout"
    assert len(tts.table(fig)) >= 9


def test_loud_spans_give_the_received_timeline_in_ms_from_the_clip() -> None:
    frames = received([(0.0, 0.5), (0.55, 1.0), (2.0, 2.2)], until=3.0)
    spans = tts.loud_spans(frames, since=0.2, until=3.0, origin=1.0)
    assert spans == [[-800, 0], [1000, 1200]]
