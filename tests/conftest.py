"""Shared fixtures: a real Parley server process on the embedded models, caller speech
generated with espeak-ng (a different voice from the agent's Piper voice), and a
full-window Whisper to check what the agent said."""

from __future__ import annotations

import asyncio
import gc
import inspect
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from parley.engines import Engines
from parley.server.draining_server import freeze_startup_heap
from parley.store import Database, Store
from parley.testing import ServerProcess, caller_speech

ROOT = Path(__file__).resolve().parent.parent

# A process's capacity is derived from its engines and cores (parley.engines.capacity):
# on a 2-core CI machine with the embedded models that is 2 live sessions, and the suite's
# shared server (and the in-process apps) hold more test sessions than that at once,
# some still kept for their reconnect. The tests of capacity itself set their own.
os.environ.setdefault("PARLEY_SERVER__MAX_SESSIONS", "8")
# The shipped ./parley.toml is the demo agent (a restaurant's knowledge, whose facts are
# said in place of the model's answer): the in-process apps, like the shared server, run
# the test agent file instead, so what a test's engines answer is what it hears. The
# demo agent has its own tests (test_knowledge*.py, test_e2e_knowledge.py).
os.environ.setdefault("PARLEY_CONFIG", str(ROOT / "tests" / "parley.test.toml"))
ARTIFACTS = ROOT / "tests" / "artifacts"
TOKEN_SECRET = "e2e-secret-0123456789abcdef0123456789abcdef"
ADMIN_KEY = "e2e-admin-key-0123456789abcdef"
SUPERVISOR_KEY = "supervisor-key-for-tests-0123456789"
REDIS_URL = "redis://127.0.0.1:6379/0"
"""`make test` starts Redis here when none answers (scripts/ensure-redis.sh)."""

# What marks a test `models` (it loads an embedded model, starts a server on them or makes
# caller speech with espeak-ng) or `postgres`, so that `make test-fast` needs neither.
# Fixtures are matched by name; a test that builds the thing itself, by its source.
MODEL_FIXTURES = {"server", "caller", "whisper_checker", "embedded_engines"}
MODEL_NAMES = (
    "WhisperSTT(",
    "LlamaLLM(",
    "SmartTurn(",
    "SileroVAD(",
    "PiperTTS(",
    "load_engines(",
    "caller_speech(",
    "ServerProcess(",
)
POSTGRES_NAMES = ("postgres_database(", "_create_postgres_database(", "POSTGRES_ADMIN")


