"""Load benchmark: how many live sessions one worker holds.

Ramps live sessions against one ``parley serve`` over the real WebSocket, in real time.
Each caller speaks real speech (espeak-ng) once the agent listens, a turn about every
``--turn-every`` seconds (8 s, staggered like real callers), and measures voice-to-voice
as ``make bench`` does: first agent audio frame louder than -40 dBFS minus the send time
of the frame holding the caller's last speech sample. A turn with no audible reply within
``TURN_TIMEOUT_S`` is a failure and counts as infinitely late in the percentiles.

Two modes:

- ``--engines remote`` (default): the worker's STT, LLM and TTS are fast local
  OpenAI-compatible test servers (``bench/fast_engines.py``, its own process), so the
  figure is the worker's own work per session: VAD, end of turn, audio framing, events.
- ``--engines embedded``: the shipped models on this machine's CPU, with the worker's
  capacity (``server.max_sessions``) as configured: callers past it get 503 / 4503, and the
  figure shows that the admitted ones keep their voice-to-voice.

Per step: voice-to-voice p50/p95, turns and failures, sessions refused, the worker's CPU
(% of one core, from /proc), its resident memory and memory per session over the idle
baseline, and the load generator's and test engines' CPU (they share the cores). The
answer: the highest step whose p95 is within ``--p95-margin-ms`` (100) of the
single-session p95. Writes JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from load_callers import CallerPool, Turn
from parley.testing import ServerProcess, free_port, wait_until_answers
from voice_to_voice import RESULTS, ROOT, STAGES, machine, pct, within

TURN_TIMEOUT_S = 10.0


@dataclass
class ProcessClock:
    """CPU seconds and resident memory of one process, from /proc."""

    pid: int
    ticks: float = field(default_factory=lambda: float(os.sysconf("SC_CLK_TCK")))

    def cpu_secs(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        # utime, stime (of the process and its threads) are fields 14 and 15 (1-based).
        return (int(fields[11]) + int(fields[12])) / self.ticks

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


def _children_cpu(pid: int) -> float:
    """CPU seconds of ``pid``'s live child processes (Piper's workers)."""
    total = 0.0
    for child in Path("/proc").glob("[0-9]*"):
        try:
            stat = (child / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[1]) == pid:
            total += ProcessClock(int(child.name)).cpu_secs()
    return total


async def measure_step(
    pool: CallerPool,
    sessions: int,
    window: float,
    clocks: dict[str, ProcessClock],
    worker_pid: int,
    idle_rss: float,
    profile: Path | None = None,
) -> dict[str, Any]:
    """Grow the pool to ``sessions``, let the newcomers hear their greeting, then measure
    the turns whose last word falls in a ``window`` of seconds."""
    await pool.grow_to(sessions)
    await asyncio.sleep(min(8.0, pool.turn_every))
    before = {name: clock.cpu_secs() for name, clock in clocks.items()}
    before["worker children"] = _children_cpu(worker_pid)
    me0 = time.process_time()
    loop = asyncio.get_running_loop()
    start = loop.time()
    profiler = start_profile(worker_pid, window, profile) if profile else None
    await asyncio.sleep(window)
    end = loop.time()
    if profiler is not None:
        await asyncio.to_thread(profiler.wait, 30)
    # Turns spoken in the window may still await their reply.
    await asyncio.sleep(TURN_TIMEOUT_S)
    elapsed = end - start
    cpu = {name: clock.cpu_secs() - before[name] for name, clock in clocks.items()}
    cpu["worker children"] = _children_cpu(worker_pid) - before["worker children"]
    cpu["load generator"] = time.process_time() - me0
    turns = [t for t in pool.turns if start <= t.sent_at < end]
    heard = [t.voice_to_voice_ms for t in turns if t.voice_to_voice_ms is not None]
    failures = len(turns) - len(heard)
    beyond = [t.beyond_silence_ms for t in turns if t.beyond_silence_ms is not None]

    def stage(key: str, q: float) -> float | None:
        return pct(
            [
                t.stages[key]
                for t in turns
                if t.stages and isinstance(t.stages.get(key), int | float)
            ],
            q,
        )

    stages = {key: stage(key, 50) for key in STAGES}
    stages_p95 = {key: stage(key, 95) for key in STAGES}
    # Where the tail's time goes: the server's timeline of its slowest tenth of turns
    # (beyond the chosen silence) beside every turn's, each mark's median.
    slow_from = pct(beyond, 90)
    slow = [
        t
        for t in turns
        if isinstance(slow_from, float)
        and t.beyond_silence_ms is not None
        and t.beyond_silence_ms >= slow_from
    ]
    rss = clocks["worker"].rss_mb()
    live = pool.live
    return {
        "sessions": sessions,
        "live": live,
        "refused": pool.refused,
        "errors": list(pool.errors),
        "turns": len(turns),
        "failures": failures,
        "voice_to_voice_ms": {"p50": pct(heard, 50, failures), "p95": pct(heard, 95, failures)},
        "beyond_silence_ms": {"p50": pct(beyond, 50, failures), "p95": pct(beyond, 95, failures)},
        "server_stage_p50_ms": stages,
        "server_stage_p95_ms": stages_p95,
        "timeline_p50_ms": timeline_medians(turns),
        "slowest_tenth_timeline_p50_ms": timeline_medians(slow),
        "slowest_tenth": [
            {
                "said": t.said,
                "beyond_silence_ms": t.beyond_silence_ms,
                "eou_delay": t.eou_delay,
                "timeline_ms": (t.stages or {}).get("timeline_ms"),
            }
            for t in sorted(slow, key=lambda t: -(t.beyond_silence_ms or 0.0))
        ],
        # Over the measuring window only; the reply wait after it is not counted.
        "cpu_percent_of_one_core": {
            name: round(100 * secs / (elapsed + TURN_TIMEOUT_S), 1) for name, secs in cpu.items()
        },
        "worker_rss_mb": round(rss, 1),
        "worker_mb_per_session": round((rss - idle_rss) / live, 2) if live else None,
    }


def timeline_medians(turns: list[Turn]) -> dict[str, float]:
    """Each server timeline mark's median over ``turns``, in ms after the caller's last
    speech (``turn.metrics``' ``timeline_ms``), in the order the marks come."""
    marks: dict[str, list[float]] = {}
    for turn in turns:
        timeline = (turn.stages or {}).get("timeline_ms") or {}
        for key, value in timeline.items():
            if isinstance(value, int | float):
                marks.setdefault(key, []).append(value)
    medians = {key: float(pct(values, 50) or 0.0) for key, values in marks.items()}
    return dict(sorted(medians.items(), key=lambda kv: kv[1]))


def start_profile(pid: int, secs: float, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling the worker (all threads, without pausing it) for ``secs``."""
    return subprocess.Popen(
        [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(secs)),
            "--rate",
            "200",
            "--nonblocking",
            "--threads",
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def profile_summary(path: Path, top: int = 25) -> dict[str, Any]:
    """Where the worker's samples went: per thread, and per function by self and by
    inclusive share of all samples (py-spy's collapsed stacks)."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    threads: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        threads[frames[0]] = threads.get(frames[0], 0) + n
        for name in set(frames[1:]):
            inclusive[name] = inclusive.get(name, 0) + n
        own[frames[-1]] = own.get(frames[-1], 0) + n

    def share(table: dict[str, int]) -> list[tuple[str, float]]:
        ranked = sorted(table.items(), key=lambda kv: -kv[1])[:top]
        return [(name, round(100 * n / total, 1)) for name, n in ranked]

    return {
        "samples": total,
        "threads": share(threads),
        "self": share(own),
        "inclusive": share(inclusive),
    }


def start_fast_engines(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    out = open(log, "w")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "fast_engines.py"), "--port", str(port)],
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    wait_until_answers(proc, f"{url}/v1/models", 60, log)
    return proc, f"{url}/v1"


def remote_env(base_url: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for stage in ("STT", "LLM", "TTS"):
        env[f"PARLEY_{stage}__PROVIDER"] = "openai"
        env[f"PARLEY_{stage}__BASE_URL"] = base_url
        env[f"PARLEY_{stage}__MODEL"] = "fast-test"
    return env


async def run_ramp(
    server: ServerProcess,
    steps: list[int],
    args: argparse.Namespace,
    clocks: dict[str, ProcessClock],
) -> dict[str, Any]:
    rng = random.Random(args.seed)
    async with CallerPool(server.http, args.turn_every, TURN_TIMEOUT_S, rng) as pool:
        # The single-session figure: one caller, turns back to back.
        single_pool_turns = await pool.single(args.single_turns)
        heard = [t.voice_to_voice_ms for t in single_pool_turns if t.voice_to_voice_ms is not None]
        beyond = [t.beyond_silence_ms for t in single_pool_turns if t.beyond_silence_ms is not None]
        failures = len(single_pool_turns) - len(heard)
        single = {
            "turns": len(single_pool_turns),
            "failures": failures,
            "voice_to_voice_ms": {
                "p50": pct(heard, 50, failures),
                "p95": pct(heard, 95, failures),
            },
            "beyond_silence_ms": {
                "p50": pct(beyond, 50, failures),
                "p95": pct(beyond, 95, failures),
            },
        }
        print(
            f"single session, {single['turns']} turns ({failures} failed): voice-to-voice "
            f"p50 {single['voice_to_voice_ms']['p50']} ms, "
            f"p95 {single['voice_to_voice_ms']['p95']} ms; beyond the end-of-turn silence "
            f"p50 {single['beyond_silence_ms']['p50']} ms, "
            f"p95 {single['beyond_silence_ms']['p95']} ms",
            flush=True,
        )
        # The baseline once the single session is over: what its first call allocated for
        # good (model buffers, caches) is not any later session's.
        await asyncio.sleep(2)
        idle_rss = clocks["worker"].rss_mb()
        levels = []
        for n in steps:
            profile = RESULTS / f"profile-load-{n}.txt" if n in args.profile else None
            row = await measure_step(
                pool, n, args.step_secs, clocks, server.proc.pid, idle_rss, profile
            )
            if profile is not None and profile.exists():
                row["profile"] = profile_summary(profile)
            levels.append(row)
            v2v, cpu = row["voice_to_voice_ms"], row["cpu_percent_of_one_core"]
            print(
                f"{n:>3} sessions ({row['live']} live, {row['refused']} refused, "
                f"{len(row['errors'])} failed to start), "
                f"{row['turns']} turns ({row['failures']} failed): voice-to-voice p50 "
                f"{v2v['p50']} ms, p95 {v2v['p95']} ms (beyond the silence p50 "
                f"{row['beyond_silence_ms']['p50']}, p95 {row['beyond_silence_ms']['p95']}); "
                f"worker CPU {cpu['worker']} % of a "
                f"core, {row['worker_mb_per_session']} MB/session; load generator "
                f"{cpu['load generator']} %, engines {cpu.get('engines', '-')} %",
                flush=True,
            )
            print(f"      server stage p50 (ms): {row['server_stage_p50_ms']}", flush=True)
            print(f"      server stage p95 (ms): {row['server_stage_p95_ms']}", flush=True)
            print(f"      timeline p50 (ms): {row['timeline_p50_ms']}", flush=True)
            print(
                f"      slowest tenth's timeline p50 (ms): {row['slowest_tenth_timeline_p50_ms']}",
                flush=True,
            )
    # The end-of-turn silence is 0.25 s, 1.0 s, 1.2 s or 2.0 s depending on the words, so
    # voice-to-voice is multimodal and its p95 is one of those waits plus ~50 ms in every
    # step, loaded or not (a 60-session step whose p50 had doubled still "held" on it).
    # Held is therefore judged on what load changes: what comes on top of the chosen
    # silence at p95, and voice-to-voice at p50; the steps count up to the first that fails.
    margin = args.p95_margin_ms
    single_p50 = float(single["voice_to_voice_ms"]["p50"])
    single_beyond = float(single["beyond_silence_ms"]["p95"])
    held = 0
    held_on_p95_alone = 0
    for row in levels:
        ok = bool(row["live"]) and not row["failures"] and not row["errors"]
        if ok and within(
            row["voice_to_voice_ms"]["p95"], single["voice_to_voice_ms"]["p95"] + margin
        ):
            held_on_p95_alone = max(held_on_p95_alone, row["live"])
        if not (
            ok
            and within(row["voice_to_voice_ms"]["p50"], single_p50 + margin)
            and within(row["beyond_silence_ms"]["p95"], single_beyond + margin)
        ):
            break
        held = row["live"]
    return {
        "single_session": single,
        "steps": levels,
        "sessions_held": held,
        "sessions_held_on_voice_to_voice_p95_alone": held_on_p95_alone,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engines", choices=["remote", "embedded"], default="remote")
    parser.add_argument("--steps", default=None, help="comma-separated session counts")
    parser.add_argument("--step-secs", type=float, default=40.0)
    parser.add_argument("--turn-every", type=float, default=8.0)
    parser.add_argument("--single-turns", type=int, default=20)
    parser.add_argument("--p95-margin-ms", type=float, default=100.0)
    parser.add_argument("--max-sessions", type=int, default=None, help="the worker's capacity")
    parser.add_argument(
        "--profile",
        type=lambda v: {int(s) for s in v.split(",")},
        default=set(),
        help="steps (session counts) whose window py-spy samples",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the worker")
    args = parser.parse_args()
    remote = args.engines == "remote"
    steps = [
        int(s) for s in (args.steps or ("10,20,30,40,50,60" if remote else "1,2,3,4")).split(",")
    ]

    RESULTS.mkdir(parents=True, exist_ok=True)
    env = dict(kv.split("=", 1) for kv in args.env)
    env.setdefault("PARLEY_LOG_LEVEL", "WARNING")
    # The callers all come from this one process (one address): the per-client session
    # creation limit would refuse the ramp's later callers with 429.
    env.setdefault("PARLEY_SERVER__SESSION_CREATE_RATE", "0")
    db = RESULTS / f"bench-load-{args.engines}.db"
    db.unlink(missing_ok=True)
    env.setdefault("PARLEY_SERVER__DATABASE_URL", f"sqlite:///{db}")
    capacity = args.max_sessions or (max(steps) + 5 if remote else None)
    if capacity is not None:
        env["PARLEY_SERVER__MAX_SESSIONS"] = str(capacity)
    engines = None
    clocks: dict[str, ProcessClock] = {}
    try:
        if remote:
            engines, base_url = start_fast_engines(RESULTS / "fast-engines.log")
            env.update(remote_env(base_url))
            clocks["engines"] = ProcessClock(engines.pid)
        server = ServerProcess(env, RESULTS / f"server-load-{args.engines}.log", cwd=ROOT)
        clocks["worker"] = ProcessClock(server.proc.pid)
        try:
            result = asyncio.run(run_ramp(server, steps, args, clocks))
            capacity_seen = server.health()
        finally:
            server.stop()
    finally:
        if engines is not None:
            engines.terminate()
            engines.wait(timeout=10)

    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "engines": args.engines,
        "method": {
            "turn_every_secs": args.turn_every,
            "step_secs": args.step_secs,
            "turn_timeout_secs": TURN_TIMEOUT_S,
            "p95_margin_ms": args.p95_margin_ms,
            "capacity": capacity,
            "refused": "sessions the worker refused (503 at POST /v1/sessions or close 4503)",
        },
        "health_at_end": capacity_seen,
        **result,
    }
    out = RESULTS / f"load-{args.engines}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2))
    single_p95 = result["single_session"]["voice_to_voice_ms"]["p95"]
    single_beyond = result["single_session"]["beyond_silence_ms"]["p95"]
    print(
        f"\nParley load benchmark ({args.engines} engines) — {report['machine']['cpu']}, "
        f"{report['machine']['cores']} cores"
    )
    margin = args.p95_margin_ms
    print(
        f"held: {result['sessions_held']} live sessions (every step up to it: no failed turn, "
        f"voice-to-voice p50 within {margin:.0f} ms of one session's "
        f"{result['single_session']['voice_to_voice_ms']['p50']} ms, and what comes beyond "
        f"the end-of-turn silence within {margin:.0f} ms of one session's p95 {single_beyond} ms)"
    )
    alone = result["sessions_held_on_voice_to_voice_p95_alone"]
    print(
        f"(voice-to-voice p95 alone, {single_p95} ms for one session, is set by the silence "
        f"the words call for: it 'holds' up to {alone})"
    )
    print(f"results: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
