"""Turn-taking benchmark: does the agent wait for callers who pause mid-sentence, answer
finished questions promptly, ignore backchannels and noise, and stop for real
interruptions? Measured over the real WebSocket (or, with ``--transport webrtc``, over
WebRTC), in real time, from the audio the client receives.

Runs ``parley serve`` as a child process: the shipped ``parley.toml`` (its turn and
interruption settings are what is measured), with a system prompt that asks for
three-sentence answers and ``llm.max_tokens`` 80, so that replies last long enough to be
talked over. Caller clips (turn_taking_clips) are spoken by several espeak-ng voices,
none the agent's, in five kinds:

* complete: a finished question or request;
* pause: a sentence cut by 0.5-1.0 s of silence where it is clearly unfinished;
* backchannel / noise: asked a question, the agent answers; 0.3-0.8 s after its loud
  audio arrives, a short acknowledgement ("okay", "mm-hmm") or a sound (cough, knock,
  hum, babble) is played over it;
* interruption: the same, with a real interruption ("No, that's the wrong day").

Each trial is a session of its own (no greeting: ``agent.greeting`` is emptied), run one
after another, never two at once; a trial starts once the agent has been listening and
quiet for a second, and ends by hanging up (the complete and pause kinds need only the
reply's start).

Scoring (turn_taking_scoring, from the received audio only) gives the six figures of
issue 9, each with its n; the per-clip rows go to bench/results/turn_taking-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import turn_taking_scoring
from parley.client import CallClient
from parley.testing import ServerProcess
from parley.webrtc_client import WebRTCCallClient
from turn_taking_clips import KINDS, VOICES, Clip, build_clips
from turn_taking_scoring import (
    BACKCHANNEL_HORIZON_S,
    INTERRUPTION_HORIZON_S,
    LOUD_DBFS,
    STOP_GAP_S,
    figures,
    loud_spans,
    score_overlap,
    score_turn,
    table,
)
from voice_to_voice import RESULTS, ROOT, machine

SYSTEM_PROMPT = (
    "You are a helpful voice assistant for a shop, a clinic and a travel desk. "
    "Answer every question in three full sentences."
)
MAX_TOKENS = 80
ANSWER_WAIT_S = 8.0  # a turn's answer must start this soon after the caller's last sample
QUIET_S = 1.0  # no loud agent audio and no state change for this long before a trial
PENDING_S = 2.5  # caller speech that stopped this recently may still become a turn
SETTLE_TIMEOUT_S = 40.0


@dataclass
class TimedCall(CallClient):
    """A CallClient that keeps each received frame's level (computed once: polling
    rescans nothing)."""

    _levels: list[tuple[float, float]] = field(default_factory=list)

    async def __aenter__(self) -> TimedCall:
        await super().__aenter__()
        return self

    def levels(self) -> list[tuple[float, float]]:
        for frame in self.audio[len(self._levels) :]:
            self._levels.append((frame.at, frame.level_dbfs()))
        return self._levels

    def loud_after(self, at: float) -> float | None:
        levels = self.levels()
        i = bisect.bisect_left(levels, (at, -np.inf))
        return next((t for t, level in levels[i:] if level > LOUD_DBFS), None)

    def last_loud(self) -> float | None:
        return next((t for t, level in reversed(self.levels()) if level > LOUD_DBFS), None)

    def event_times(self, type_: str, after: float) -> list[float]:
        return [at for at, ev in self.events if at >= after and ev.get("type") == type_]


@dataclass
class TimedWebRTCCall(TimedCall, WebRTCCallClient):
    """The same, over WebRTC (Opus both ways, events on the data channel)."""


CALLS: dict[str, type[TimedCall]] = {"websocket": TimedCall, "webrtc": TimedWebRTCCall}


def now() -> float:
    return asyncio.get_running_loop().time()


async def wait_loud(call: TimedCall, after: float, timeout: float) -> float | None:
    """The arrival time of the first loud agent frame after ``after``, polled every 20 ms."""
    deadline = now() + timeout
    while True:
        hit = call.loud_after(after)
        if hit is not None or now() >= deadline:
            return hit
        await asyncio.sleep(0.02)


async def sleep_until(at: float) -> None:
    await asyncio.sleep(max(0.0, at - now()))


async def settle(call: TimedCall) -> None:
    """Wait until the agent is listening and has been quiet and still for ``QUIET_S``,
    with no caller speech that may yet become a turn, stopping any reply that plays (a
    greeting set with ``--env``) with ``interrupt``: a trial starts on a quiet line."""
    deadline = now() + SETTLE_TIMEOUT_S
    last_interrupt = -1.0
    while now() < deadline:
        states = [(at, ev["state"]) for at, ev in call.events if ev.get("type") == "agent.state"]
        vad = [(at, ev["type"]) for at, ev in call.events if ev.get("type", "").startswith("vad.")]
        ended = call.event_times("turn.ended", vad[-1][0]) if vad else []
        # Caller speech that stopped moments ago may still end a turn (after at most
        # turn.max_endpointing_delay, 1.6 s by default): wait it out.
        pending = bool(vad) and (
            vad[-1][1] == "vad.speech_started" or (not ended and now() - vad[-1][0] < PENDING_S)
        )
        started = call.event_times("session.started", 0.0)
        # A session starts listening, with no agent.state event until the state changes.
        changed = states[-1][0] if states else started[0] if started else now()
        quiet_since = max(changed, call.last_loud() or 0.0)
        listening = bool(started) and (not states or states[-1][1] == "listening")
        if listening and not pending and now() - quiet_since >= QUIET_S:
            return
        if states and states[-1][1] == "speaking" and now() - last_interrupt > 0.5:
            await call.send_json({"type": "interrupt"})
            last_interrupt = now()
        await asyncio.sleep(0.05)
    raise TimeoutError("the agent did not settle before the trial")


async def speak(call: TimedCall, pcm: np.ndarray) -> tuple[float, float]:
    start, end = call.say_timed(pcm)
    timeout = pcm.size / 16_000 + 10
    return await asyncio.wait_for(start, timeout), await asyncio.wait_for(end, timeout)


def said(call: TimedCall, after: float) -> list[str]:
    """The agent's sentences whose audio started since ``after`` (for reading only)."""
    return [
        ev.get("text", "")
        for at, ev in call.events
        if at >= after and ev.get("type") == "agent.text"
    ]


