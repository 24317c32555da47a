"""Helpers for end-to-end conversations over the real WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from parley.client import CallClient


def speaking(e: dict[str, Any]) -> bool:
    return e.get("state") == "speaking"


def listening(e: dict[str, Any]) -> bool:
    return e.get("state") == "listening"


async def wait_reply_done(
    client: CallClient, after: float, timeout: float = 40.0
) -> tuple[float, float]:
    """Wait until the agent starts and then stops speaking; returns both arrival times."""
    spoke_at, _ = await client.wait_for("agent.state", speaking, after=after, timeout=timeout)
    done_at, _ = await client.wait_for("agent.state", listening, after=spoke_at, timeout=timeout)
    return spoke_at, done_at


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def _spoken_form(text: str) -> str:
    """Times and numbers written the ways Whisper and the LLM differ on ("9:00 AM",
    "9-0-0am") in one form ("900 am")."""
    text = text.lower()
    while (joined := re.sub(r"(\d)[:\-](\d)", r"\1\2", text)) != text:
        text = joined
    return re.sub(r"(\d)([a-z])", r"\1 \2", text)


def word_recall(expected: str, heard: str) -> float:
    """Share of the expected words that appear in what was heard."""
    exp = words(_spoken_form(expected))
    got = set(words(_spoken_form(heard)))
    return sum(w in got for w in exp) / max(1, len(exp))


async def ask_for_a_long_reply(
    client: CallClient, caller: Callable[..., Any]
) -> tuple[float, dict[str, Any], float]:
    """After the greeting, ask for a story; returns (turn ended at, turn.ended, speaking at)."""
    _, greeted_at = await wait_reply_done(client, after=0)
    await client.say(caller("Tell me a long story about a brave little dragon who learned to fly"))
    ended_at, ended = await client.wait_for("turn.ended", after=greeted_at, timeout=20)
    spoke_at, _ = await client.wait_for("agent.state", speaking, after=ended_at, timeout=20)
    return ended_at, ended, spoke_at


async def assert_whole_reply_kept(client: CallClient, turn_id: int, after: float) -> None:
    """Every sentence the agent sent for ``turn_id`` is in the history's last assistant
    message (as the LLM wrote it; spoken text is cleaned, so words are compared)."""
    sent = " ".join(e["text"] for e in client.of_type("agent.text") if e["turn_id"] == turn_id)
    await client.send_json({"type": "status"})
    _, status = await client.wait_for("session.status", after=after)
    last = [m["content"] for m in status["history"] if m["role"] == "assistant"][-1]
    assert words(last) == words(sent)


async def stored_record(
    server: Any, client: CallClient, until: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The session's persisted timeline (GET /v1/sessions/{id}/timeline), once ``until``
    holds: the store is written behind the conversation, a moment later."""
    import asyncio

    import httpx

    assert client.session is not None
    url = f"{server.http}/v1/sessions/{client.session['session_id']}/timeline"
    headers = {"Authorization": f"Bearer {client.session['token']}"}
    async with httpx.AsyncClient(timeout=10) as http:
        for _ in range(50):
            record = dict((await http.get(url, headers=headers)).json())
            if until(record):
                return record
            await asyncio.sleep(0.1)
    raise AssertionError(f"stored record never satisfied the condition: {record}")


async def flood(
    ws_url: str, token: str, frame: bytes, timeout: float
) -> tuple[list[dict[str, Any]], int | None]:
    """Send ``frame`` (20 ms of audio) about 10x faster than real time until the server
    closes the socket (or ``timeout``); the events received and the close code."""
    events: list[dict[str, Any]] = []
    async with connect(f"{ws_url}?token={token}") as ws:

        async def read() -> None:
            with contextlib.suppress(ConnectionClosed):
                async for message in ws:
                    if isinstance(message, str):
                        events.append(json.loads(message))

        reader = asyncio.create_task(read())
        with contextlib.suppress(ConnectionClosed):
            async with asyncio.timeout(timeout):
                while True:
                    await ws.send(frame)
                    await asyncio.sleep(0.002)
        await reader
        return events, ws.close_code
