"""Voice-to-voice benchmark over the real WebSocket and WebRTC paths, in real time.

voice-to-voice = arrival of the first agent audio frame louder than -40 dBFS minus the
client's send time of the frame holding the user's last speech sample. Over WebRTC the
client is an aiortc peer (Opus both ways, as from a browser); "sent" is when its
microphone track hands the frame to the Opus encoder, "arrival" when the decoded frame
comes out of its receiver.

A turn that brings no agent audio (no reply within the time limit, or a reply with no
audible frame) is a failure: it is counted, and it takes part in the voice-to-voice
percentiles as an infinitely late reply, so a percentile that falls on a failure reads
"timeout" instead of quietly leaving the turn out.

Runs ``parley serve`` (the shipped parley.toml, embedded models) as a child process,
speaks 10 generated caller utterances one turn at a time over WebSocket, 10 reworded ones
over WebRTC (see v2v_prompts: no run replays another's prompts from the LLM's cache), then
measures how many concurrent sessions the machine holds with voice-to-voice p95 <= 1.5 s,
from at least 30 turns at each step. Prints the figures and writes JSON under
bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from parley.client import CallClient
from parley.testing import OTLPReceiver, ServerProcess, caller_speech
from parley.webrtc_client import WebRTCCallClient
from phone_path import AUTH_TOKEN, run_phone_session
from telemetry_overhead import alternate
from v2v_prompts import (
    INTRO_COUNT,
    PHONE_UTTERANCES,
    UTTERANCES,
    WEBRTC_UTTERANCES,
    caller_intro,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

STAGES = ["stt_ms", "eou_ms", "eou_model_ms", "llm_ttft_ms", "tts_ttfb_ms", "voice_to_voice_ms"]
CONCURRENCY_P95_LIMIT_MS = 1500.0
MIN_SAMPLES_PER_STEP = 30
TURN_TIMEOUT_S = 60.0
TIMEOUT = "timeout"  # a percentile that falls on a failed turn


def pct(values: list[float], q: float, failures: int = 0) -> float | str | None:
    """The q-th percentile (numpy's linear interpolation) of the values plus ``failures``
    infinitely late ones: ``TIMEOUT`` when it falls on (or between) failures."""
    ordered = sorted(values) + [math.inf] * failures
    if not ordered:
        return None
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    if math.isinf(ordered[lo]) or (hi > lo and math.isinf(ordered[hi])):
        return TIMEOUT
    return round(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo), 1)


def within(value: float | str | None, limit: float) -> bool:
    return isinstance(value, int | float) and value <= limit


def failed_turn(text: str, why: str) -> dict[str, Any]:
    return {"said": text, "heard": None, "failed": why, "client_voice_to_voice_ms": None}


async def one_turn(call: CallClient, text: str, mark: float) -> tuple[dict[str, Any], float]:
    """Say ``text`` once the agent listens (since loop time ``mark``); the turn's record and
    the time the agent listened again."""
    last_speech_at = await asyncio.wait_for(call.say(caller_speech(text)), TURN_TIMEOUT_S)
    ended_at, ended = await call.wait_for("turn.ended", after=mark, timeout=TURN_TIMEOUT_S)
    spoke_at, _ = await call.wait_for(
        "agent.state", lambda e: e["state"] == "speaking", after=ended_at, timeout=TURN_TIMEOUT_S
    )
    mark, _ = await call.wait_for(
        "agent.state", lambda e: e["state"] == "listening", after=spoke_at, timeout=90
    )
    first = call.first_loud_audio_after(last_speech_at)
    turn_id = ended["turn_id"]
    filler = any(e.get("turn_id") == turn_id for e in call.of_type("agent.filler"))
    if filler:
        # "One moment." was said while the answer was late: time the answer, whose first
        # sentence is announced (agent.text) as its audio starts.
        texts = [at for at, e in call.events if e.get("type") == "agent.text"]
        answer_at = next((at for at in texts if at > last_speech_at), None)
        first = None if answer_at is None else call.first_loud_audio_after(answer_at)
    metrics = next(
        (e for e in call.of_type("turn.metrics") if e["turn_id"] == ended["turn_id"]), {}
    )
    turn = {
        "said": text,
        "heard": ended["text"],
        "failed": None if first is not None else "no audible agent audio",
        "client_voice_to_voice_ms": None
        if first is None
        else round((first - last_speech_at) * 1000, 1),
        **{k: metrics.get(k) for k in STAGES},
        "preemptive": metrics.get("preemptive"),
        "filler": filler,
        "drafts_discarded": metrics.get("drafts_discarded"),
        "early_finals_discarded": metrics.get("early_finals_discarded"),
        "timeline_ms": metrics.get("timeline_ms"),
    }
    return turn, mark


async def listening_again(call: CallClient) -> float:
    """After a failed turn: the loop time from which the agent listens again."""
    now = asyncio.get_running_loop().time()
    states = call.of_type("agent.state")
    if states and states[-1]["state"] == "listening":
        return now
    at, _ = await call.wait_for(
        "agent.state", lambda e: e["state"] == "listening", after=now, timeout=TURN_TIMEOUT_S
    )
    return at


async def run_session(
    url: str,
    utterances: list[str],
    start_delay: float = 0.0,
    client: type[CallClient] = CallClient,
) -> list[dict[str, Any]]:
    """One caller: waits for the greeting, then says each utterance after the last reply.
    Every utterance gets a record; one that brought no agent audio is marked failed."""
    await asyncio.sleep(start_delay)
    turns: list[dict[str, Any]] = []
    why = "session ended"
    try:
        async with client(url) as call:
            spoke, _ = await call.wait_for(
                "agent.state", lambda e: e["state"] == "speaking", timeout=60
            )
            mark, _ = await call.wait_for(
                "agent.state", lambda e: e["state"] == "listening", after=spoke, timeout=60
            )
            for text in utterances:
                try:
                    turn, mark = await one_turn(call, text, mark)
                except TimeoutError:
                    turns.append(failed_turn(text, "no reply within the time limit"))
                    mark = await listening_again(call)
                    continue
                turns.append(turn)
                await asyncio.sleep(0.5)
    except (TimeoutError, ConnectionError, OSError) as exc:
        why = f"session ended: {type(exc).__name__} {exc}".strip()
    # What the caller never got to say failed too: a dead session is not a fast one.
    turns += [failed_turn(text, why) for text in utterances[len(turns) :]]
    return turns


def summarize(turns: list[dict[str, Any]]) -> dict[str, Any]:
    failures = sum(1 for t in turns if t.get("failed"))
    out: dict[str, Any] = {"turns": len(turns), "failures": failures}
    out["fillers"] = sum(1 for t in turns if t.get("filler"))
    heard = [
        t["client_voice_to_voice_ms"]
        for t in turns
        if not t.get("failed") and isinstance(t.get("client_voice_to_voice_ms"), int | float)
    ]
    out["client_voice_to_voice_ms"] = {
        "p50": pct(heard, 50, failures),
        "p95": pct(heard, 95, failures),
        "n": len(heard) + failures,
        "failures": failures,
    }
    # The server's own stage figures exist only for turns it answered.
    for key in STAGES:
        values = [t[key] for t in turns if isinstance(t.get(key), int | float)]
        out[key] = {"p50": pct(values, 50), "p95": pct(values, 95), "n": len(values)}
    return out


def rounds_for(sessions: int, per_session: int, min_samples: int) -> int:
    """Rounds of ``sessions`` concurrent callers, ``per_session`` turns each, that give at
    least ``min_samples`` turns."""
    return max(1, math.ceil(min_samples / (sessions * per_session)))


_callers = itertools.count()  # every concurrency session in this process opens differently


async def concurrency(
    url: str, sessions: int, per_session: int, min_samples: int = MIN_SAMPLES_PER_STEP
) -> dict[str, Any]:
    """``sessions`` callers at once, round after round until the step has ``min_samples``
    turns. Each session opens with its own introduction (see v2v_prompts), then says
    follow-ups from both runs' utterances."""
    pool = UTTERANCES + WEBRTC_UTTERANCES
    turns: list[dict[str, Any]] = []
    rounds = rounds_for(sessions, per_session, min_samples)
    for _ in range(rounds):
        jobs = []
        for i in range(sessions):
            k = next(_callers)
            follow_ups = [pool[(k + j) % len(pool)] for j in range(per_session - 1)]
            jobs.append(run_session(url, [caller_intro(k), *follow_ups], start_delay=i * 0.7))
        for result in await asyncio.gather(*jobs):
            turns += result
    return {**summarize(turns), "sessions": sessions, "rounds": rounds}


def telemetry_overhead(env: dict[str, str], prompts: list[str]) -> dict[str, Any]:
    """Telemetry on (metrics, traces to a local OTLP receiver) against off, two servers,
    alternating turns (see telemetry_overhead)."""
    receiver = OTLPReceiver()
    servers: list[ServerProcess] = []
    try:
        for name, extra in (
            ("on", {"PARLEY_TELEMETRY__OTLP_ENDPOINT": receiver.url}),
            ("off", {"PARLEY_TELEMETRY__ENABLED": "false"}),
        ):
            db = f"sqlite:///{RESULTS / f'bench-telemetry-{name}.db'}"
            server_env = {**env, "PARLEY_SERVER__DATABASE_URL": db, **extra}
            servers.append(
                ServerProcess(server_env, RESULTS / f"server-telemetry-{name}.log", cwd=ROOT)
            )
        result = asyncio.run(alternate(servers[0].ws_url, servers[1].ws_url, prompts))
    finally:
        for server in servers:
            server.stop()
        receiver.stop()
    return {**result, "otlp_exports": receiver.requests}


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "python": platform.python_version()}


