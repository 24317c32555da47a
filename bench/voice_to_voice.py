"""Voice-to-voice benchmark over the real WebSocket and WebRTC paths, in real time.

voice-to-voice = arrival of the first agent audio frame louder than -40 dBFS minus the
client's send time of the frame holding the user's last speech sample. Over WebRTC the
client is an aiortc peer (Opus both ways, as from a browser); "sent" is when its
microphone track hands the frame to the Opus encoder, "arrival" when the decoded frame
comes out of its receiver.

Runs ``parley serve`` (the shipped parley.toml, embedded models) as a child process,
speaks >= 8 generated caller utterances one turn at a time, then measures how many
concurrent sessions the machine holds with voice-to-voice p95 <= 1.5 s.
Prints the figures and writes JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from parley.client import CallClient
from parley.testing import ServerProcess, caller_speech
from parley.webrtc_client import WebRTCCallClient

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

UTTERANCES = [
    "What time does the store open tomorrow morning",
    "Can you tell me a fun fact about the moon",
    "Please book a table for two at seven tonight",
    "How is the weather looking this weekend",
    "I would like to order a cup of coffee with milk",
    "What is the capital city of France",
    "Can you remind me to call my mother tomorrow",
    "How many minutes are there in one day",
    "Tell me a short joke about computers",
    "What should I cook for dinner tonight",
]
STAGES = ["stt_ms", "eou_ms", "eou_model_ms", "llm_ttft_ms", "tts_ttfb_ms", "voice_to_voice_ms"]
CONCURRENCY_P95_LIMIT_MS = 1500.0


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


async def run_session(
    url: str,
    utterances: list[str],
    start_delay: float = 0.0,
    client: type[CallClient] = CallClient,
) -> list[dict[str, Any]]:
    """One caller: waits for the greeting, then says each utterance after the last reply."""
    await asyncio.sleep(start_delay)
    turns: list[dict[str, Any]] = []
    async with client(url) as call:
        spoke, _ = await call.wait_for(
            "agent.state", lambda e: e["state"] == "speaking", timeout=60
        )
        mark, _ = await call.wait_for(
            "agent.state", lambda e: e["state"] == "listening", after=spoke, timeout=60
        )
        for text in utterances:
            last_speech_at = await call.say(caller_speech(text))
            ended_at, ended = await call.wait_for("turn.ended", after=mark, timeout=60)
            spoke_at, _ = await call.wait_for(
                "agent.state", lambda e: e["state"] == "speaking", after=ended_at, timeout=60
            )
            mark, _ = await call.wait_for(
                "agent.state", lambda e: e["state"] == "listening", after=spoke_at, timeout=90
            )
            first = call.first_loud_audio_after(last_speech_at)
            metrics = next(
                (e for e in call.of_type("turn.metrics") if e["turn_id"] == ended["turn_id"]), {}
            )
            turns.append(
                {
                    "said": text,
                    "heard": ended["text"],
                    "client_voice_to_voice_ms": None
                    if first is None
                    else round((first - last_speech_at) * 1000, 1),
                    **{k: metrics.get(k) for k in STAGES},
                    "preemptive": metrics.get("preemptive"),
                    "drafts_discarded": metrics.get("drafts_discarded"),
                    "early_finals_discarded": metrics.get("early_finals_discarded"),
                    "timeline_ms": metrics.get("timeline_ms"),
                }
            )
            await asyncio.sleep(0.5)
    return turns


def summarize(turns: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"turns": len(turns)}
    for key in ["client_voice_to_voice_ms", *STAGES]:
        values = [t[key] for t in turns if isinstance(t.get(key), int | float)]
        out[key] = {"p50": pct(values, 50), "p95": pct(values, 95), "n": len(values)}
    return out


async def concurrency(url: str, sessions: int, per_session: int) -> dict[str, Any]:
    jobs = [
        run_session(url, (UTTERANCES * 2)[i : i + per_session], start_delay=i * 0.7)
        for i in range(sessions)
    ]
    results = await asyncio.gather(*jobs)
    turns = [t for r in results for t in r]
    return summarize(turns)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--utterances", type=int, default=10)
    parser.add_argument("--max-sessions", type=int, default=4)
    parser.add_argument("--per-session", type=int, default=4)
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server")
    args = parser.parse_args()

    env = dict(kv.split("=", 1) for kv in args.env)
    env.setdefault("PARLEY_LOG_LEVEL", "WARNING")
    env.setdefault("PARLEY_SERVER__DATABASE_URL", f"sqlite:///{RESULTS / 'bench.db'}")
    server = ServerProcess(env, RESULTS / "server.log", cwd=ROOT)
    try:
        single_turns = asyncio.run(run_session(server.ws_url, UTTERANCES[: args.utterances]))
        single = summarize(single_turns)
        webrtc_turns = asyncio.run(
            run_session(server.http, UTTERANCES[: args.utterances], client=WebRTCCallClient)
        )
        webrtc = summarize(webrtc_turns)
        levels: dict[int, Any] = {}
        held = (
            1
            if (single["client_voice_to_voice_ms"]["p95"] or 1e9) <= CONCURRENCY_P95_LIMIT_MS
            else 0
        )
        for n in range(2, args.max_sessions + 1):
            levels[n] = asyncio.run(concurrency(server.ws_url, n, args.per_session))
            p95 = levels[n]["client_voice_to_voice_ms"]["p95"]
            print(
                f"  {n} concurrent sessions: voice-to-voice "
                f"p50 {levels[n]['client_voice_to_voice_ms']['p50']} ms, p95 {p95} ms",
                flush=True,
            )
            if p95 is not None and p95 <= CONCURRENCY_P95_LIMIT_MS:
                held = n
            else:
                break
    finally:
        server.stop()

    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "single_session": single,
        "single_session_turns": single_turns,
        "webrtc_single_session": webrtc,
        "webrtc_single_session_turns": webrtc_turns,
        "concurrency": levels,
        "sessions_held_p95_le_1500ms": held,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"voice_to_voice-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2))

    print(
        f"\nParley voice-to-voice benchmark — {report['machine']['cpu']}, "
        f"{report['machine']['cores']} cores"
    )
    print(f"single session, {single['turns']} turns (ms)      p50      p95")
    for key in ["client_voice_to_voice_ms", *STAGES]:
        row = single[key]
        print(f"  {key:<28}{row['p50']!s:>9}{row['p95']!s:>9}")
    for t in single_turns:
        print(
            f"  said: {t['said']!r}  heard: {t['heard']!r}  v2v: {t['client_voice_to_voice_ms']} ms"
        )
    print(f"WebRTC (aiortc client, Opus), single session, {webrtc['turns']} turns (ms)")
    for key in ["client_voice_to_voice_ms", *STAGES]:
        row = webrtc[key]
        print(f"  {key:<28}{row['p50']!s:>9}{row['p95']!s:>9}")
    ws_row, rtc_row = single["client_voice_to_voice_ms"], webrtc["client_voice_to_voice_ms"]
    print(
        f"voice-to-voice p50/p95: WebSocket {ws_row['p50']}/{ws_row['p95']} ms, "
        f"WebRTC {rtc_row['p50']}/{rtc_row['p95']} ms"
    )
    print(f"concurrent sessions held with p95 <= {CONCURRENCY_P95_LIMIT_MS:.0f} ms: {held}")
    print(f"results: {out.relative_to(ROOT)}")
    if single["turns"] < 8 or webrtc["turns"] < 8:
        sys.exit("fewer than 8 turns completed")


if __name__ == "__main__":
    main()
