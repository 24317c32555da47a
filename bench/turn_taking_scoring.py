"""Scoring of the turn-taking bench, from the agent audio the client received: pure
functions of ``frames``, a list of (arrival time, level in dBFS) of every 20 ms agent
frame, in arrival order, and of the loop times at which the clip's audio was sent.

The server paces its audio in real time, at most 80 ms ahead, so arrival times are the
caller's listening times to within that lead.

* Loud: a frame above -40 dBFS (the latency bench's threshold).
* Agent speech is continuous while its loud frames are less than ``STOP_GAP_S`` (400 ms)
  apart: the pauses between the agent's sentences (~100-300 ms) are not stops.
* The agent stopped at the end of its last loud frame before a silence of at least
  ``STOP_GAP_S``.

Whether and when the agent stopped comes from the audio; server events only say what a
silence of an overlap trial was. It is the agent stopping for the clip when a
``turn.interrupted`` event arrived between the clip's start and 0.5 s after the silence
began; else the reply ending on its own when an ``agent.state`` ``listening`` event
arrived within 0.5 s of its start, or when the audio never resumed (such trials are
left out of the figures, and counted); else a pause inside the reply (the agent waited
for its TTS), not a stop.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import Any

from voice_to_voice import TIMEOUT, pct

LOUD_DBFS = -40.0
FRAME_S = 0.020
STOP_GAP_S = 0.4
ANSWER_WINDOW_S = 1.5  # a complete question must be answered within this
BACKCHANNEL_HORIZON_S = 2.0  # a stop counts for a backchannel if it starts this soon
INTERRUPTION_HORIZON_S = 4.0  # how long an interruption's effect is watched
PROMPT_STOP_S = 1.0  # "stopped within 1 s" of an interruption
EVENT_SLACK_S = 0.5  # turn.interrupted arrives with the last frames, not later than this

Frames = Sequence[tuple[float, float]]


def loud_times(frames: Frames, threshold: float = LOUD_DBFS) -> list[float]:
    """Arrival times of the loud frames, sorted."""
    return sorted(at for at, level in frames if level > threshold)


def first_loud(frames: Frames, start: float, end: float = math.inf) -> float | None:
    """The arrival time of the first loud frame in [start, end), or None."""
    times = loud_times(frames)
    i = bisect.bisect_left(times, start)
    return times[i] if i < len(times) and times[i] < end else None


def score_turn(
    frames: Frames, clip_start: float, speech_end: float, answer_wait: float = 8.0
) -> dict[str, Any]:
    """A caller's turn (complete, or with a mid-sentence pause) spoken from ``clip_start``
    to ``speech_end`` (the send time of its last speech sample), with the agent quiet
    before it. ``cut_in``: loud agent audio arrived before the caller finished.
    ``latency_ms``: from ``speech_end`` to the first loud frame after it (None when none
    came within ``answer_wait``). ``answered_in_time``: that frame came within 1.5 s."""
    cut = first_loud(frames, clip_start, speech_end)
    answer = first_loud(frames, speech_end, speech_end + answer_wait)
    latency = None if answer is None else answer - speech_end
    return {
        "cut_in": cut is not None,
        "cut_in_after_ms": None if cut is None else round((cut - clip_start) * 1000, 1),
        "latency_ms": None if latency is None else round(latency * 1000, 1),
        "answered_in_time": latency is not None and latency <= ANSWER_WINDOW_S,
    }


def silences(
    frames: Frames, since: float, until: float, gap: float = STOP_GAP_S
) -> tuple[bool, list[tuple[float, float | None]]]:
    """Whether the agent was speaking at ``since`` (a loud frame in the ``gap`` before it
    or at it), and each silence of at least ``gap`` that starts at or before ``until``
    in the speech going on at ``since``: (stop time, time loud audio resumed or None).
    The frames must cover ``until + gap``; a silence still running at the last frame
    counts."""
    times = loud_times(frames)
    i = bisect.bisect_left(times, since - gap)
    if i == len(times) or times[i] > since:
        return False, []
    found: list[tuple[float, float | None]] = []
    prev = times[i]
    for t in times[i + 1 :]:
        stop = prev + FRAME_S
        if stop > until:
            return True, found
        if t - stop >= gap:
            found.append((stop, t))
        prev = t
    stop = prev + FRAME_S
    if stop <= until:
        found.append((stop, None))
    return True, found


def score_overlap(
    frames: Frames,
    clip_start: float,
    horizon: float,
    interrupted_at: Sequence[float] = (),
    listening_at: Sequence[float] = (),
) -> dict[str, Any]:
    """A clip played over the agent's reply from ``clip_start``; ``horizon`` seconds
    after it is the latest a stop may start to count. ``interrupted_at`` and
    ``listening_at``: arrival times of ``turn.interrupted`` and ``agent.state``
    ``listening`` events (used only to tell a reply that ended on its own).

    ``outcome``: ``stopped`` (``stop_ms`` from the clip's start, 0 when the agent went
    quiet just before it), ``kept_talking``, ``ended_on_its_own`` or ``not_speaking``
    (the agent was quiet when the clip began); the last two are left out of the
    figures."""
    speaking, gaps = silences(frames, clip_start, clip_start + horizon)
    if not speaking:
        return {"outcome": "not_speaking", "stop_ms": None}
    for stop, resumed in gaps:
        if any(clip_start <= at <= stop + EVENT_SLACK_S for at in interrupted_at):
            stop_ms = round(max(0.0, stop - clip_start) * 1000, 1)
            return {"outcome": "stopped", "stop_ms": stop_ms}
        done = any(abs(at - stop) <= EVENT_SLACK_S for at in listening_at)
        if done or resumed is None:
            return {"outcome": "ended_on_its_own", "stop_ms": None}
    return {"outcome": "kept_talking", "stop_ms": None}


def loud_spans(
    frames: Frames, since: float, until: float, origin: float, merge: float = 0.1
) -> list[list[float]]:
    """The loud stretches in [since, until], in ms from ``origin`` (frames less than
    ``merge`` apart joined): the received audio's timeline, kept for reading a trial."""
    spans: list[list[float]] = []
    for t in loud_times(frames):
        if not since <= t <= until:
            continue
        if spans and t - spans[-1][1] < merge:
            spans[-1][1] = t + FRAME_S
        else:
            spans.append([t, t + FRAME_S])
    return [[round((a - origin) * 1000), round((b - origin) * 1000)] for a, b in spans]


