"""The page in a fleet, in real headless Chromium: served by ``parley control``, it talks
to the worker its session was dispatched to (WebRTC offer across origins, allowed by the
worker's ``fleet.allowed_origins``). When that worker is killed, the page reconnects
through the control plane and the conversation resumes on the other worker."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

from conftest import (
    ARTIFACTS,
    ROOT,
    TOKEN_SECRET,
    _create_postgres_database,
    _drop_postgres_database,
)
from parley.testing import RedisServer, ServerProcess, free_port
from test_e2e_browser import chromium, microphone_file, start_call, wait_agent_reply

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.redis, pytest.mark.postgres]
__all__ = ["chromium"]  # the fixture, shared with the other browser tests


@dataclass
class PageFleet:
    control: ServerProcess
    workers: dict[str, ServerProcess]
    redis: RedisServer


@pytest.fixture
def page_fleet() -> Iterator[PageFleet]:
    database_url = asyncio.run(_create_postgres_database())
    redis_server = RedisServer()
    control_port = free_port()
    env = {
        "PARLEY_CONFIG": str(ROOT / "tests" / "parley.test.toml"),
        "PARLEY_SERVER__DATABASE_URL": database_url,
        "PARLEY_SERVER__TOKEN_SECRET": TOKEN_SECRET,
        "PARLEY_FLEET__REDIS_URL": redis_server.url,
        "PARLEY_FLEET__HEARTBEAT_SECS": "0.5",
        "PARLEY_FLEET__EXPIRY_SECS": "2",
        "PARLEY_FLEET__ALLOWED_ORIGINS": f'["http://127.0.0.1:{control_port}"]',
    }
    started: list[ServerProcess] = []
    try:
        workers = {}
        for name in ("worker-a", "worker-b"):
            workers[name] = ServerProcess(
                {**env, "PARLEY_FLEET__WORKER_ID": name},
                ARTIFACTS / f"browser-fleet-{name}.log",
                cwd=ROOT,
                command="worker",
            )
            started.append(workers[name])
        control = ServerProcess(
            env, ARTIFACTS / "browser-fleet-control.log", cwd=ROOT, port=control_port,
            command="control",
        )  # fmt: skip
        started.append(control)
        yield PageFleet(control, workers, redis_server)
    finally:
        for proc in started:
            if proc.proc.poll() is None:
                proc.stop()
        redis_server.stop()
        asyncio.run(_drop_postgres_database(database_url))


def test_the_page_follows_its_session_to_a_live_worker(page_fleet: PageFleet, chromium, tmp_path):
    fleet = page_fleet
    page = chromium(microphone_file(tmp_path, "Please book a table for two at seven"))
    start_call(page, fleet.control.http)  # the page, and its session, from the control plane
    wait_agent_reply(page)
    page.wait_for_function("window.parley.agentState === 'listening'", timeout=30_000)
    session_id = page.evaluate("window.parley.sessionId")
    first = page.evaluate("window.parley.workerId")
    assert first in fleet.workers
    before = page.inner_text("#transcript")

    fleet.workers[first].kill()  # the worker dies mid-conversation
    # No goodbye from a killed worker: the page notices the lasting ICE disconnection.
    page.wait_for_function("window.parley.connected === false", timeout=30_000)
    page.wait_for_function(
        "window.parley.connected && window.parley.restoredFromServer", timeout=60_000
    )
    (other,) = set(fleet.workers) - {first}
    assert page.evaluate("window.parley.workerId") == other
    assert page.evaluate("window.parley.sessionId") == session_id
    assert page.evaluate("window.parley.reconnects") >= 1
    dispatched = redis.Redis.from_url(fleet.redis.url).get(f"parley:fleet:session:{session_id}")
    assert dispatched == other.encode()
    # Rebuilt from the shared database: the same caller words and agent reply.
    after = page.inner_text("#transcript")
    assert before.split("\n")[1] in after.split("\n"), (before, after)
    assert page.is_hidden("#banner")
    page.screenshot(path=str(ARTIFACTS / "browser-fleet-resumed.png"), full_page=True)
