"""The voice WebSocket needs a valid token for an existing session."""

from __future__ import annotations

import json
import time

import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from conftest import TOKEN_SECRET
from parley.client import CallClient, create_session

pytestmark = pytest.mark.e2e


async def refused(url: str) -> tuple[int | None, dict]:
    """Connect, read the error event, and return the close code with it."""
    async with connect(url) as ws:
        error = json.loads(await ws.recv())
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        return ws.close_code, error


async def test_connection_without_token_is_refused(server):
    code, error = await refused(server.ws_url)
    assert code == 4401 and error["code"] == "unauthorized" and "required" in error["message"]


async def test_forged_expired_and_unknown_session_tokens_are_refused(server):
    session = await create_session(server.ws_url)
    claims = jwt.decode(session["token"], options={"verify_signature": False})

    forged = jwt.encode(claims, "someone-elses-secret-0123456789abcdef", algorithm="HS256")
    code, error = await refused(f"{server.ws_url}?token={forged}")
    assert code == 4401 and "signature" in error["message"]

    expired = jwt.encode({**claims, "exp": int(time.time()) - 1}, TOKEN_SECRET, algorithm="HS256")
    code, error = await refused(f"{server.ws_url}?token={expired}")
    assert code == 4401 and "expired" in error["message"]

    ghost = jwt.encode({**claims, "sid": "no-such-session"}, TOKEN_SECRET, algorithm="HS256")
    code, error = await refused(f"{server.ws_url}?token={ghost}")
    assert code == 4404 and error["code"] == "unknown_session"


async def test_a_valid_token_opens_its_own_session(server):
    async with CallClient(server.ws_url) as call:
        _, started = await call.wait_for("session.started")
        assert call.session is not None
        assert started["session_id"] == call.session["session_id"]