def print_table(title: str, summary: dict[str, Any]) -> None:
    print(
        f"{title}, {summary['turns']} turns, {summary['failures']} failed, "
        f"{summary.get('fillers', 0)} with the filler (ms)      p50      p95"
    )
    for key in ["client_voice_to_voice_ms", *STAGES]:
        row = summary[key]
        print(f"  {key:<28}{row['p50']!s:>9}{row['p95']!s:>9}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--utterances", type=int, default=len(UTTERANCES))
    parser.add_argument("--max-sessions", type=int, default=4)
    parser.add_argument("--per-session", type=int, default=5)
    parser.add_argument("--min-samples", type=int, default=MIN_SAMPLES_PER_STEP)
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server")
    parser.add_argument(
        "--no-telemetry-overhead",
        action="store_true",
        help="skip the telemetry on/off comparison (two more servers)",
    )
    args = parser.parse_args()
    planned = sum(
        n * rounds_for(n, args.per_session, args.min_samples)
        for n in range(1, args.max_sessions + 1)
    )
    if planned > INTRO_COUNT:
        sys.exit(f"{planned} concurrency sessions planned, only {INTRO_COUNT} distinct openings")

    env = dict(kv.split("=", 1) for kv in args.env)
    env.setdefault("PARLEY_LOG_LEVEL", "WARNING")
    env.setdefault("PARLEY_TELEPHONY__TWILIO__AUTH_TOKEN", AUTH_TOKEN)
    env.setdefault("PARLEY_SERVER__DATABASE_URL", f"sqlite:///{RESULTS / 'bench.db'}")
    # What is measured here is how many sessions this machine holds: the capacity derived
    # from the engines (parley.engines.capacity) must not refuse the steps above it.
    env.setdefault("PARLEY_SERVER__MAX_SESSIONS", str(args.max_sessions + 1))
    ws_prompts = UTTERANCES[: args.utterances]
    rtc_prompts = WEBRTC_UTTERANCES[: args.utterances]
    phone_prompts = PHONE_UTTERANCES[: args.utterances]
    server = ServerProcess(env, RESULTS / "server.log", cwd=ROOT)
    try:
        single_turns = asyncio.run(run_session(server.ws_url, ws_prompts))
        single = summarize(single_turns)
        webrtc_turns = asyncio.run(run_session(server.http, rtc_prompts, client=WebRTCCallClient))
        webrtc = summarize(webrtc_turns)
        phone_turns = asyncio.run(run_phone_session(server.http, phone_prompts))
        phone = summarize(phone_turns)
        levels: dict[int, Any] = {}
        held = 0
        # Step 1 too: the single-session runs above have 10 turns, a step needs 30.
        for n in range(1, args.max_sessions + 1):
            levels[n] = asyncio.run(
                concurrency(server.ws_url, n, args.per_session, args.min_samples)
            )
            row = levels[n]["client_voice_to_voice_ms"]
            print(
                f"  {n} concurrent sessions, {levels[n]['turns']} turns "
                f"({levels[n]['failures']} failed): voice-to-voice "
                f"p50 {row['p50']} ms, p95 {row['p95']} ms",
                flush=True,
            )
            if not within(row["p95"], CONCURRENCY_P95_LIMIT_MS):
                break
            held = n
    finally:
        server.stop()
    telemetry = None if args.no_telemetry_overhead else telemetry_overhead(env, ws_prompts)

    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "method": {
            "failed_turns": "a turn with no audible agent audio counts as a failure and "
            "takes part in the voice-to-voice percentiles as infinitely late "
            f"({TIMEOUT!r} when a percentile falls on one)",
            "prompts": "the WebRTC run says reworded utterances, and each concurrency session "
            "opens with its own introduction, so no run replays another's prompts from "
            "the LLM's prompt cache",
            "min_samples_per_concurrency_step": args.min_samples,
        },
        "prompts": {"websocket": ws_prompts, "webrtc": rtc_prompts, "phone": phone_prompts},
        "single_session": single,
        "single_session_turns": single_turns,
        "webrtc_single_session": webrtc,
        "webrtc_single_session_turns": webrtc_turns,
        "phone_single_session": phone,
        "phone_single_session_turns": phone_turns,
        "concurrency": levels,
        "sessions_held_p95_le_1500ms": held,
        "telemetry_overhead": telemetry,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"voice_to_voice-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2))

    print(
        f"\nParley voice-to-voice benchmark — {report['machine']['cpu']}, "
        f"{report['machine']['cores']} cores"
    )
    print(
        "failed turns (no audible agent audio) count as infinitely late in the percentiles; "
        "WebRTC says reworded prompts (no warm prompt-cache replay of the WebSocket run)"
    )
    print_table("WebSocket, single session", single)
    for t in single_turns:
        print(
            f"  said: {t['said']!r}  heard: {t['heard']!r}  "
            f"v2v: {t['client_voice_to_voice_ms']} ms"
            + (f"  FAILED: {t['failed']}" if t["failed"] else "")
        )
    print_table("WebRTC (aiortc client, Opus), single session", webrtc)
    for t in webrtc_turns:
        if t["failed"]:
            print(f"  said: {t['said']!r}  FAILED: {t['failed']}")
    for t in phone_turns:
        if t["failed"]:
            print(f"  phone said: {t['said']!r}  FAILED: {t['failed']}")
    ws_row, rtc_row = single["client_voice_to_voice_ms"], webrtc["client_voice_to_voice_ms"]
    phone_row = phone["client_voice_to_voice_ms"]
    print(
        f"voice-to-voice p50/p95: WebSocket {ws_row['p50']}/{ws_row['p95']} ms "
        f"({ws_row['failures']} failed), "
        f"WebRTC {rtc_row['p50']}/{rtc_row['p95']} ms ({rtc_row['failures']} failed), "
        f"phone (fake Twilio, mu-law) {phone_row['p50']}/{phone_row['p95']} ms "
        f"({phone_row['failures']} failed)"
    )
    print(
        f"concurrent sessions held with p95 <= {CONCURRENCY_P95_LIMIT_MS:.0f} ms "
        f"(>= {args.min_samples} turns per step): {held}"
    )
    if telemetry is not None:
        p50 = telemetry["client_voice_to_voice_p50_ms"]
        print(
            f"telemetry on/off (alternating turns, two servers): voice-to-voice p50 "
            f"{p50['on']} / {p50['off']} ms, difference {telemetry['difference_p50_ms']} ms; "
            f"observers' event-loop time {telemetry['observer_ms_per_turn']} ms per turn; "
            f"{telemetry['otlp_exports']} OTLP exports received"
        )
    print(f"results: {out.relative_to(ROOT)}")
    completed = [s["turns"] - s["failures"] for s in (single, webrtc)]
    if min(completed) < 8:
        sys.exit(f"fewer than 8 turns completed (WebSocket {completed[0]}, WebRTC {completed[1]})")


if __name__ == "__main__":
    main()
