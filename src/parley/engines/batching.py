"""Cross-session batching: the calls that arrive while a model works go to it together.

Every session asks a shared model (the VAD for each window, Smart Turn at each pause) on
its own. A :class:`BatchingLane` parks each call; one drain task hands everything that
waits to the model's :class:`~parley.engines.lanes.InferenceLane` as one batch (one hop to
the thread and back, one inference), then the next lot that gathered meanwhile. Alone, a
call is a batch of one and waits for nothing. Under load a call waits for the batch in
front of it, not for each call in front of it one by one, and the model does the work of
many for less than many times the cost.

A caller that gives up (its session closed, its answer no longer read) leaves the queue;
once its batch runs, its share is computed and dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

from parley.engines.lanes import InferenceLane

I = TypeVar("I")  # noqa: E741 - the item type, beside R
R = TypeVar("R")


class BatchingLane(Generic[I, R]):
    def __init__(
        self,
        lane: InferenceLane,
        run_batch: Callable[[list[I]], list[R]],
        max_batch: int | None = None,
    ) -> None:
        """``run_batch`` runs in the lane's thread and returns one result per item, in
        order; ``max_batch`` caps a batch (the rest waits for the next one)."""
        self._lane = lane
        self._run_batch = run_batch
        self.max_batch = max_batch
        """May change while calls run (the next batch takes it)."""
        self._waiting: list[tuple[I, asyncio.Future[R]]] = []
        self._draining: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def run(self, item: I) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._waiting.append((item, future))
        if self._draining is None:
            self._draining = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        """Run what waits, in batches, until nothing does."""
        try:
            while self._waiting:
                # Let the calls of this event-loop turn join the batch first.
                await asyncio.sleep(0)
                live = [(item, f) for item, f in self._waiting if not f.done()]
                cut = len(live) if self.max_batch is None else self.max_batch
                batch, self._waiting = live[:cut], live[cut:]
                if not batch:
                    continue
                try:
                    results = await self._lane.run(self._run_batch, [item for item, _ in batch])
                except BaseException as exc:
                    for _, future in batch:
                        if future.done():
                            continue
                        if isinstance(exc, asyncio.CancelledError):
                            future.cancel()
                        else:
                            future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._draining = None
            # Stopped (the lane shut down, the loop closing): whoever still waits is
            # told so rather than left waiting for a drain that will not come.
            stranded, self._waiting = self._waiting, []
            for _, future in stranded:
                if not future.done():
                    future.cancel()
