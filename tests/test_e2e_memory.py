"""Conversations that last, on the embedded models over the real WebSocket: the turns
that leave the prompt's window are summarized behind the conversation, kept on the
session record, and a reconnect resumes with the summary; the inspector shows it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import httpx
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

served = contextlib.asynccontextmanager(serve_app)
QUESTIONS = (
    "What time does the store open tomorrow morning",
    "Can you tell me a fun fact about the moon",
    "What is the capital city of France",
)


async def test_a_reconnect_resumes_with_the_summary_of_older_turns(
    embedded_engines: Engines, caller: Callable[..., np.ndarray], tmp_path: Path
) -> None:
    settings = Settings(
        server={"database_url": f"sqlite:///{tmp_path / 'parley.db'}", "token_secret": SECRET},
        # A window of 4 messages: the third question's prompt leaves the first two turns
        # out, and they are summarized (excerpts: the embedded model's "auto").
        agent={"max_history_messages": 4},
        llm={"max_tokens": 24},
    )
    async with served(create_app(settings, engines=embedded_engines)) as server:
        async with CallClient(server.ws_url) as call:
            _, done = await wait_reply_done(call, after=0)  # the greeting
            heard = []
            for question in QUESTIONS:
                await call.say(caller(question))
                ended_at, ended = await call.wait_for("turn.ended", after=done, timeout=30)
                heard.append(ended["text"])
                _, done = await wait_reply_done(call, after=ended_at)
            record = await stored_record(
                server, call, lambda r: bool(r["memory"]["summary"]) and len(r["turns"]) == 3
            )
        assert call.session is not None
        sid, token = call.session["session_id"], call.session["token"]
        memory = record["memory"]
        # The first two caller turns (and what was said between them) left the window.
        assert memory["covered"] == 2
        lines = memory["summary"].split("\n")
        # The greeting ("Hello, this is Parley.") says nothing about the call: not kept.
        assert lines[0].startswith("Caller: ") and heard[0].startswith(lines[0][8:].rstrip(" …"))
        assert [line[:5] for line in lines[1:]] == ["You: ", "Calle"]
        assert [e["data"]["covered"] for e in record["events"] if e["stage"] == "memory.summarized"]

        async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
            r = await http.post(
                f"/v1/sessions/{sid}/tokens", json={}, headers={"Authorization": f"Bearer {token}"}
            )
            token = r.json()["token"]
        async with CallClient(f"{server.ws_url}?token={token}") as again:
            _, started = await again.wait_for("session.started")
            assert started["resumed"] and started["turns"] == 3
            await again.send_json({"type": "status"})
            _, status = await again.wait_for("session.status")
            assert status["memory"] == {"summary": memory["summary"], "covered": 2, "state": {}}
            await again.say(caller("Thank you very much"))
            ended_at, ended = await again.wait_for("turn.ended", timeout=30)
            await wait_reply_done(again, after=ended_at)
            assert ended["turn_id"] == 4

        inspected = inspection(record)
        assert inspected["memory"]["summary"] == memory["summary"]
        assert "remembered (first 2 caller turns): Caller: " in format_inspection(inspected)
