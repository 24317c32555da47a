"""The worker registry: which voice workers are alive, where, and how full — in Redis.

Each worker (``parley worker``) announces itself every ``heartbeat_secs``: its id, the
public URL clients reach it at, its capacity, its live sessions and whether it drains.
Every announcement is one Redis key that expires after ``expiry_secs``: a worker that
stops announcing (killed, partitioned, hung) is gone from the registry within its expiry,
with nothing to clean up. The control plane reads the registry and sends a new session to
the worker with the most free places.

Keys (``parley:fleet:`` prefix): ``worker:<id>`` → the announcement (JSON), with a TTL;
``session:<id>`` → the worker the session was dispatched to, for the session's lifetime.
Two control-plane requests that read the registry at the same moment may both choose a
worker with one place left; the worker's own admission control refuses the second one
when it connects (503 / close 4503, with Retry-After), so a full worker never takes more.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from parley.telemetry import get_logger

log = get_logger(__name__)

PREFIX = "parley:fleet:"


class RegistryUnavailable(Exception):
    """Redis cannot be reached: no worker can be chosen (the control plane answers 503)."""

    code = "registry_unavailable"
    retry_after_secs = 2


class FleetFull(Exception):
    """No worker has a free place (or every one drains): 503 + ``Retry-After``."""

    code = "fleet_full"

    def __init__(self, retry_after_secs: int) -> None:
        self.retry_after_secs = retry_after_secs
        super().__init__(
            f"every worker is at its capacity or draining; try again in {retry_after_secs} s"
        )


@dataclass(frozen=True)
class WorkerInfo:
    """One worker's announcement."""

    worker_id: str
    url: str
    """Its public base URL (``http://10.0.0.5:8000``): the WebSocket, WebRTC and phone
    URLs of a session dispatched there are made from it."""
    capacity: int
    live: int
    draining: bool = False
    announced_at: float = 0.0
    """Wall-clock time (``time.time()``) of the announcement."""

    @property
    def free(self) -> int:
        return 0 if self.draining else max(0, self.capacity - self.live)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> WorkerInfo:
        data = json.loads(raw)
        return cls(
            worker_id=str(data["worker_id"]),
            url=str(data["url"]),
            capacity=int(data["capacity"]),
            live=int(data["live"]),
            draining=bool(data.get("draining", False)),
            announced_at=float(data.get("announced_at", 0.0)),
        )


def freest(workers: list[WorkerInfo]) -> WorkerInfo | None:
    """The worker a new session goes to: the most free places; among equals the fewest
    live sessions (the least loaded machine), then the id (a stable order). None when no
    worker has a free place."""
    open_ = [w for w in workers if w.free > 0]
    if not open_:
        return None
    return min(open_, key=lambda w: (-w.free, w.live, w.worker_id))


@contextlib.contextmanager
def _reachable() -> Iterator[None]:
    """Redis's failures, as the one error the control plane answers (503)."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise RegistryUnavailable(f"cannot reach Redis: {type(exc).__name__}") from exc


class WorkerRegistry:
    """Announcements in and the live fleet out, over one Redis client."""

    def __init__(self, client: aioredis.Redis, *, expiry_secs: float = 3.0) -> None:
        self.redis = client
        self.expiry_ms = max(1, round(expiry_secs * 1000))

    @classmethod
    def from_url(cls, url: str, *, expiry_secs: float = 3.0) -> WorkerRegistry:
        # Short timeouts: a control plane waiting on a dead Redis would hold every
        # session request; it answers 503 instead.
        client = aioredis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        return cls(client, expiry_secs=expiry_secs)

    async def announce(self, info: WorkerInfo) -> None:
        with _reachable():
            await self.redis.set(
                PREFIX + "worker:" + info.worker_id, info.to_json(), px=self.expiry_ms
            )

    async def withdraw(self, worker_id: str) -> None:
        """The worker leaves at once (a clean shutdown), not at its expiry."""
        with _reachable():
            await self.redis.delete(PREFIX + "worker:" + worker_id)

    async def workers(self) -> list[WorkerInfo]:
        """Every worker whose announcement has not expired."""
        with _reachable():
            keys = [k async for k in self.redis.scan_iter(match=PREFIX + "worker:*", count=500)]
            raws = await self.redis.mget(keys) if keys else []
        found = []
        for raw in raws:
            if raw is None:
                continue  # expired between the scan and the read
            try:
                found.append(WorkerInfo.from_json(raw))
            except (ValueError, KeyError, TypeError):
                log.warning("unreadable worker announcement skipped")
        return sorted(found, key=lambda w: w.worker_id)

    async def choose(self) -> WorkerInfo | None:
        """The worker for a new session (see :func:`freest`); None when the fleet is full."""
        return freest(await self.workers())

    async def worker(self, worker_id: str) -> WorkerInfo | None:
        """That worker's announcement, if it is alive."""
        with _reachable():
            raw = await self.redis.get(PREFIX + "worker:" + worker_id)
        return None if raw is None else WorkerInfo.from_json(raw)

    async def assign(self, session_id: str, worker_id: str, ttl_secs: int) -> None:
        """Record that ``session_id`` is served by ``worker_id`` (for as long as the
        session may last): its reconnects go back there while that worker is alive."""
        with _reachable():
            await self.redis.set(PREFIX + "session:" + session_id, worker_id, ex=max(1, ttl_secs))

    async def assigned(self, session_id: str) -> str | None:
        """The worker ``session_id`` was last dispatched to (alive or not)."""
        with _reachable():
            raw = await self.redis.get(PREFIX + "session:" + session_id)
        return None if raw is None else raw.decode() if isinstance(raw, bytes) else str(raw)

    async def dispatch(self, session_id: str, ttl_secs: int, retry_after_secs: int) -> WorkerInfo:
        """The worker a connection of ``session_id`` goes to: the one it was dispatched to
        while that one is alive and not draining (its history is warm there, and a
        dropped connection takes its own place back), else the freest; recorded."""
        previous = await self.assigned(session_id)
        chosen = await self.worker(previous) if previous is not None else None
        if chosen is None or chosen.draining:
            chosen = await self.choose()
        if chosen is None:
            raise FleetFull(retry_after_secs)
        await self.assign(session_id, chosen.worker_id, ttl_secs)
        return chosen

    async def close(self) -> None:
        await self.redis.aclose()


class WorkerHeartbeat:
    """Announces this worker every ``interval`` from ``describe()`` (its admission state
    read afresh each time), and withdraws it when stopped. A failed announcement is logged
    and retried at the next beat: Redis coming back brings the worker back."""

    def __init__(
        self,
        registry: WorkerRegistry,
        describe: Callable[[], WorkerInfo],
        interval: float = 1.0,
    ) -> None:
        self.registry = registry
        self.describe = describe
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self.failures = 0

    async def beat(self) -> None:
        info = self.describe()
        info = WorkerInfo(**{**asdict(info), "announced_at": time.time()})
        try:
            await self.registry.announce(info)
        except RegistryUnavailable as exc:
            self.failures += 1
            if self.failures == 1 or self.failures % 30 == 0:
                log.warning("worker announcement failed", error=str(exc), failures=self.failures)
            return
        if self.failures:
            log.info("worker announced again", after_failures=self.failures)
        self.failures = 0

    async def _run(self) -> None:
        while True:
            await self.beat()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="worker-heartbeat")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(RegistryUnavailable):
            await self.registry.withdraw(self.describe().worker_id)
