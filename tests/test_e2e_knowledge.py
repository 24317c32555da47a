"""The shipped demo agent (Juniper Bistro's knowledge) answering a spoken question over
the real WebSocket, on the embedded models: the fact is said, the turn's record names it,
and words that match no fact are answered by the model."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from inprocess_server import SECRET, serve_app
from parley.client import CallClient
from parley.config import Settings
from parley.engines import Engines
from parley.inspect_report import format_inspection
from parley.server import create_app
from parley.server.inspection import inspection
from voice_helpers import stored_record, wait_reply_done

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
served = contextlib.asynccontextmanager(serve_app)
LAST_ORDERS = "The kitchen takes its last orders at 9:30 pm."


async def test_the_demo_agent_says_the_fact_asked_for(
    embedded_engines: Engines, caller: Callable[..., np.ndarray], tmp_path: Path
) -> None:
    settings = Settings(
        server={"database_url": f"sqlite:///{tmp_path / 'parley.db'}", "token_secret": SECRET},
        agent={"knowledge_file": ROOT / "agents" / "bistro" / "knowledge.md"},
    )
    async with served(create_app(settings, engines=embedded_engines)) as server:
        assert server.app.state.knowledge.mode == "quote"  # the embedded model: "auto"
        async with CallClient(server.ws_url) as call:
            _, greeted_at = await wait_reply_done(call, after=0)  # the agent file's greeting
            await call.say(caller("When does the kitchen take last orders?"))
            ended_at, ended = await call.wait_for("turn.ended", after=greeted_at, timeout=30)
            _, answered_at = await wait_reply_done(call, after=ended_at)
            said = [e["text"] for e in call.of_type("agent.text") if e["turn_id"] == 1]
            assert " ".join(said) == LAST_ORDERS, (ended["text"], said)

            await call.say(caller("Thank you very much"))
            thanked_at, thanked = await call.wait_for("turn.ended", after=answered_at, timeout=30)
            await wait_reply_done(call, after=thanked_at)
            answer = [e["text"] for e in call.of_type("agent.text") if e["turn_id"] == 2]
            assert answer and " ".join(answer) != LAST_ORDERS, (thanked["text"], answer)

            record = await stored_record(
                server, call, lambda r: len(r["turns"]) == 2 and r["turns"][1]["result"]
            )
        first, second = record["turns"]
        assert first["result"]["facts"] == [LAST_ORDERS]
        assert first["result"]["spoken"] == LAST_ORDERS
        assert "facts" not in second["result"], thanked["text"]
        # The inspector (page and `parley inspect`) shows what the reply was grounded on.
        inspected = inspection(record)
        assert [t["facts"] for t in inspected["turns"]] == [[LAST_ORDERS], []]
        assert f"fact:   {LAST_ORDERS}" in format_inspection(inspected)
