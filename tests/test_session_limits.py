"""The pure rules behind a server safe to expose: the inbound audio budget and a live
session's limits (no server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from parley.config import ServerSettings
from parley.transports.session_limits import (
    SESSION_ENDED,
    SESSION_EXPIRED,
    SessionLimits,
    refusal,
)
from parley.voice.audio_rate import InboundAudioBudget

FRAME = 640  # 20 ms of PCM16 at 16 kHz


def test_audio_at_real_time_always_fits():
    budget = InboundAudioBudget(rate=1.5, burst_secs=2.0, close_after_secs=3.0)
    assert all(budget.admit(FRAME, i * 0.02).admitted for i in range(5_000))  # 100 s


def test_audio_at_ten_times_real_time_is_dropped_then_persistent():
    budget = InboundAudioBudget(rate=1.5, burst_secs=2.0, close_after_secs=3.0)
    verdicts = [(i * 0.002, budget.admit(FRAME, i * 0.002)) for i in range(3_000)]  # 6 s
    dropped = [(t, v) for t, v in verdicts if not v.admitted]
    # The burst and 1.5x real time go through: about 2 + 1.5 * t seconds of audio.
    first_drop_at = dropped[0][0]
    assert 0.2 < first_drop_at < 0.3  # 2 s of burst at 8.5 s of excess per second
    assert [t for t, v in dropped if v.first_drop] == [first_drop_at]  # said once
    persistent = [t for t, v in dropped if v.persistent]
    assert persistent and abs(persistent[0] - (first_drop_at + 3.0)) < 0.01
    admitted_secs = sum(v.admitted for _, v in verdicts) * 0.02
    assert abs(admitted_secs - (2.0 + 1.5 * 6.0)) < 0.1


def test_a_client_that_slows_down_is_forgiven():
    budget = InboundAudioBudget(rate=1.5, burst_secs=0.5, close_after_secs=3.0)
    t = 0.0
    for _ in range(100):  # 10x for 0.2 s: dropping starts
        budget.admit(FRAME, t)
        t += 0.002
    assert budget.dropped_secs > 0
    for _ in range(200):  # then real time for 4 s: the episode ends, nothing persists
        verdict = budget.admit(FRAME, t)
        t += 0.02
    assert verdict.admitted
    for _ in range(60):  # too fast again: a new episode, said again, not yet persistent
        verdict = budget.admit(FRAME, t)
        t += 0.002
        if not verdict.admitted:
            break
    assert verdict.first_drop and not verdict.persistent


def record(started_secs_ago: float, ended: bool = False) -> Any:
    now = datetime.now(UTC)
    return SimpleNamespace(
        started_at=(now - timedelta(seconds=started_secs_ago)).replace(tzinfo=None),
        ended_at=now if ended else None,
    )


def test_which_sessions_tokens_are_refused():
    settings = ServerSettings(max_session_secs=60)
    assert refusal(record(10), settings) is None
    assert refusal(record(10, ended=True), settings) == SESSION_ENDED
    assert refusal(record(61), settings) == SESSION_EXPIRED


def test_a_live_sessions_limits():
    settings = ServerSettings(idle_timeout_secs=30)
    activity = [100.0]
    deaf = [False]
    limits = SessionLimits(
        settings, 1_000.0, lambda: activity[0], lambda e: None, lambda c, k: None, lambda: deaf[0]
    )
    assert limits.verdict(loop_now=120.0, wall_now=500.0) is None
    assert limits.verdict(loop_now=130.0, wall_now=500.0)[:2] == ("idle_timeout", 4408)  # type: ignore[index]
    activity[0] = 129.0
    assert limits.verdict(loop_now=130.0, wall_now=1_000.0)[:2] == ("session_expired", 4410)  # type: ignore[index]
    deaf[0] = True
    assert limits.verdict(loop_now=130.0, wall_now=0.0) == ("internal_error", 1011, None)