def _source(item: pytest.Item) -> str:
    """The test's source and that of the fixtures it uses, except this file's own (whose
    ``store`` names PostgreSQL in both of its branches: its param says which one runs)."""
    functions = [getattr(item, "function", None)]
    info = getattr(item, "_fixtureinfo", None)
    for defs in getattr(info, "name2fixturedefs", {}).values():
        functions += [d.func for d in defs if getattr(d.func, "__module__", "") != __name__]
    parts = []
    for function in functions:
        try:
            parts.append(inspect.getsource(function))
        except (OSError, TypeError):
            continue
    return "\n".join(parts)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        source = _source(item)
        fixtures = set(getattr(item, "fixturenames", ()))
        params = getattr(getattr(item, "callspec", None), "params", {})
        on_postgres = any(isinstance(v, str) and v == "postgresql" for v in params.values())
        if fixtures & MODEL_FIXTURES or any(name in source for name in MODEL_NAMES):
            item.add_marker(pytest.mark.models)
        if on_postgres or any(name in source for name in POSTGRES_NAMES):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def server() -> Iterator[ServerProcess]:
    srv = ServerProcess(
        {
            "PARLEY_CONFIG": str(ROOT / "tests" / "parley.test.toml"),
            "PARLEY_SERVER__DATABASE_URL": f"sqlite:///{ARTIFACTS / 'e2e.db'}",
            "PARLEY_SERVER__TOKEN_SECRET": TOKEN_SECRET,
            "PARLEY_TELEMETRY__ADMIN_KEY": ADMIN_KEY,
            "PARLEY_WEBRTC__STATS_INTERVAL_SECS": "2",
            # The suite creates hundreds of sessions from one address (the API fuzz test
            # one per example): no creation rate limit here (test_exposure_api tests it).
            "PARLEY_SERVER__SESSION_CREATE_RATE": "0",
            # Supervision across processes: a console in another process (the test's own,
            # test_e2e_handoff_processes) sees and takes over this server's sessions.
            "PARLEY_HANDOFF__REDIS_URL": REDIS_URL,
            "PARLEY_HANDOFF__SUPERVISOR_KEY": SUPERVISOR_KEY,
        },
        ARTIFACTS / "server.log",
        cwd=ROOT,
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
async def embedded_engines() -> AsyncIterator[Engines]:
    """The embedded engines (real models, real Piper workers), loaded once for every
    in-process server that needs them: loading takes tens of seconds on two cores."""
    from parley.config import Settings
    from parley.engines import load_engines

    engines = await load_engines(Settings())
    yield engines
    await engines.close()


@pytest.fixture
def frozen_heap() -> Iterator[None]:
    """For a test comparing two latencies measured in this process (server and clients
    share its event loop): the heap the suite has grown by then is frozen, as `parley
    serve` freezes its own after start-up. Late in the suite it holds ~600,000 objects
    (every earlier test's models, servers and leftovers); a full collection over them
    took ~200 ms and three came in a row: the one thing found that stops this loop long
    enough, in one measured turn and not the other, to fail the comparison as CI once
    did (a 0.42 s turn against 0.27 s)."""
    freeze_startup_heap()
    yield
    gc.unfreeze()


@pytest.fixture(scope="session")
def caller() -> Callable[..., np.ndarray]:
    return caller_speech


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * 16_000), dtype="<i2")


def cough(seconds: float = 0.25, seed: int = 1) -> np.ndarray:
    """A cough-like burst: loud band-limited noise with a fast attack and decay."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 16_000)
    noise = rng.standard_normal(n)
    # Crude low-pass (moving average) for the throaty colour of a cough.
    noise = np.convolve(noise, np.ones(6) / 6, mode="same")
    t = np.linspace(0, 1, n)
    envelope = np.minimum(1.0, t * 12) * np.exp(-3.5 * t)
    burst = noise / np.abs(noise).max() * envelope * 0.6
    return (burst * 32767).astype("<i2")


@pytest.fixture(scope="session")
def whisper_checker():  # type: ignore[no-untyped-def]
    """Standard (30 s window) Whisper in the test process, to read back agent audio."""
    from parley.config import STTSettings
    from parley.engines.stt_whisper import WhisperSTT

    stt = WhisperSTT(STTSettings(min_window_secs=30, cpu_threads=1))
    yield stt
    stt.close()


POSTGRES_ADMIN = os.environ.get(
    "PARLEY_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres:postgres@127.0.0.1:5432/postgres"
)


async def _create_postgres_database() -> str:
    name = f"parley_test_{uuid.uuid4().hex[:12]}"
    admin = Database(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
    async with admin.engine.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    await admin.close()
    return POSTGRES_ADMIN.rsplit("/", 1)[0] + f"/{name}"


async def _drop_postgres_database(url: str) -> None:
    admin = Database(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
    async with admin.engine.connect() as conn:
        name = url.rsplit("/", 1)[1]
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await admin.close()


@contextmanager
def postgres_database() -> Iterator[str]:
    """A throwaway PostgreSQL database (for tests that run a server process on it)."""
    url = asyncio.run(_create_postgres_database())
    try:
        yield url
    finally:
        asyncio.run(_drop_postgres_database(url))


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request, tmp_path) -> AsyncIterator[Store]:
    """A migrated, empty database of each kind; PostgreSQL gets a throwaway database."""
    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'parley.db'}")
        await db.migrate()
        yield Store(db)
        await db.close()
        return
    url = await _create_postgres_database()
    db = Database(url)
    try:
        await db.migrate()
        yield Store(db)
    finally:
        await db.close()
        await _drop_postgres_database(url)
