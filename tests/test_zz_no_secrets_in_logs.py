"""After the end-to-end suite (this module's name sorts it last), no log line of any
server it ran holds a token, a key or the server's secrets.

It first makes the shared server log what used to leak — a WebSocket URL with its
token in the query, a bearer header, an API call with a token in the query — then reads
every server log under tests/artifacts/."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from websockets.asyncio.client import connect

from conftest import ADMIN_KEY, ARTIFACTS, TOKEN_SECRET
from parley.client import create_session

pytestmark = pytest.mark.e2e

LEAKS = {
    "a token in a query string": re.compile(r"token=(?!\[REDACTED)[^&\s\"']+"),
    "a JWT": re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]*"),
    "a bearer credential": re.compile(r"(?i)bearer\s+(?!\[REDACTED)[\w.~+/=-]+"),
}


async def test_no_server_log_line_holds_a_secret(server):
    session = await create_session(server.ws_url)
    token = session["token"]
    async with connect(f"{server.ws_url}?token={token}") as ws:
        started = json.loads(await ws.recv())
        assert started["type"] == "session.started"
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
        await http.get(
            f"/v1/sessions/{session['session_id']}?token={token}",
            headers={"Authorization": f"Bearer {token}"},
        )
        await http.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"})

    logs = sorted(ARTIFACTS.rglob("*.log"))
    assert ARTIFACTS / "server.log" in logs
    found: list[str] = []
    for path in logs:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            where = f"{path.relative_to(ARTIFACTS)}:{number}"
            for what, pattern in LEAKS.items():
                if pattern.search(line):
                    found.append(f"{where}: {what}: {line[:200]}")
            for secret in (TOKEN_SECRET, ADMIN_KEY, token):
                if secret in line:
                    found.append(f"{where}: a secret of this test run: {line[:200]}")
    assert not found, "\n".join(found[:20])
