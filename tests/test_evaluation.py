"""`parley eval`'s parts: scenario files, the scoring of a turn, the summary, and the
optional LLM judge against a real HTTP server (answering yes, no, nonsense, an error)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from inprocess_server import serve_app
from parley.evaluation import ScenarioError, load_scenarios, summary
from parley.evaluation.judge import Judge
from parley.evaluation.report import totals
from parley.evaluation.scenarios import ExpectedCall
from parley.evaluation.scoring import calls_made, word_errors
from parley.knowledge.answer_check import Question
from parley.testing import free_port

ROOT = Path(__file__).resolve().parent.parent
served = contextlib.asynccontextmanager(serve_app)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenarios.yaml"
    path.write_text(text)
    return path


def test_the_shipped_scenarios_load() -> None:
    scenarios = load_scenarios(ROOT / "agents" / "bistro" / "scenarios.yaml")
    assert len(scenarios) >= 3 and all(s.voice == "en-us" for s in scenarios)
    first = scenarios[0].turns[0]
    assert first.say == "What time does dinner start?" and first.question.expect == [["5", "five"]]


def test_a_scenario_turn_is_words_or_a_recording_with_facts_and_tools(tmp_path: Path) -> None:
    (tmp_path / "booking.wav").write_bytes(b"RIFF")
    path = write(
        tmp_path,
        "voice: en-gb\nscenarios:\n- name: book\n  turns:\n"
        "  - say: Hello\n"
        "  - wav: booking.wav\n"
        "    tools: [{name: book_table, arguments: {people: 4}}]\n",
    )
    (scenario,) = load_scenarios(path)
    hello, booking = scenario.turns
    assert scenario.voice == "en-gb" and hello.say == "Hello" and hello.question.expect == []
    assert booking.wav == tmp_path / "booking.wav" and booking.say is None
    assert booking.tools == [ExpectedCall("book_table", {"people": 4})]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[]", "scenarios list"),
        ("scenarios: [{name: x}]", "scenario 1: needs a name and turns"),
        ("scenarios: [{turns: [{say: a, wav: b.wav}]}]", "turn 1: give exactly one"),
        ("scenarios: [{turns: [{wav: missing.wav}]}]", "no recording"),
        ("scenarios: [{turns: [{say: a, expect: [[]]}]}]", "non-empty list"),
        ("scenarios: [{turns: [{say: a, expect: [curry, rice]}]}]", "non-empty list"),
        ("scenarios: [{turns: [{say: a, expect: [[9:30]]}]}]", "quote every way"),
        ("scenarios: [{turns: [{say: a, tools: [{arguments: {}}]}]}]", "malformed"),
        ("scenarios: [{turns: [{say: a", "scenario file"),
    ],
)
def test_an_unusable_scenario_file_says_where(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ScenarioError, match=problem):
        load_scenarios(write(tmp_path, text))


def test_word_errors_count_edits_over_the_reference_words() -> None:
    assert word_errors("Can I bring my dog?", "can I bring my dog") == (0, 5)
    assert word_errors("Do you deliver?", "you delay") == (2, 3)
    assert word_errors("Hello", "") == (1, 1)


def test_expected_calls_are_matched_by_name_and_a_subset_of_arguments() -> None:
    made = [
        {"id": "1", "name": "book_table", "arguments": {"people": 4.0, "name": "ANA", "x": 1}},
        {"id": "2", "name": "cancel", "arguments": {"booking": {"id": 7, "day": "Mon"}}},
    ]
    assert calls_made([ExpectedCall("book_table", {"people": 4, "name": "Ana"})], made)
    assert calls_made([ExpectedCall("cancel", {"booking": {"id": 7}})], made)
    assert not calls_made([ExpectedCall("book_table", {"people": 5})], made)
    assert not calls_made([ExpectedCall("book_table", {"when": "7pm"})], made)
    # Each made call counts once.
    assert not calls_made([ExpectedCall("cancel"), ExpectedCall("cancel")], made)
    assert not calls_made([ExpectedCall("refund")], made)


def turn(**kw: Any) -> dict[str, Any]:
    base = {
        "say": "Hi",
        "heard": "Hi",
        "wer": 0.0,
        "answer": "Hello!",
        "correct": None,
        "tool_calls": [],
        "tools_ok": None,
        "voice_to_voice_ms": 600.0,
        "turns_heard": 1,
        "interruptions": 0,
        "errors": [],
        "passed": True,
    }
    return {**base, **kw}


def test_the_summary_counts_what_each_turn_showed() -> None:
    results = [
        {"name": "ok", "passed": True, "error": None, "turns": [turn(correct=True)]},
        {
            "name": "cut in",
            "passed": False,
            "error": None,
            "turns": [turn(turns_heard=2, wer=0.5, voice_to_voice_ms=900.0, passed=False)],
        },
        {"name": "down", "passed": False, "error": "OSError: refused", "turns": []},
    ]
    s = totals(results)
    assert (s["scenarios_passed"], s["scenarios"], s["turns"]) == (1, 3, 2)
    assert (s["answers_correct"], s["answers_checked"], s["cut_ins"]) == (1, 1, 1)
    assert s["wer_mean"] == 0.25 and s["voice_to_voice_p50_ms"] == 750.0
    text = summary(results)
    assert "PASS  ok" in text and "FAIL  cut in" in text and "2 ends of turn" in text
    assert "could not run: OSError: refused" in text
    assert "1/3 scenarios passed" in text


def judge_app() -> FastAPI:
    """A chat completions endpoint whose verdict depends on the answer it is shown."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def complete(request: Request) -> Any:
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        if "teapot" in prompt:
            return JSONResponse({"error": "no"}, status_code=500)
        if "9:30" in prompt.split("A correct answer")[0]:
            content = "Yes."
        elif "mumble" in prompt:
            content = "Maybe"
        else:
            content = "no"
        assert request.headers.get("authorization") == "Bearer judge-key"
        return {"choices": [{"message": {"role": "assistant", "content": content}}]}

    return app


async def test_the_judge_says_yes_no_or_why_it_could_not() -> None:
    question = Question("When are last orders?", [["9:30"]], [])
    async with served(judge_app()) as server:
        judge = Judge(f"{server.http}/v1", "judge", "judge-key")
        right = await judge.grade(question.text, "Last orders at 9:30 pm.", question)
        wrong = await judge.grade(question.text, "We are closed on Mondays.", question)
        unclear = await judge.grade(question.text, "mumble", question)
        failing = await judge.grade(question.text, "teapot", question)
    assert right == {"verdict": True, "error": None}
    assert wrong == {"verdict": False, "error": None}
    assert unclear["verdict"] is None and "neither yes nor no" in unclear["error"]
    assert failing == {"verdict": None, "error": "the judge answered HTTP 500"}
    gone = await Judge(f"http://127.0.0.1:{free_port()}/v1", "judge").grade("a", "b", question)
    assert gone["verdict"] is None and "could not be reached" in gone["error"]
    assert "judge-key" not in str((right, wrong, unclear, failing, gone))
