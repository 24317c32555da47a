"""The worker registry on the real Redis of the test machine (127.0.0.1:6379, database 7,
emptied before each test): announcements, expiry, the choice of worker, Redis down."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from parley.testing import RedisServer
from parley.transports.worker_registry import (
    FleetFull,
    RegistryUnavailable,
    WorkerHeartbeat,
    WorkerInfo,
    WorkerRegistry,
    freest,
)

pytestmark = pytest.mark.redis

REGISTRY_URL = "redis://127.0.0.1:6379/7"


@pytest.fixture
async def registry() -> AsyncIterator[WorkerRegistry]:
    client = aioredis.from_url(REGISTRY_URL)
    await client.flushdb()
    reg = WorkerRegistry(client, expiry_secs=0.5)
    yield reg
    await client.flushdb()
    await reg.close()


def worker(name: str, capacity: int, live: int, draining: bool = False) -> WorkerInfo:
    return WorkerInfo(name, f"http://{name}.local:8000", capacity, live, draining)


def test_the_freest_worker_is_chosen_and_a_full_or_draining_one_never() -> None:
    a, b, c = worker("a", 4, 3), worker("b", 4, 1), worker("c", 8, 6)
    assert freest([a, b, c]) == b  # 3 free against 1 and 2
    assert freest([worker("a", 4, 2), worker("b", 6, 4)]).worker_id == "a"  # equal: fewer live
    assert freest([worker("a", 2, 2), worker("b", 9, 0, draining=True)]) is None
    assert freest([]) is None


async def test_announced_workers_are_listed_and_expire_without_heartbeats(
    registry: WorkerRegistry,
) -> None:
    await registry.announce(worker("w1", 4, 1))
    await registry.announce(worker("w2", 4, 3))
    assert [w.worker_id for w in await registry.workers()] == ["w1", "w2"]
    assert (await registry.choose()).worker_id == "w1"
    # w1 stops announcing (killed); w2 goes on.
    for _ in range(4):
        await asyncio.sleep(0.2)
        await registry.announce(worker("w2", 4, 3))
    assert [w.worker_id for w in await registry.workers()] == ["w2"]
    assert (await registry.choose()).worker_id == "w2"
    await registry.withdraw("w2")
    assert await registry.choose() is None


async def test_a_heartbeat_follows_the_workers_state_and_withdraws_it_on_stop(
    registry: WorkerRegistry,
) -> None:
    state = {"live": 0, "draining": False}
    beat = WorkerHeartbeat(
        registry,
        lambda: worker("w1", 2, state["live"], state["draining"]),
        interval=0.05,
    )
    beat.start()
    try:
        await asyncio.sleep(0.15)
        (w,) = await registry.workers()
        assert (w.live, w.free) == (0, 2) and w.announced_at > 0
        state["live"] = 2
        await asyncio.sleep(0.15)
        assert await registry.choose() is None  # full
        state.update(live=0, draining=True)
        await asyncio.sleep(0.15)
        (w,) = await registry.workers()
        assert w.draining and w.free == 0
    finally:
        await beat.stop()
    assert await registry.workers() == []


async def test_an_unreadable_announcement_is_skipped(registry: WorkerRegistry) -> None:
    await registry.redis.set("parley:fleet:worker:bad", b"{not json", px=5000)
    await registry.announce(worker("ok", 1, 0))
    assert [w.worker_id for w in await registry.workers()] == ["ok"]


async def test_redis_down_is_a_clear_error_and_the_heartbeat_recovers_when_it_returns() -> None:
    redis_server = RedisServer()
    registry = WorkerRegistry.from_url(redis_server.url)
    beat = WorkerHeartbeat(registry, lambda: worker("w1", 1, 0))
    try:
        await beat.beat()
        assert [w.worker_id for w in await registry.workers()] == ["w1"]
        redis_server.stop()
        with pytest.raises(RegistryUnavailable, match="cannot reach Redis"):
            await registry.choose()
        with pytest.raises(RegistryUnavailable):
            await registry.announce(worker("w1", 1, 0))
        await beat.beat()  # logged and counted, not raised: the next beat tries again
        assert beat.failures == 1
        redis_server.start()  # back, empty (no persistence)
        assert await registry.choose() is None
        await beat.beat()
        assert beat.failures == 0
        assert [w.worker_id for w in await registry.workers()] == ["w1"]
    finally:
        redis_server.stop()
        await registry.close()


async def test_a_session_goes_back_to_its_worker_while_it_lives(registry: WorkerRegistry) -> None:
    await registry.announce(worker("a", 2, 0))
    await registry.announce(worker("b", 2, 1))
    assert (await registry.dispatch("s1", 60, 2)).worker_id == "a"
    await registry.announce(worker("a", 2, 2))  # full now: its own session still goes back
    assert (await registry.dispatch("s1", 60, 2)).worker_id == "a"
    assert (await registry.dispatch("s2", 60, 2)).worker_id == "b"
    await registry.announce(worker("a", 2, 1, draining=True))  # draining: s1 moves on
    assert (await registry.dispatch("s1", 60, 2)).worker_id == "b"
    assert await registry.assigned("s1") == "b"
    await registry.announce(worker("b", 2, 2))
    with pytest.raises(FleetFull) as full:
        await registry.dispatch("s3", 60, 7)
    assert full.value.retry_after_secs == 7 and full.value.code == "fleet_full"
