"""GET /ready against the real dependencies, each stopped or broken for real: a
PostgreSQL cluster of the test's own that is stopped and started again, a remote LLM
provider whose port closes or that never answers, a Piper worker process killed while
no replacement can start. The server runs in-process on the embedded engines (loaded
once per test run), served by uvicorn over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from fake_llm_provider import ProviderScript, fake_provider
from inprocess_server import SECRET, InProcessServer, serve_app
from parley.config import ServerSettings, Settings
from parley.engines import Engines, tts_piper
from parley.engines.llm_openai import OpenAICompatibleLLM
from parley.server import create_app
from parley.server.readiness import ReadinessProbe
from parley.testing import free_port
from parley.transports.admission import Admission

DEPENDENCIES = {"database", "vad", "stt", "end_of_turn", "end_of_turn_text", "llm", "tts"}
API_KEY = "sk-readiness-test-key-never-shown"
DB_PASSWORD = "readiness-db-password-never-shown"
# The machine may be busy (two cores): the engine probes get a generous deadline here,
# except where the deadline itself is under test.
ROOMY_DEADLINE = 15.0

served = contextlib.asynccontextmanager(serve_app)


def settings_for(tmp_path: Path, **server: Any) -> dict[str, Any]:
    return {
        "database_url": f"sqlite:///{tmp_path / 'parley.db'}",
        "token_secret": SECRET,
        "readiness_cache_secs": 0,
        "readiness_timeout_secs": ROOMY_DEADLINE,
        **server,
    }


@contextlib.asynccontextmanager
async def ready_client(
    settings: Settings, engines: Engines
) -> AsyncIterator[tuple[InProcessServer, httpx.AsyncClient]]:
    async with (
        served(create_app(settings, engines=engines)) as server,
        httpx.AsyncClient(base_url=server.http, timeout=60) as http,
    ):
        yield server, http


async def wait_until_ready(http: httpx.AsyncClient, timeout: float = 60.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        response = await http.get("/ready")
        if response.status_code == 200 or time.monotonic() > deadline:
            return response
        await asyncio.sleep(0.5)


def failing(body: dict[str, Any]) -> set[str]:
    return {name for name, check in body["checks"].items() if not check["ok"]}


async def test_probes_are_shared_cached_bounded_and_never_show_a_secret():
    calls = 0

    async def answers() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)

    async def leaks() -> None:
        raise RuntimeError(f"login to postgresql://admin:{API_KEY}@db.example/x failed\nmore")

    async def hangs() -> None:
        await asyncio.sleep(60)

    state = SimpleNamespace(sessions={}, webrtc_peers={})
    admission = Admission(state, ServerSettings(max_sessions=1))
    probe = ReadinessProbe(
        {"answers": answers, "leaks": leaks, "hangs": hangs},
        admission,
        cache_secs=30,
        timeout_secs=0.2,
        secrets=[API_KEY],
    )
    first, second = await asyncio.gather(probe.check(), probe.check())
    assert calls == 1 and first.probed is second.probed  # one round for both
    assert (await probe.check()).probed is first.probed and calls == 1  # cached
    checks = first.as_json()["checks"]
    assert first.status == "not_ready" and checks["answers"]["ok"]
    assert checks["hangs"] == {
        "ok": False,
        "ms": checks["hangs"]["ms"],
        "reason": "no answer within 0.2 s",
    }
    assert (
        checks["leaks"]["reason"] == "RuntimeError: login to postgresql://***@db.example/x failed"
    )
    assert API_KEY not in json.dumps(first.as_json())
    # Room is counted at every check, not cached.
    state.sessions[1] = SimpleNamespace(session_id="a")
    assert (await probe.check()).as_json()["checks"]["capacity"] == {
        "ok": False,
        "live": 1,
        "max": 1,
    }


async def test_the_embedded_engines_are_ready(embedded_engines, tmp_path):
    settings = Settings(server=settings_for(tmp_path, readiness_cache_secs=30))
    async with ready_client(settings, embedded_engines) as (_, http):
        assert (await http.get("/health")).json()["status"] == "ok"  # liveness, unchanged
        response = await http.get("/ready")
        body = response.json()
        assert response.status_code == 200, body
        assert body["status"] == "ready"
        assert set(body["checks"]) == DEPENDENCIES | {"capacity"}
        assert not failing(body)
        assert all(isinstance(body["checks"][name]["ms"], float) for name in DEPENDENCIES)
        assert body["checks"]["capacity"] == {"ok": True, "live": 0, "max": 8}
        # Within readiness_cache_secs the engines are not asked again.
        again = (await http.get("/ready")).json()
        assert again["probed_at"] == body["probed_at"]


# ---- the database: a PostgreSQL cluster of this test's own ------------------------------


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return found[-1].parent if found and (found[-1].parent / "initdb").exists() else None


@dataclasses.dataclass
class ThrowawayPostgres:
    """A PostgreSQL cluster in a temporary directory on a free port: stopped and started
    at will, never the shared one on 5432."""

    bin: Path
    root: Path
    port: int

    @property
    def url(self) -> str:
        # Trust authentication: the password is there only to prove it is never shown.
        return f"postgresql+asyncpg://postgres:{DB_PASSWORD}@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        # initdb and the server refuse to run as root: run them as the postgres user.
        as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run(
            [*as_owner, str(self.bin / tool), *args], check=True, capture_output=True, timeout=90
        )

    def init(self) -> None:
        self._run("initdb", "-D", str(self.root / "data"), "-A", "trust", "-U", "postgres")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.root / "server.log")
        self._run("pg_ctl", "-D", str(self.root / "data"), "-l", log, "-o", options, "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    binaries = _postgres_bin()
    if binaries is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) under /usr/lib/postgresql")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: cannot start PostgreSQL as postgres")
    root = Path(tempfile.mkdtemp(prefix="parley-ready-pg-"))  # in /tmp: postgres can reach it
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    pg = ThrowawayPostgres(binaries, root, free_port())
    try:
        pg.init()
        pg.start()
        yield pg
    finally:
        with contextlib.suppress(Exception):
            pg.stop()
        shutil.rmtree(root, ignore_errors=True)


async def test_a_stopped_database_is_not_ready_until_it_is_up_again(embedded_engines, tmp_path):
    with throwaway_postgres() as pg:
        settings = Settings(server=settings_for(tmp_path, database_url=pg.url))
        async with ready_client(settings, embedded_engines) as (_, http):
            response = await http.get("/ready")
            assert response.status_code == 200, response.json()

            await asyncio.to_thread(pg.stop)
            response = await http.get("/ready")
            body = response.json()
            assert response.status_code == 503 and response.headers["Retry-After"] == "5"
            assert body["status"] == "not_ready"
            assert failing(body) == {"database"}, body
            assert body["checks"]["database"]["reason"]
            assert DB_PASSWORD not in response.text

            await asyncio.to_thread(pg.start)
            response = await wait_until_ready(http, timeout=30)
            assert response.status_code == 200, response.json()
            assert response.json()["checks"]["database"]["ok"]


# ---- a remote LLM provider -------------------------------------------------------------


def remote_llm_settings(tmp_path: Path, base_url: str, **server: Any) -> Settings:
    return Settings(
        server=settings_for(tmp_path, **server),
        llm={"provider": "openai", "base_url": base_url, "model": "tiny", "api_key": API_KEY},
    )


async def test_a_remote_llm_whose_port_is_closed_is_not_ready(embedded_engines, tmp_path):
    with contextlib.ExitStack() as provider:
        script = ProviderScript(["Hello."])
        settings = remote_llm_settings(tmp_path, provider.enter_context(fake_provider(script)))
        remote = OpenAICompatibleLLM(settings.llm)
        engines = dataclasses.replace(embedded_engines, llm=remote)
        try:
            async with ready_client(settings, engines) as (_, http):
                response = await http.get("/ready")
                assert response.status_code == 200, response.json()
                assert not script.requests  # a reachability check spends no completion

                provider.close()  # the provider goes away: its port is closed now
                response = await http.get("/ready")
                body = response.json()
                assert response.status_code == 503 and body["status"] == "not_ready"
                assert failing(body) == {"llm"}, body
                assert "unreachable" in body["checks"]["llm"]["reason"]
                assert API_KEY not in response.text
        finally:
            await remote.aclose()


async def test_a_dependency_that_never_answers_fails_by_the_deadline(embedded_engines, tmp_path):
    # A port that accepts connections and never says a word.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        settings = remote_llm_settings(tmp_path, url, readiness_timeout_secs=0.5)
        remote = OpenAICompatibleLLM(settings.llm)
        engines = dataclasses.replace(embedded_engines, llm=remote)
        try:
            async with ready_client(settings, engines) as (_, http):
                started = time.monotonic()
                response = await http.get("/ready")
                elapsed = time.monotonic() - started
        finally:
            await remote.aclose()
    body = response.json()
    assert response.status_code == 503 and "llm" in failing(body)
    assert "within 0.5 s" in body["checks"]["llm"]["reason"]
    assert elapsed < 5, elapsed


# ---- a Piper worker process ------------------------------------------------------------


async def test_a_killed_tts_worker_is_not_ready_until_replaced(
    embedded_engines, tmp_path, monkeypatch
):
    from test_piper_pool import piper_worker_pids  # it needs piper-tts: imported here

    monkeypatch.setattr(tts_piper, "RESPAWN_FIRST_DELAY_SECS", 0.2)
    settings = Settings(server=settings_for(tmp_path))
    async with ready_client(settings, embedded_engines) as (_, http):
        response = await http.get("/ready")
        assert response.status_code == 200, response.json()

        (pid,) = piper_worker_pids()
        # No replacement can start while this is set: Python itself cannot.
        monkeypatch.setenv("PYTHONHOME", "/nonexistent")
        os.kill(pid, signal.SIGKILL)
        response = await http.get("/ready")
        body = response.json()
        assert response.status_code == 503 and body["status"] == "not_ready"
        assert failing(body) == {"tts"}, body
        assert "worker" in body["checks"]["tts"]["reason"]

        monkeypatch.delenv("PYTHONHOME")  # replacements start again
        response = await wait_until_ready(http, timeout=90)
        assert response.status_code == 200, response.json()
        assert len(piper_worker_pids()) == 1
