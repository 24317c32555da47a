"""The demo agent's booking tools (agents/bistro/bookings.py): a table booked and
cancelled in the restaurant's SQLite database, once per idempotency key; the tools
module loaded from beside the agent file; words that ask for an action reach the model's
envelope while questions are still quoted from the knowledge."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from parley.config import Settings
from parley.knowledge import load_agent_knowledge, load_facts
from parley.orchestration.tools import ToolArgumentsError, load_registry

ROOT = Path(__file__).resolve().parent.parent
AGENT = ROOT / "agents" / "bistro" / "bookings.toml"
ANA = {"name": "Ana", "day": "Friday", "time": "7 pm", "party": 2}


@pytest.fixture
def bookings_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "bookings.db"
    monkeypatch.setenv("BISTRO_BOOKINGS_DB", str(path))
    monkeypatch.setenv("PARLEY_CONFIG", str(AGENT))
    return path


def rows(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT name, day, time, party, status FROM bookings").fetchall()


async def test_a_booking_is_made_once_per_key_and_cancelled_by_its_reference(
    bookings_db: Path,
) -> None:
    registry = load_registry(Settings().agent.tools_module, [])
    book, cancel = registry.get("book_table"), registry.get("cancel_booking")
    assert book is not None and cancel is not None and book.retry_safe
    booked = await book.run(ANA, "turn-1:call_1")
    assert booked["reference"].startswith("JB-") and booked["party"] == 2
    # A repeat of the call (recovery after a crash) is the same booking, not a second.
    assert await book.run(ANA, "turn-1:call_1") == booked
    assert rows(bookings_db) == [("Ana", "Friday", "7 pm", 2, "booked")]

    reference = {"reference": booked["reference"]}
    assert await cancel.run(reference, "turn-2:call_1") == {**reference, "cancelled": True}
    assert (await cancel.run(reference, "turn-2:call_1"))["cancelled"]  # the same call again
    again = await cancel.run(reference, "turn-3:call_1")
    assert not again["cancelled"] and "already cancelled" in again["reason"]
    unknown = await cancel.run({"reference": "JB-000000"}, "turn-4:call_1")
    assert unknown == {"cancelled": False, "reason": "no booking JB-000000"}
    assert rows(bookings_db) == [("Ana", "Friday", "7 pm", 2, "cancelled")]


def test_bad_booking_arguments_are_refused_before_the_database(bookings_db: Path) -> None:
    registry = load_registry(Settings().agent.tools_module, [])
    book, cancel = registry.get("book_table"), registry.get("cancel_booking")
    assert book is not None and cancel is not None
    for bad in ({**ANA, "party": 9}, {**ANA, "party": 0}, {"name": "Ana"}, {**ANA, "x": 1}):
        with pytest.raises(ToolArgumentsError):
            book.validate(bad)
    with pytest.raises(ToolArgumentsError):
        cancel.validate({"reference": "'; DROP TABLE bookings; --"})
    assert not bookings_db.exists()


def test_a_tools_module_file_is_found_beside_the_agent_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PARLEY_CONFIG", str(AGENT))
    monkeypatch.chdir(tmp_path)  # not from the working directory
    names = [t.name for t in load_registry("bookings.py:registry", [])]
    assert names == ["book_table", "cancel_booking"]
    with pytest.raises(FileNotFoundError, match=r"missing\.py"):
        load_registry("missing.py:registry", [])


def test_words_that_ask_for_an_action_reach_the_tools_others_are_quoted(
    bookings_db: Path,
) -> None:
    knowledge = load_agent_knowledge(Settings())
    assert knowledge is not None and knowledge.mode == "quote"
    for asks in ("I'd like to book a table", "Can I make a reservation", "Cancel my booking"):
        assert knowledge.asks_for_tools(asks), asks
    for question in ("What time do you open on Tuesday?", "Do you have a table outside?"):
        assert not knowledge.asks_for_tools(question), question
    assert knowledge.with_mode("restate").tools_asked_by == knowledge.tools_asked_by


@pytest.mark.e2e
async def test_a_caller_books_by_voice_and_a_question_is_still_quoted(
    tmp_path: Path, caller: Any
) -> None:
    """A real server with the bookings agent file; only the model's words are scripted
    (a remote OpenAI-compatible server over HTTP)."""
    from conftest import ARTIFACTS
    from fake_llm_provider import ProviderScript, fake_provider
    from parley.client import CallClient
    from parley.testing import ServerProcess
    from voice_helpers import wait_reply_done

    envelope = json.dumps(
        {
            "spoken_text": "You're booked, Ana: a table for two on Friday at 7 pm.",
            "escalate": False,
            "tool_calls": [{"name": "book_table", "arguments": ANA}],
            "state_updates": {"booking": "Friday 7 pm, 2 people"},
        }
    )
    plain = json.dumps({"spoken_text": "Anything else?", "escalate": False})
    script = ProviderScript([envelope, plain])
    db = tmp_path / "bookings.db"
    with fake_provider(script) as llm_url:
        agent = tmp_path / "agent.toml"
        text = AGENT.read_text()
        text = text.replace('"knowledge.md"', json.dumps(str(AGENT.parent / "knowledge.md")))
        text = text.replace('"bookings.py:registry"', json.dumps(f"{AGENT.parent}/bookings.py"))
        agent.write_text(f'{text}\n[llm]\nprovider = "openai"\nbase_url = "{llm_url}"\n')
        server = ServerProcess(
            {
                "PARLEY_CONFIG": str(agent),
                "PARLEY_SERVER__DATABASE_URL": f"sqlite:///{tmp_path / 'parley.db'}",
                "BISTRO_BOOKINGS_DB": str(db),
                # A remote model restates; this run checks the routing of a quoting agent.
                "PARLEY_AGENT__KNOWLEDGE_ANSWERS": "quote",
            },
            ARTIFACTS / "bistro-bookings.log",
        )
        try:
            async with CallClient(server.ws_url) as call:
                _, done = await wait_reply_done(call, after=0)
                await call.say(caller("I want to reserve a table for two on Friday"))
                ended_at, ended = await call.wait_for("turn.ended", after=done, timeout=60)
                _, result = await call.wait_for("tool.result", timeout=30)
                _, done = await wait_reply_done(call, after=ended_at)
                asked = len(script.requests)
                await call.say(caller("What time do you open on Tuesday?"))
                ended_at, question = await call.wait_for("turn.ended", after=done, timeout=60)
                await wait_reply_done(call, after=ended_at)
                turn = question["turn_id"]
                said = " ".join(
                    e["text"] for e in call.of_type("agent.text") if e["turn_id"] == turn
                )
        finally:
            server.stop()
    assert result["tool"] == "book_table" and result["status"] == "succeeded", result
    assert rows(db) == [("Ana", "Friday", "7 pm", 2, "booked")]
    assert asked >= 1 and "reserve" in ended["text"].lower()
    # The question has no word that asks for an action: the fact it matches is said as
    # it is, and the model is not asked.
    facts = {f.text for f in load_facts(AGENT.parent / "knowledge.md")}
    assert said in facts, (question["text"], said)
    assert len(script.requests) == asked, question["text"]
