"""`parley replay`: a session stored in a real SQLite database answered again by another
agent file (the demo agent's knowledge, on the embedded model), side by side."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from parley.cli import _replay
from parley.store import Database, Store, TurnState

ROOT = Path(__file__).resolve().parent.parent
KNOWLEDGE = ROOT / "agents" / "bistro" / "knowledge.md"


async def stored_session(url: str) -> str:
    db = Database(url)
    store = Store(db)
    await db.migrate()
    session = await store.create_session()
    said = [
        ("When does the kitchen take last orders?", "I'm not sure, sorry."),
        ("Thank you very much.", "You're welcome!"),
    ]
    for n, (caller, agent) in enumerate(said, start=1):
        turn, _ = await store.begin_turn(session.id, f"voice:{n}", user_text=caller)
        await store.transition(turn.id, TurnState.PROCESSING)
        await store.transition(turn.id, TurnState.COMPLETED, result={"spoken": agent})
    await db.close()
    return str(session.id)


def args(tmp_path: Path, session_id: str, url: str, config: Path) -> argparse.Namespace:
    return argparse.Namespace(
        session_id=session_id, config=config, database=url, out=tmp_path / "replay.json"
    )


@pytest.mark.models
async def test_a_stored_session_is_answered_again_by_another_agent_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'parley.db'}"
    session_id = await stored_session(url)
    other = tmp_path / "other.toml"
    other.write_text(f'[agent]\nknowledge_file = "{KNOWLEDGE}"\n')
    monkeypatch.setenv("PARLEY_CONFIG", str(other))  # restored after the test
    assert await _replay(args(tmp_path, session_id, url, other)) == 0
    shown = capsys.readouterr().out
    assert "before: I'm not sure, sorry." in shown
    assert "after:  The kitchen takes its last orders at 9:30 pm." in shown
    rows = json.loads((tmp_path / "replay.json").read_text())["turns"]
    assert [r["caller"] for r in rows] == [
        "When does the kitchen take last orders?",
        "Thank you very much.",
    ]
    assert rows[1]["before"] == "You're welcome!" and rows[1]["after"]  # the model's words


async def test_replay_says_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'parley.db'}"
    session_id = await stored_session(url)
    monkeypatch.setenv("PARLEY_CONFIG", str(ROOT / "tests" / "parley.test.toml"))
    other = tmp_path / "other.toml"
    assert await _replay(args(tmp_path, session_id, url, other)) == 2
    assert "no agent file" in capsys.readouterr().err
    other.write_text("[agent]\n")
    assert await _replay(args(tmp_path, "nope", url, other)) == 2
    assert "no session nope" in capsys.readouterr().err
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    assert await _replay(args(tmp_path, session_id, empty, other)) == 2
    err = capsys.readouterr().err
    assert "could not read sessions" in err and "empty.db" not in err
    other.write_text('[agent]\nknowledge_file = "missing.md"\n')
    assert await _replay(args(tmp_path, session_id, url, other)) == 2
    assert "missing.md" in capsys.readouterr().err
