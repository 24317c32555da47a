"""Background inference: work that may wait (re-decoding a finished turn), run one job
at a time and only while the process's live work is quiet.

Live work always comes first. A job starts only once the process has been quiet for
``settle_secs``: no inference call queued or running on any lane that counts as load
(the VAD's lane does not: it runs on every 32 ms window of every connection, speech or
silence, ~1 ms a call), nothing else busy that the loader names (Piper synthesizing), and
no watched source (a voice session hearing the caller or speaking to them) active. A
job that has not started after its ``max_wait`` is skipped, and so is the oldest waiting
job when more than ``max_queued`` wait: under load, background work is dropped rather
than piled up. A running job cannot be stopped (a model call runs to its end), so it
is bounded by its own engine's timeout — and so no job starts while more than
``max_sources`` watched sources (sessions) are live: with several callers, one of them
often starts speaking during a job and waits its length (with revisions between turns,
`make bench`'s 2–4 session steps were 40–110 ms slower at p50 on 2 cores).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeVar

from parley.engines.lanes import live_lanes

T = TypeVar("T")

POLL_SECS = 0.05
"""How often a waiting job looks at the process's load (a handful of attribute reads)."""


def lanes_quiet() -> bool:
    """No call queued or running on any inference lane of this process that counts as load."""
    return all(lane.pending == 0 for lane in live_lanes() if lane.counts_as_load)


class BackgroundSkipped(Exception):
    """A background job was dropped before it started; ``reason`` says why: ``busy``
    (the process was never quiet for long enough) or ``crowded`` (newer jobs pushed it
    out of a full queue)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"background job skipped: {reason}")
        self.reason = reason


class BackgroundWork:
    def __init__(
        self,
        quiet: Callable[[], bool] = lanes_quiet,
        *,
        max_queued: int = 8,
        settle_secs: float = 0.2,
        max_sources: int = 1,
    ) -> None:
        self._quiet = quiet
        self.max_queued = max_queued
        self.max_sources = max_sources
        self.settle_secs = settle_secs
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._running = False
        self._runner: asyncio.Task[None] | None = None
        self._sources: dict[int, Callable[[], bool]] = {}
        self._ids = itertools.count()
        self.skipped = 0
        """Jobs dropped so far (busy or crowded out)."""

    def watch(self, active: Callable[[], bool]) -> Callable[[], None]:
        """Hold background work back while ``active()`` is true (a session hearing or
        answering its caller); returns the call that stops watching it."""
        key = next(self._ids)
        self._sources[key] = active

        def unwatch() -> None:
            self._sources.pop(key, None)

        return unwatch

    def quiet(self) -> bool:
        """Nothing live is under way in this process, and few sessions could start it."""
        sources = list(self._sources.values())
        if len(sources) > self.max_sources:
            return False
        return self._quiet() and not any(active() for active in sources)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def run(self, job: Callable[[], Awaitable[T]], *, max_wait: float) -> T:
        """Run ``job()`` once the process is quiet and no other background job runs;
        raises :class:`BackgroundSkipped` if it could not start within ``max_wait``
        seconds or was crowded out of the queue."""
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        while len(self._waiting) > self.max_queued:
            oldest = self._waiting.popleft()
            if not oldest.done():
                oldest.set_exception(BackgroundSkipped("crowded"))
        self._wake()
        try:
            await asyncio.wait_for(asyncio.shield(turn), max_wait)
        except BackgroundSkipped:
            self.skipped += 1  # crowded out (already off the queue)
            raise
        except BaseException as exc:  # waited too long, or the caller gave up
            self._abandon(turn)
            if isinstance(exc, TimeoutError):
                self.skipped += 1
                raise BackgroundSkipped("busy") from None
            raise
        try:
            return await job()
        finally:
            self._finished()

    def _abandon(self, turn: asyncio.Future[None]) -> None:
        if turn.done() and not turn.cancelled() and turn.exception() is None:
            self._finished()  # its turn came just as its caller left: pass it on
            return
        if turn in self._waiting:
            self._waiting.remove(turn)
        turn.cancel()

    def _finished(self) -> None:
        self._running = False
        self._wake()

    def _wake(self) -> None:
        runner = self._runner
        idle = (
            runner is None or runner.done() or runner.get_loop() is not asyncio.get_running_loop()
        )
        if self._waiting and idle:
            self._runner = asyncio.create_task(self._dispatch(), name="background-work")

    async def _dispatch(self) -> None:
        """Give the next waiting job its turn once nothing runs and the process has been
        quiet for ``settle_secs``; ends when nobody waits."""
        loop = asyncio.get_running_loop()
        quiet_since: float | None = None
        while self._waiting:
            if self._running:
                quiet_since = None
            elif not self.quiet():
                quiet_since = None
            else:
                now = loop.time()
                quiet_since = now if quiet_since is None else quiet_since
                if now - quiet_since >= self.settle_secs:
                    turn = self._waiting.popleft()
                    if not turn.done():
                        self._running = True
                        turn.set_result(None)
                    continue
            await asyncio.sleep(POLL_SECS)
