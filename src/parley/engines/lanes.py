"""Inference lanes: where blocking model calls run, off the event loop, a few at a time.

Each engine owns one lane. A lane is a small thread pool whose size is the engine's
concurrency limit, so sessions queue for a model instead of thrashing two cores, and
one slow model never stalls another session's audio.

A call that outlives the lane's ``timeout`` raises TimeoutError to its caller (the thread
itself cannot be stopped and is logged as stuck); one slower than ``slow_secs`` is logged.
"""

from __future__ import annotations

import asyncio
import functools
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from parley.engines.urgent_first import BACKGROUND, URGENT, UrgentFirstExecutor
from parley.telemetry import get_logger

P = ParamSpec("P")
T = TypeVar("T")

log = get_logger(__name__)

_LANES: weakref.WeakSet[InferenceLane] = weakref.WeakSet()


def live_lanes() -> list[InferenceLane]:
    """Every lane of this process's engines (what the metrics gauges read)."""
    return sorted(_LANES, key=lambda lane: lane.name)


class InferenceLane:
    def __init__(
        self,
        name: str,
        concurrency: int = 1,
        *,
        timeout: float | None = None,
        slow_secs: float = 2.0,
        counts_as_load: bool = True,
        urgent_first: bool = False,
    ) -> None:
        self.name = name
        self.counts_as_load = counts_as_load
        """Whether a call here holds background work back (``engines/background.py``)."""
        self.concurrency = concurrency
        self.timeout = timeout
        self.slow_secs = slow_secs
        self._executor: Executor
        if urgent_first:
            if concurrency != 1:
                raise ValueError("an urgent-first lane has one worker")
            # run_in_background's calls wait behind every run call (urgent_first.py).
            self._executor = UrgentFirstExecutor(name)
        else:
            self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=name)
        self._pending = 0
        self._running = 0
        _LANES.add(self)

    @property
    def pending(self) -> int:
        """Calls queued or running."""
        return self._pending

    @property
    def running(self) -> int:
        """Calls a worker is running now."""
        return self._running

    def _call(self, fn: Callable[[], T]) -> T:
        # In the worker thread: += on an int attribute is atomic enough under the GIL for
        # a gauge, and the call is counted only while a worker actually runs it.
        self._running += 1
        try:
            return fn()
        finally:
            self._running -= 1

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._run(URGENT, functools.partial(fn, *args, **kwargs))

    async def run_in_background(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """As :meth:`run`, but on an ``urgent_first`` lane the call waits behind every
        call :meth:`run` queues, even those queued after it."""
        return await self._run(BACKGROUND, functools.partial(fn, *args, **kwargs))

    async def _run(self, rank: int, call: Callable[[], T]) -> T:
        if isinstance(self._executor, UrgentFirstExecutor):
            submitted = self._executor.submit_at(rank, self._call, call)
        else:
            submitted = self._executor.submit(self._call, call)
        self._pending += 1  # after submit: one refused (a shut-down lane) is never counted
        started = time.monotonic()
        future = asyncio.wrap_future(submitted)
        try:
            if self.timeout is None:
                return await future
            try:
                # Shielded so a timeout does not pretend to stop a running thread...
                return await asyncio.wait_for(asyncio.shield(future), self.timeout)
            except asyncio.CancelledError:
                # ...but a caller that gave up (a superseded draft, a closed session) must
                # not leave its call queued: it would occupy the lane for nothing. This
                # cancels it if it has not started (a running one cannot be stopped).
                future.cancel()
                raise
            except TimeoutError:
                ran = submitted.running() or submitted.done()
                future.cancel()  # still queued behind a stuck call: never run it late
                if rank == URGENT or ran:
                    log.error("inference call stuck", lane=self.name, seconds=self.timeout)
                raise
        finally:
            self._pending -= 1
            elapsed = time.monotonic() - started
            if elapsed > self.slow_secs:
                log.warning("slow inference call", lane=self.name, seconds=round(elapsed, 2))

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