def percent(k: int, n: int) -> float | None:
    return None if n == 0 else round(100.0 * k / n, 1)


def figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The six figures of issue 9 (and the complete turns' latency) from per-clip rows,
    each with its n. A turn with no answer takes part in a latency percentile as an
    infinitely late one, and an interruption never stopped as an infinitely late stop
    (``TIMEOUT`` when a percentile falls on one)."""

    def of(kind: str) -> list[dict[str, Any]]:
        return [r for r in rows if r["kind"] == kind]

    complete, paused = of("complete"), of("pause")
    out: dict[str, Any] = {}
    cut = [r for r in paused if r["cut_in"]]
    out["pause_cut_in"] = {"percent": percent(len(cut), len(paused)), "n": len(paused)}
    late = [r for r in complete if not r["answered_in_time"]]
    out["complete_no_answer_1_5s"] = {
        "percent": percent(len(late), len(complete)),
        "n": len(complete),
    }

    def latency(turns: list[dict[str, Any]]) -> dict[str, Any]:
        values = [r["latency_ms"] for r in turns if r["latency_ms"] is not None]
        missing = len(turns) - len(values)
        return {
            "p50": pct(values, 50, missing),
            "p95": pct(values, 95, missing),
            "n": len(turns),
            "no_answer": missing,
        }

    out["pause_latency"] = latency([r for r in paused if not r["cut_in"]])
    out["pause_latency_all"] = latency(paused)
    out["complete_latency"] = latency(complete)

    for kind in ("backchannel", "noise"):
        scored = [r for r in of(kind) if r["outcome"] in ("stopped", "kept_talking")]
        stopped = [r for r in scored if r["outcome"] == "stopped"]
        out[f"{kind}_stops"] = {
            "stopped": len(stopped),
            "n": len(scored),
            "excluded": len(of(kind)) - len(scored),
        }

    inter = of("interruption")
    scored = [r for r in inter if r["outcome"] in ("stopped", "kept_talking")]
    stop_ms = [r["stop_ms"] for r in scored if r["outcome"] == "stopped"]
    never = len(scored) - len(stop_ms)
    prompt = [ms for ms in stop_ms if ms <= PROMPT_STOP_S * 1000]
    out["interruption_stopped_1s"] = {
        "percent": percent(len(prompt), len(scored)),
        "n": len(scored),
        "never_stopped": never,
        "excluded": len(inter) - len(scored),
    }
    out["interruption_stop_ms"] = {
        "p50": pct(stop_ms, 50, never),
        "p95": pct(stop_ms, 95, never),
        "n": len(scored),
    }
    return out


def _ms(value: float | str | None) -> str:
    if value is None:
        return "n/a"
    return TIMEOUT if value == TIMEOUT else f"{value:.0f} ms"


def _pc(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} %"


def table(fig: dict[str, Any]) -> list[str]:
    """The figures as the issue's table: figure | value | n."""
    pl, pa, cl = fig["pause_latency"], fig["pause_latency_all"], fig["complete_latency"]
    bc, nz = fig["backchannel_stops"], fig["noise_stops"]
    it, st = fig["interruption_stopped_1s"], fig["interruption_stop_ms"]
    rows = [
        (
            "caller pauses mid-sentence: agent starts talking before the caller finished",
            _pc(fig["pause_cut_in"]["percent"]),
            f"{fig['pause_cut_in']['n']}",
        ),
        (
            "complete question: no answer within 1.5 s",
            _pc(fig["complete_no_answer_1_5s"]["percent"]),
            f"{fig['complete_no_answer_1_5s']['n']}",
        ),
        (
            "after a mid-sentence pause: answer latency p50 (not cut off; all turns)",
            f"{_ms(pl['p50'])} (all: {_ms(pa['p50'])})",
            f"{pl['n']} ({pa['n']})",
        ),
        (
            "short spoken backchannel while the agent speaks: agent stops (coughs, noise)",
            f"{bc['stopped']} of {bc['n']} ({nz['stopped']} of {nz['n']})",
            f"{bc['n']} ({nz['n']})",
        ),
        (
            "real interruption: agent stops within 1 s",
            _pc(it["percent"]) + f" ({it['never_stopped']} never stopped)",
            f"{it['n']}",
        ),
        (
            "real interruption: start to agent audio stopping, p50 (p95)",
            f"{_ms(st['p50'])} ({_ms(st['p95'])})",
            f"{st['n']}",
        ),
        (
            "(complete question: answer latency p50 (p95))",
            f"{_ms(cl['p50'])} ({_ms(cl['p95'])})",
            f"{cl['n']}",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"| {'figure':<{width}} | value | n |", f"|{'-' * (width + 2)}|---|---|"]
    lines += [f"| {name:<{width}} | {value} | {n} |" for name, value, n in rows]
    excluded = bc["excluded"] + nz["excluded"] + it["excluded"]
    if excluded:
        lines.append(
            f"({excluded} overlap clips left out: the agent was not speaking when the clip "
            "began, or its reply ended on its own)"
        )
    return lines