def heard(call: TimedCall, after: float) -> list[str]:
    """What the server transcribed as the caller's turns since ``after`` (for reading the
    results only; no score uses it)."""
    return [
        ev.get("text", "")
        for at, ev in call.events
        if at >= after and ev.get("type") == "turn.ended"
    ]


def end_of_turn(call: TimedCall, after: float) -> list[dict[str, Any]]:
    """The server's end-of-turn verdicts since ``after`` (for reading the results only)."""
    keys = ("eou_probability", "eou_text_probability", "eou_delay")
    return [
        {k: ev.get(k) for k in keys}
        for at, ev in call.events
        if at >= after and ev.get("type") == "turn.ended"
    ]


async def turn_trial(call: TimedCall, clip: Clip) -> dict[str, Any]:
    start, end = await speak(call, clip.pcm)
    await wait_loud(call, end, ANSWER_WAIT_S)
    scored = score_turn(call.levels(), start, end, ANSWER_WAIT_S)
    return {
        **scored,
        "heard": heard(call, start),
        "end_of_turn": end_of_turn(call, start),
        "agent_said": said(call, start),
    }


async def overlap_trial(call: TimedCall, clip: Clip) -> dict[str, Any]:
    assert clip.question_pcm is not None and clip.delay_s is not None
    _, asked = await speak(call, clip.question_pcm)
    reply = await wait_loud(call, asked, ANSWER_WAIT_S + 4)
    if reply is None:
        return {"outcome": "not_speaking", "stop_ms": None, "why": "no reply to the question"}
    await sleep_until(reply + clip.delay_s)
    start, _ = await speak(call, clip.pcm)
    horizon = INTERRUPTION_HORIZON_S if clip.kind == "interruption" else BACKCHANNEL_HORIZON_S
    # The frames must cover a whole stop gap past the horizon, and the event its slack.
    await sleep_until(start + horizon + STOP_GAP_S + 0.6)
    interrupted = call.event_times("turn.interrupted", start)
    listening = [
        at
        for at, ev in call.events
        if at >= start - 1.0 and ev.get("type") == "agent.state" and ev["state"] == "listening"
    ]
    frames = call.levels()
    scored = score_overlap(frames, start, horizon, interrupted, listening)
    return {
        **scored,
        "reply_started_s": round(start - reply, 3),
        "interrupted_event_ms": [round((at - start) * 1000, 1) for at in interrupted],
        "listening_event_ms": [round((at - start) * 1000, 1) for at in listening],
        "agent_loud_ms": loud_spans(frames, start - 1.0, start + horizon + STOP_GAP_S, start),
        "heard": heard(call, start),
        "agent_said": said(call, asked),
    }


