"""A long call and a reconnect: does the agent keep what left the prompt's window?

The shipped agent file (Juniper Bistro) on the embedded models, served in this process
over the real WebSocket; a caller (espeak-ng) asks N questions of the development set
one after the other, each after the previous reply was heard, then hangs up and
reconnects to the same session. Printed and written to bench/results/: the summary on
the record before and after the reconnect, the state the resumed session reports,
voice-to-voice per turn, and a question after the reconnect.

  .venv/bin/python bench/long_call.py --turns 30   (about 4 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("PARLEY_CONFIG", str(ROOT / "parley.toml"))
# Every turn goes to the model (with the facts): a quoted fact builds no prompt, and
# so never slides the window this run is about.
os.environ.setdefault("PARLEY_AGENT__KNOWLEDGE_ANSWERS", "restate")

from inprocess_server import SECRET, serve_app  # noqa: E402
from parley.client import CallClient  # noqa: E402
from parley.config import Settings  # noqa: E402
from parley.engines import load_engines  # noqa: E402
from parley.knowledge.answer_check import load_questions  # noqa: E402
from parley.server import create_app  # noqa: E402
from parley.testing import caller_speech  # noqa: E402

served = contextlib.asynccontextmanager(serve_app)


async def wait_reply_done(call: CallClient, after: float) -> float:
    spoke, _ = await call.wait_for(
        "agent.state", lambda e: e["state"] == "speaking", after=after, timeout=60
    )
    done, _ = await call.wait_for(
        "agent.state", lambda e: e["state"] == "listening", after=spoke, timeout=60
    )
    return done


async def record_of(http: httpx.AsyncClient, sid: str, token: str) -> dict[str, Any]:
    r = await http.get(f"/v1/sessions/{sid}/timeline", headers={"Authorization": f"Bearer {token}"})
    return dict(r.json())


async def main(turns: int) -> dict[str, Any]:
    questions = load_questions(ROOT / "agents" / "bistro" / "questions.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            server={"database_url": f"sqlite:///{tmp}/long.db", "token_secret": SECRET}
        )
        engines = await load_engines(settings)
        try:
            async with served(create_app(settings, engines=engines)) as server:
                return await call(server, questions, turns)
        finally:
            await engines.close()


async def call(server: Any, questions: list[Any], turns: int) -> dict[str, Any]:
    v2v: list[float] = []
    async with CallClient(server.ws_url) as first:
        done = await wait_reply_done(first, 0)
        for n in range(turns):
            question = questions[n % len(questions)].text
            await first.say(caller_speech(question, voice=("en-us", "en-gb")[n % 2]))
            ended_at, _ = await first.wait_for("turn.ended", after=done, timeout=60)
            done = await wait_reply_done(first, ended_at)
            metrics = [e for e in first.of_type("turn.metrics") if e.get("voice_to_voice_ms")]
            if metrics:
                v2v.append(metrics[-1]["voice_to_voice_ms"])
            print(f"turn {n + 1}/{turns}: {question}", flush=True)
        await first.send_json({"type": "status"})
        _, before = await first.wait_for("session.status")
    assert first.session is not None
    sid, token = first.session["session_id"], first.session["token"]
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
        deadline = time.monotonic() + 30
        stored = await record_of(http, sid, token)
        while stored["memory"]["covered"] < before["memory"]["covered"]:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
            stored = await record_of(http, sid, token)
        r = await http.post(
            f"/v1/sessions/{sid}/tokens", json={}, headers={"Authorization": f"Bearer {token}"}
        )
        token = r.json()["token"]
    async with CallClient(f"{server.ws_url}?token={token}") as again:
        _, started = await again.wait_for("session.started")
        await again.send_json({"type": "status"})
        _, after = await again.wait_for("session.status")
        await again.say(caller_speech("What did I ask you first?"))
        ended_at, ended = await again.wait_for("turn.ended", timeout=60)
        await wait_reply_done(again, ended_at)
        answer = " ".join(
            e["text"] for e in again.of_type("agent.text") if e["turn_id"] == ended["turn_id"]
        )
    return {
        "turns": turns,
        "voice_to_voice_ms_p50": statistics.median(v2v) if v2v else None,
        "voice_to_voice_ms_first_5": v2v[:5],
        "voice_to_voice_ms_last_5": v2v[-5:],
        "memory_before_hangup": before["memory"],
        "memory_stored": stored["memory"],
        "resumed": started["resumed"],
        "turns_resumed": started["turns"],
        "memory_after_reconnect": after["memory"],
        "history_after_reconnect": len(after["history"]),
        "after_reconnect": {"caller": ended["text"], "agent": answer},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=30)
    args = parser.parse_args()
    result = asyncio.run(main(args.turns))
    print(json.dumps(result, indent=2))
    out = ROOT / "bench" / "results" / f"long-call-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"written to {out}")
