"""`parley eval` against a real server (the embedded models, the demo agent's knowledge)
over the real WebSocket: scripted callers spoken by espeak-ng, the report and its exit
code, a scenario whose expectation the agent does not meet, and the LLM judge."""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import pytest

from inprocess_server import SECRET, serve_app
from parley.cli import _eval
from parley.config import Settings
from parley.engines import Engines
from parley.server import create_app
from test_evaluation import judge_app

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
served = contextlib.asynccontextmanager(serve_app)

SCENARIOS = """
voice: en-us
scenarios:
  - name: last orders, then thanks
    turns:
      - say: When does the kitchen take last orders?
        expect: [["9:30"]]
      - say: Thank you very much.
  - name: a wrong expectation
    turns:
      - say: When does the kitchen take last orders?
        expect: [["midnight"]]
"""


async def test_eval_plays_the_scenarios_and_reports_what_happened(
    embedded_engines: Engines, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(
        server={"database_url": f"sqlite:///{tmp_path / 'parley.db'}", "token_secret": SECRET},
        agent={"knowledge_file": ROOT / "agents" / "bistro" / "knowledge.md"},
    )
    scenarios = tmp_path / "scenarios.yaml"
    scenarios.write_text(SCENARIOS)
    out = tmp_path / "report.json"
    monkeypatch.setenv("PARLEY_EVAL_JUDGE_KEY", "judge-key")
    async with (
        served(create_app(settings, engines=embedded_engines)) as server,
        served(judge_app()) as judge,
    ):
        args = argparse.Namespace(
            scenarios=scenarios,
            url=server.ws_url,
            out=out,
            judge_url=f"{judge.http}/v1",
            judge_model="judge",
        )
        code = await _eval(args)
    report = json.loads(out.read_text())
    first, second = report["results"]
    assert code == 1  # one scenario failed
    assert first["passed"], first
    assert first["session_id"] and first["session_id"] != second["session_id"]
    asked, thanks = first["turns"]
    assert asked["answer"] == "The kitchen takes its last orders at 9:30 pm."
    assert asked["correct"] is True and asked["wer"] == 0.0
    assert asked["turns_heard"] == 1 and asked["interruptions"] == 0
    assert asked["voice_to_voice_ms"] > 0
    assert asked["judge"] == {"verdict": True, "error": None}
    assert thanks["correct"] is None and thanks["answer"]  # no facts expected: the model
    assert not second["passed"] and second["turns"][0]["correct"] is False
    assert report["totals"]["answers_correct"] == 1 and report["totals"]["answers_checked"] == 2


async def test_eval_says_why_a_scenario_file_is_unusable(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("scenarios: [{turns: [{wav: nowhere.wav}]}]")
    args = argparse.Namespace(
        scenarios=bad, url="ws://127.0.0.1:9/v1/ws", out=tmp_path / "r.json", judge_url=None
    )
    assert await _eval(args) == 2
    assert not (tmp_path / "r.json").exists()


async def test_eval_reports_a_server_it_cannot_reach(tmp_path: Path) -> None:
    from parley.testing import free_port

    scenarios = tmp_path / "scenarios.yaml"
    scenarios.write_text(SCENARIOS)
    args = argparse.Namespace(
        scenarios=scenarios,
        url=f"ws://127.0.0.1:{free_port()}/v1/ws",
        out=tmp_path / "r.json",
        judge_url=None,
    )
    assert await _eval(args) == 1
    results = json.loads((tmp_path / "r.json").read_text())["results"]
    assert all(not r["passed"] and r["error"] for r in results)