async def run_trials(url: str, clips: list[Clip], transport: str) -> list[dict[str, Any]]:
    """Each clip as a trial in a session of its own, one after another: a conversation
    carries no history from the trial before (kept replies cut off after a few words
    teach the small LLM to answer in a few words, and then replies end before an
    overlap can be scored)."""
    rows: list[dict[str, Any]] = []
    for clip in clips:
        row = clip.row()
        try:
            async with CALLS[transport](url) as call:
                await settle(call)
                if clip.kind in ("complete", "pause"):
                    row |= await turn_trial(call, clip)
                else:
                    row |= await overlap_trial(call, clip)
        except TimeoutError as exc:
            row |= failed(clip.kind, f"trial timed out: {exc}")
        except (ConnectionError, OSError) as exc:
            row |= failed(clip.kind, f"connection failed: {type(exc).__name__} {exc}")
        rows.append(row)
        print(f"  {clip.kind:<12} {describe(row)}  {clip.text!r}", flush=True)
        # The server drops the closed session (its reply and transcription) meanwhile.
        await asyncio.sleep(0.3)
    return rows


def failed(kind: str, why: str) -> dict[str, Any]:
    """A trial that could not run: a turn counts as unanswered (never dropped from the
    figures); an overlap trial is left out (and counted as such)."""
    if kind in ("complete", "pause"):
        return {"cut_in": False, "latency_ms": None, "answered_in_time": False, "failed": why}
    return {"outcome": "not_speaking", "stop_ms": None, "failed": why}


def describe(row: dict[str, Any]) -> str:
    if "outcome" in row:
        return f"{row['outcome']:<16} stop {row['stop_ms']} ms"
    return f"cut in: {row['cut_in']!s:<5} latency {row['latency_ms']} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"among {','.join(KINDS)}")
    parser.add_argument("--limit", type=int, default=None, help="at most N clips of each kind")
    parser.add_argument("--voices", default=",".join(VOICES), help="espeak-ng voices")
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--url", default=None, help="use a running server (ws://…/v1/ws)")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server")
    parser.add_argument("--transport", choices=sorted(CALLS), default="websocket")
    args = parser.parse_args()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if unknown := set(kinds) - set(KINDS):
        sys.exit(f"unknown kinds {sorted(unknown)}; choose among {KINDS}")
    voices = [v.strip() for v in args.voices.split(",") if v.strip()]

    began = time.monotonic()
    clips = build_clips(kinds, voices, args.seed, args.limit)
    print(f"{len(clips)} clips from {len(voices)} voices", flush=True)
    env = {
        "PARLEY_LOG_LEVEL": "WARNING",
        "PARLEY_SERVER__DATABASE_URL": f"sqlite:///{RESULTS / 'bench.db'}",
        "PARLEY_AGENT__SYSTEM_PROMPT": SYSTEM_PROMPT,
        "PARLEY_LLM__MAX_TOKENS": str(MAX_TOKENS),
        "PARLEY_AGENT__GREETING": "",
        # The demo agent would say a matching fact as it is: a sentence too short to be
        # talked over. The model answers (from the facts), at the length asked above.
        "PARLEY_AGENT__KNOWLEDGE_ANSWERS": "restate",
        **dict(kv.split("=", 1) for kv in args.env),
    }
    server = None if args.url else ServerProcess(env, RESULTS / "turn_taking-server.log", cwd=ROOT)
    url = args.url or (server.ws_url if server else "")
    rows: list[dict[str, Any]] = []
    try:
        for kind in kinds:
            batch = [c for c in clips if c.kind == kind]
            if batch:
                print(f"{kind}: {len(batch)} clips", flush=True)
                rows += asyncio.run(run_trials(url, batch, args.transport))
    finally:
        if server is not None:
            server.stop()
    elapsed = time.monotonic() - began

    fig = figures(rows)
    m = machine()
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": m,
        "elapsed_s": round(elapsed, 1),
        "settings": {
            "kinds": kinds,
            "voices": voices,
            "seed": args.seed,
            "limit": args.limit,
            "system_prompt": SYSTEM_PROMPT,
            "max_tokens": MAX_TOKENS,
            "env": args.env,
            "transport": args.transport,
        },
        "method": turn_taking_scoring.__doc__,
        "figures": fig,
        "clips": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"turn_taking-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False))

    print(
        f"\nParley turn-taking benchmark over {args.transport} — {m['cpu']}, {m['cores']} cores, "
        f"{elapsed:.0f} s"
    )
    print("\n".join(table(fig)))
    print(f"results: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
