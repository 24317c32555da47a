"""Chaos benchmark: spoken turns while a stage's primary provider is killed and restarted.

For each stage (LLM, then TTS): the primary provider is a real process (``parley
engine-server``: the embedded model behind the OpenAI-compatible API), the embedded
engine in Parley is the fallback. ``parley serve`` runs as a child process; one caller
speaks 20 turns over the WebSocket in real time. Before turn 5 the primary is killed
(SIGKILL), before turn 12 it is started again on the same port.

Reported per stage: turns lost (no audible reply; target 0), voice-to-voice p50 / p95
before (turns 1-4), during (5-11) and after (12-20) the outage — to the caller's first
audio (client side; the filler when one was said) and to the answer's first audio
(server side) — the requests Parley
sent to the primary while its breaker was open (read from Parley's own metrics after each
turn: attempts on the primary in a turn that began and ended with its breaker open;
target 0), when the breaker opened and closed, and the fillers said.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import httpx

from parley.client import CallClient
from parley.testing import EngineServerProcess, ServerProcess
from v2v_prompts import UTTERANCES, WEBRTC_UTTERANCES
from voice_to_voice import (
    failed_turn,
    listening_again,
    machine,
    one_turn,
    pct,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
KILL_AT, RESTART_AT, TURNS = 5, 12, 20
PRIMARY = "primary"
SAMPLE = re.compile(r"^(parley_provider_\w+)\{([^}]*)\} ([0-9.e+-]+)$")


def provider_env(stage: str, primary: EngineServerProcess) -> dict[str, str]:
    """Parley's settings: the remote primary, the embedded engine as its fallback."""
    embedded = {"llm": "llama", "tts": "piper"}[stage]
    key = stage.upper()
    return {
        f"PARLEY_{key}__PROVIDER": "openai",
        f"PARLEY_{key}__BASE_URL": primary.url,
        f"PARLEY_{key}__NAME": PRIMARY,
        f"PARLEY_{key}__FALLBACKS": json.dumps([{"provider": embedded}]),
    }


def provider_samples(text: str, stage: str) -> dict[tuple[str, str], float]:
    """The chain metrics of ``stage``: {(metric, labels): value}."""
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m and f'stage="{stage}"' in m.group(2):
            out[(m.group(1), m.group(2))] = float(m.group(3))
    return out


def primary_state(samples: dict[tuple[str, str], float]) -> float:
    key = ("parley_provider_breaker_state", f'provider="{PRIMARY}"')
    return next((v for (n, lab), v in samples.items() if n == key[0] and key[1] in lab), 0.0)


def primary_attempts(samples: dict[tuple[str, str], float]) -> float:
    return sum(
        v
        for (name, labels), v in samples.items()
        if name == "parley_provider_attempts_total" and f'provider="{PRIMARY}"' in labels
    )


async def run_stage(
    stage: str, server: ServerProcess, primary: EngineServerProcess
) -> dict[str, Any]:
    prompts = (UTTERANCES + WEBRTC_UTTERANCES)[:TURNS]
    turns: list[dict[str, Any]] = []
    sent_while_open = 0
    events: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:

        async def scrape() -> dict[tuple[str, str], float]:
            return provider_samples((await http.get("/metrics")).text, stage)

        async with CallClient(server.ws_url) as call:
            mark = asyncio.get_running_loop().time()
            for n, text in enumerate(prompts, 1):
                if n == KILL_AT:
                    primary.kill()
                    events.append({"turn": n, "event": "primary killed"})
                if n == RESTART_AT:
                    await asyncio.to_thread(primary.start)
                    events.append({"turn": n, "event": "primary restarted"})
                before = await scrape()
                fillers_before = len(call.of_type("agent.filler"))
                try:
                    turn, mark = await one_turn(call, text, mark)
                except TimeoutError:
                    turn = failed_turn(text, "no reply within the time limit")
                    mark = await listening_again(call)
                after = await scrape()
                was_open = primary_state(before) == 2 and primary_state(after) == 2
                sent = primary_attempts(after) - primary_attempts(before)
                if was_open:
                    sent_while_open += int(sent)
                turn.update(
                    turn=n,
                    phase="before" if n < KILL_AT else "during" if n < RESTART_AT else "after",
                    primary_breaker=["closed", "half_open", "open"][int(primary_state(after))],
                    primary_attempts=int(sent),
                    filler=len(call.of_type("agent.filler")) > fillers_before,
                )
                turns.append(turn)
                print(
                    f"  {stage} turn {n:2} [{turn['phase']:<6}] "
                    f"breaker {turn['primary_breaker']:<9}"
                    f" v2v {turn['client_voice_to_voice_ms']} ms"
                    f"{'  LOST: ' + turn['failed'] if turn['failed'] else ''}",
                    flush=True,
                )
                await asyncio.sleep(0.5)
            fillers = len(call.of_type("agent.filler"))
            errors = len(call.of_type("error"))
    summary: dict[str, Any] = {
        "turns": len(turns),
        "turns_lost": sum(1 for t in turns if t["failed"]),
        "requests_to_primary_while_breaker_open": sent_while_open,
        "fillers_said": fillers,
        "error_events": errors,
        "events": events,
    }
    for phase in ("before", "during", "after"):
        answer = [
            t["voice_to_voice_ms"]
            for t in turns
            if t["phase"] == phase and isinstance(t.get("voice_to_voice_ms"), int | float)
        ]
        ok = [
            t["client_voice_to_voice_ms"] for t in turns if t["phase"] == phase and not t["failed"]
        ]
        lost = sum(1 for t in turns if t["phase"] == phase and t["failed"])
        summary[phase] = {
            # The caller's first audio of the turn: the filler, when one was said.
            "p50": pct(ok, 50, lost),
            "p95": pct(ok, 95, lost),
            # The answer's first audio (server side): what the filler covered for.
            "answer_p50": pct(answer, 50, lost),
            "answer_p95": pct(answer, 95, lost),
            "turns": len(ok) + lost,
        }
    summary["per_turn"] = turns
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stages", default="llm,tts")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "method": __doc__,
    }
    for stage in args.stages.split(","):
        primary = EngineServerProcess(
            [stage], faults=False, log_path=RESULTS / f"chaos-{stage}-primary.log", cwd=ROOT
        )
        env = {
            "PARLEY_LOG_LEVEL": "WARNING",
            "PARLEY_SERVER__DATABASE_URL": f"sqlite:///{RESULTS / f'chaos-{stage}.db'}",
            **provider_env(stage, primary),
        }
        server = ServerProcess(env, RESULTS / f"chaos-{stage}-server.log", cwd=ROOT)
        try:
            print(f"chaos: {stage} primary killed before turn {KILL_AT}, back before {RESTART_AT}")
            report[stage] = asyncio.run(run_stage(stage, server, primary))
        finally:
            server.stop()
            primary.stop()
        s = report[stage]
        print(
            f"{stage}: {s['turns_lost']} of {s['turns']} turns lost; "
            f"requests to the dead primary while its breaker was open: "
            f"{s['requests_to_primary_while_breaker_open']}; fillers {s['fillers_said']}"
        )
        for phase in ("before", "during", "after"):
            row = s[phase]
            print(
                f"  voice-to-voice {phase:<7} first audio p50 {row['p50']} / p95 {row['p95']} ms;"
                f" answer p50 {row['answer_p50']} / p95 {row['answer_p95']} ms"
            )
    out = RESULTS / f"chaos-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
