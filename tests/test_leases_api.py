"""The orchestration endpoint stops a turn's work when its claim is lost: the caller gets
a clear error, never a half-written result, and the turn is left for a retry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from sqlalchemy.exc import OperationalError

from parley.config import Settings
from parley.engines import ChatMessage
from parley.server import create_app


class SlowLLM:
    """Answers after ``delay`` seconds unless cancelled first (a test double)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.started = 0
        self.cancelled = 0
        self.finished = 0

    async def complete_json(
        self, messages: Sequence[ChatMessage], schema: dict[str, object]
    ) -> str:
        self.started += 1
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.finished += 1
        return '{"spoken_text": "Booked.", "escalate": false}'


@pytest.fixture
async def slow_api(tmp_path) -> AsyncIterator[tuple[httpx.AsyncClient, SlowLLM, Any]]:
    llm = SlowLLM(delay=4.0)
    settings = Settings(
        server={"database_url": f"sqlite:///{tmp_path / 'l.db'}", "turn_lease_secs": 0.6}
    )
    app = create_app(settings, engines=SimpleNamespace(llm=llm))  # type: ignore[arg-type]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://parley") as client:
            yield client, llm, app


async def _session(client: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
    created = (await client.post("/v1/sessions", json={})).json()
    return created["session_id"], {"Authorization": f"Bearer {created['token']}"}


@pytest.mark.parametrize("failure", ["database down", "taken over"])
async def test_a_lost_lease_stops_the_work_and_tells_the_caller(slow_api, monkeypatch, failure):
    client, llm, app = slow_api
    store = app.state.store
    sid, headers = await _session(client)

    async def renew_fails(*args: Any, **kwargs: Any) -> bool:
        if failure == "taken over":
            return False  # another process holds the turn now
        raise OperationalError("UPDATE turns", {}, Exception("database is unreachable"))

    monkeypatch.setattr(store, "renew_lease", renew_fails)
    body = {"text": "Book a table", "idempotency_key": "k-lease"}
    r = await client.post(f"/v1/sessions/{sid}/turns", json=body, headers=headers)

    assert r.status_code == 503, r.text
    assert "lost its claim" in r.json()["detail"]
    assert llm.started == 1 and llm.cancelled == 1 and llm.finished == 0
    (turn,) = await store.turns(sid)
    assert turn.state == "processing" and turn.result is None  # nothing half-written
