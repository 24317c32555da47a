"""What the fleet test files share: a fleet's environment and waiting on its registry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from conftest import ROOT, TOKEN_SECRET
from parley.transports.worker_registry import RegistryUnavailable, WorkerInfo, WorkerRegistry

EXPIRY_SECS = 2.0


def fleet_env(database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    """Every process of a test fleet: one database, one Redis, one token secret, fast
    heartbeats; ``extra`` PARLEY_* variables on top."""
    return {
        "PARLEY_CONFIG": str(ROOT / "tests" / "parley.test.toml"),
        "PARLEY_SERVER__DATABASE_URL": database_url,
        "PARLEY_SERVER__TOKEN_SECRET": TOKEN_SECRET,
        "PARLEY_SERVER__SESSION_CREATE_RATE": "0",
        "PARLEY_FLEET__REDIS_URL": redis_url,
        "PARLEY_FLEET__HEARTBEAT_SECS": "0.5",
        "PARLEY_FLEET__EXPIRY_SECS": str(EXPIRY_SECS),
        **extra,
    }


async def registry_until(
    registry: WorkerRegistry,
    check: Callable[[dict[str, WorkerInfo]], bool],
    timeout: float = 10.0,
) -> dict[str, WorkerInfo]:
    """The registry, by worker id, once ``check`` holds for it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = {w.worker_id: w for w in await registry.workers()}
        except RegistryUnavailable:  # Redis coming back
            found = {}
        if check(found):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"the registry never matched: {found}")
        await asyncio.sleep(0.1)
