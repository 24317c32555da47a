"""A real ``parley serve`` process is killed (SIGKILL) in the middle of turns and a new
one is started on the same database: retries with the same idempotency keys finish the
turns, and no side effect happens twice.

Two turns are cut off at once: one while its second tool call is in flight (after the
model answered and the first tool ran), one while the model is still answering. The
model is a scripted OpenAI-compatible server (so the tool calls are known); the tools
are HTTP webhooks whose side effects the test counts."""

from __future__ import annotations

import json
import threading
import uuid
from contextlib import nullcontext
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from fake_llm_provider import ProviderScript, fake_provider
from parley.testing import ServerProcess

pytestmark = pytest.mark.e2e

SECRET = "crash-test-secret-0123456789abcdef0123456789"
ENVELOPE = json.dumps(
    {
        "spoken_text": "Your table is booked and a confirmation is on its way.",
        "escalate": False,
        "tool_calls": [
            {"name": "book_table", "arguments": {"party": 2, "time": "19:00"}},
            {"name": "send_confirmation", "arguments": {"to": "guest"}},
        ],
    }
)


class Restaurant:
    """The downstream system: bookings are not idempotent (each request books again);
    confirmations honour Idempotency-Key (a repeated key sends nothing new). The first
    confirmation is held until ``release`` — the window in which the test kills Parley."""

    def __init__(self) -> None:
        self.booking_requests: list[str] = []
        self.confirmation_requests: list[str] = []
        self.confirmations_sent: dict[str, int] = {}
        self.holding = threading.Event()
        self.release = threading.Event()
        restaurant = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                key = self.headers["Idempotency-Key"]
                if self.path == "/book":
                    restaurant.booking_requests.append(key)
                    answer = {"confirmation": f"T-{len(restaurant.booking_requests)}"}
                else:
                    restaurant.confirmation_requests.append(key)
                    if key not in restaurant.confirmations_sent:
                        restaurant.confirmations_sent[key] = len(restaurant.confirmations_sent)
                        restaurant.holding.set()
                        restaurant.release.wait(30)
                    answer = {"sent": restaurant.confirmations_sent[key]}
                payload = json.dumps(answer).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # Parley died while we held the request

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


def agent_file(path: Path, llm_url: str, restaurant: Restaurant) -> Path:
    path.write_text(
        f"""
[server]
turn_lease_secs = 1.0

[llm]
provider = "openai"
base_url = "{llm_url}"
timeout = 30

[[tools]]
name = "book_table"
url = "{restaurant.url}/book"
description = "Book a table."
parameters = {{ type = "object", required = ["party", "time"] }}

[[tools]]
name = "send_confirmation"
url = "{restaurant.url}/confirm"
description = "Send the booking confirmation."
retry_safe = true
"""
    )
    return path


def post_turn(base: str, sid: str, token: str, text: str, key: str) -> httpx.Response:
    return httpx.post(
        f"{base}/v1/sessions/{sid}/turns",
        json={"text": text, "idempotency_key": key},
        headers={"Authorization": f"Bearer {token}"},
        timeout=90,
    )


def background_turn(base: str, sid: str, token: str, text: str, key: str) -> threading.Thread:
    def run() -> None:
        try:
            post_turn(base, sid, token, text, key)
        except httpx.HTTPError:
            pass  # the server is killed under this request: that is the point

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_killed_server_mid_turn_no_side_effect_twice(backend, tmp_path, request):
    from conftest import ARTIFACTS, postgres_database

    restaurant = Restaurant()
    script = ProviderScript([ENVELOPE], hold_when="later")
    database = postgres_database() if backend == "postgresql" else nullcontext(None)
    with fake_provider(script) as llm_url, database as pg_url:
        env = {
            "PARLEY_CONFIG": str(agent_file(tmp_path / "agent.toml", llm_url, restaurant)),
            "PARLEY_SERVER__TOKEN_SECRET": SECRET,
            "PARLEY_SERVER__DATABASE_URL": pg_url or f"sqlite:///{tmp_path / 'crash.db'}",
        }
        logs = ARTIFACTS / f"crash-{backend}"
        first = ServerProcess(env, logs / "before-kill.log")
        session = httpx.post(f"{first.http}/v1/sessions", json={}, timeout=10).json()
        sid, token = session["session_id"], session["token"]
        tools_turn, llm_turn = f"k-{uuid.uuid4().hex[:6]}", f"k-{uuid.uuid4().hex[:6]}"
        background_turn(first.http, sid, token, "Book a table for two at seven", tools_turn)
        assert restaurant.holding.wait(30), "the confirmation webhook was never called"
        background_turn(first.http, sid, token, "Call me later", llm_turn)
        assert script.held.wait(30), "the model was never asked about the second turn"
        first.kill()  # mid-tool-call for one turn, mid-model-call for the other
        restaurant.release.set()
        script.release.set()

        second = ServerProcess(env, logs / "after-restart.log")
        try:
            done = post_turn(second.http, sid, token, "Book a table for two at seven", tools_turn)
            later = post_turn(second.http, sid, token, "Call me later", llm_turn)
            timeline = httpx.get(
                f"{second.http}/v1/sessions/{sid}/timeline",
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            ).json()
        finally:
            second.stop()

    assert done.status_code == 200 and later.status_code == 200, (done.text, later.text)
    for answer in (done.json(), later.json()):
        assert answer["state"] == "completed"
        assert [t["status"] for t in answer["tool_results"]] == ["succeeded", "succeeded"]
    # The first turn's model answer was checkpointed: asked once for it, twice in all
    # (the second turn was cut off before its answer was stored, so it is asked again).
    texts = [r["messages"][-1]["content"] for r in script.requests]
    assert texts.count("Book a table for two at seven") == 1
    assert texts.count("Call me later") == 2
    # Side effects: one booking and one confirmation per turn, whatever was cut off.
    assert len(restaurant.booking_requests) == len(set(restaurant.booking_requests)) == 2
    assert len(restaurant.confirmations_sent) == 2
    # The cut-off confirmation was re-sent with its key (retry-safe), deduplicated there.
    assert len(restaurant.confirmation_requests) == 3
    turns = {t["idempotency_key"]: t for t in timeline["turns"]}
    taken = [
        t
        for t in turns[tools_turn]["transitions"]
        if (t.get("detail") or "").startswith("taken over")
    ]
    assert len(taken) == 1
    duplicates = (len(restaurant.booking_requests) - 2) + (len(restaurant.confirmations_sent) - 2)
    request.node.user_properties.append(("duplicate_side_effects", duplicates))
    print(f"\n[{backend}] duplicate side effects after a SIGKILL mid-turn: {duplicates}")
