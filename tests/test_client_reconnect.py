"""The Python callers' reconnect (parley.client_reconnect): retries against a real HTTP
server that answers 503 with Retry-After, a clear error when they give up or the server
refuses the session, which drops are worth a reconnect, and a CallClient against a plain
``parley serve`` whose connection is cut under it: it reconnects to that same server."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from parley.client import CallClient
from parley.client_reconnect import (
    ReconnectFailed,
    ReconnectPolicy,
    absolute,
    ended_for_good,
    refresh_token,
    retry,
    should_reconnect,
)
from parley.testing import free_port


class TokenServer(ThreadingHTTPServer):
    """Answers ``POST /v1/sessions/{id}/tokens``: ``busy`` times 503 + Retry-After, then
    201 with a token answer (or ``status`` every time when it is set)."""

    def __init__(self, busy: int, status: int | None = None) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.busy = busy
        self.status = status
        self.calls: list[tuple[str, str | None]] = []


class Handler(BaseHTTPRequestHandler):
    server: TokenServer

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.calls.append((self.path, self.headers.get("Authorization")))
        if self.server.status is not None:
            self._answer(self.server.status, {"detail": "the session has ended"})
        elif len(self.server.calls) <= self.server.busy:
            self._answer(503, {"detail": "fleet full"}, {"Retry-After": "1"})
        else:
            sid = self.path.split("/")[3]
            ws = f"ws://worker-b:8000/v1/ws?token=t{len(self.server.calls)}"
            self._answer(201, {"session_id": sid, "token": "new", "websocket_url": ws})

    def _answer(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def token_server(request: pytest.FixtureRequest) -> Iterator[TokenServer]:
    busy, status = request.param
    server = TokenServer(busy, status)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


class Sleeps:
    """Records the waits asked for (and waits for real: Retry-After is a second here)."""

    def __init__(self) -> None:
        self.asked: list[float] = []

    async def __call__(self, secs: float) -> None:
        self.asked.append(secs)
        await asyncio.sleep(secs)


def base(server: TokenServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


@pytest.mark.parametrize("token_server", [(1, None)], indirect=True)
async def test_a_503_is_retried_after_its_retry_after(token_server: TokenServer) -> None:
    sleeps = Sleeps()
    policy = ReconnectPolicy(delays=(0.05, 0.1), attempts=4)
    answer, attempts = await retry(
        lambda: refresh_token(base(token_server), "s1", "old"), policy, "reconnecting", sleep=sleeps
    )
    assert attempts == 2 and answer["token"] == "new"
    assert sleeps.asked == [0.05, 1.0]  # the backoff, then the 503's Retry-After
    assert token_server.calls == [("/v1/sessions/s1/tokens", "Bearer old")] * 2


@pytest.mark.parametrize("token_server", [(99, None)], indirect=True)
async def test_it_gives_up_with_a_clear_error(token_server: TokenServer) -> None:
    policy = ReconnectPolicy(delays=(0.0,), attempts=3, max_retry_after=0.05)
    with pytest.raises(ReconnectFailed, match=r"gave up after 3 attempts.*503.*fleet full"):
        await retry(lambda: refresh_token(base(token_server), "s1", "t"), policy, "reconnecting")
    assert len(token_server.calls) == 3


@pytest.mark.parametrize("token_server", [(0, 401)], indirect=True)
async def test_a_refused_session_is_not_retried(token_server: TokenServer) -> None:
    policy = ReconnectPolicy(delays=(0.0,), attempts=5)
    with pytest.raises(ReconnectFailed, match=r"refused the session.*401.*has ended"):
        await retry(lambda: refresh_token(base(token_server), "s1", "t"), policy, "reconnecting")
    assert len(token_server.calls) == 1


async def test_an_unreachable_control_plane_is_retried_then_given_up() -> None:
    policy = ReconnectPolicy(delays=(0.01,), attempts=3)
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ReconnectFailed, match=r"gave up after 3 attempts.*ConnectError"):
        await retry(lambda: refresh_token(url, "s1", "t"), policy, "reconnecting")


def test_which_drops_are_reconnected() -> None:
    for code in (None, 1001, 1005, 1006, 1011, 1012, 4503):
        assert should_reconnect(code), code
    for code in (1000, 1008, 4401, 4403, 4404, 4408, 4409, 4410, 4429):
        assert not should_reconnect(code), code
    assert not ended_for_good([{"type": "error", "code": "server_restarting"}])
    assert ended_for_good([{"type": "session.ended"}])
    assert ended_for_good([{"type": "error", "code": "session_taken_over"}])
    # A plain server answers paths on itself; a control plane, absolute URLs on a worker.
    assert absolute("/v1/ws?token=x", "http://h:1", websocket=True) == "ws://h:1/v1/ws?token=x"
    assert absolute("https://w:2/v1/ws", "http://h:1", websocket=True) == "wss://w:2/v1/ws"
    assert ReconnectPolicy(delays=(1.0, 2.0)).delay(5) == 2.0
    assert ReconnectPolicy(max_retry_after=30).delay(0, 120) == 30


@pytest.mark.e2e
async def test_a_cut_connection_to_a_plain_server_is_resumed_there(server, caller) -> None:
    """No fleet: the refresh answers the same server's path, and the session resumes."""
    from voice_helpers import wait_reply_done

    async with CallClient(server.ws_url, reconnect=True) as call:
        _, greeted_at = await wait_reply_done(call, after=0)
        await call.say(caller("What time does the store open tomorrow morning"))
        ended_at, _ = await call.wait_for("turn.ended", after=greeted_at, timeout=20)
        await wait_reply_done(call, after=ended_at)
        call.ws.transport.abort()  # the network drops: no close frame either way
        cut_at = asyncio.get_running_loop().time()
        _, back = await call.wait_for("client.reconnected", after=cut_at, timeout=20)
        _, started = await call.wait_for("session.started", after=cut_at)
        assert back["worker_id"] is None and call.reconnects == 1
        assert started["resumed"] and started["turns"] == 1
        assert call.of_type("client.reconnecting")[0]["close_code"] == 1006
        await call.say(caller("Can you tell me a fun fact about the moon"))
        _, nxt = await call.wait_for("turn.ended", after=cut_at, timeout=20)
        assert nxt["turn_id"] == 2
        await call.send_json({"type": "end"})
        await asyncio.wait_for(call.closed.wait(), 10)
    assert call.close_code == 1000 and call.reconnects == 1  # an end is not a drop
