"""An executor of one worker thread that runs urgent calls before background ones.

A model that a session needs at a moment of the call (the words' end-of-turn verdict when
the caller stops) and may also use ahead of it (reading the words while the caller still
speaks) must never make the first wait for the second: a background call waits behind
every urgent one, queued or arriving later. A running call is never interrupted, so an
urgent one waits at most for the call in progress. Within a rank, calls run in order.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

T = TypeVar("T")

URGENT = 0
BACKGROUND = 1

_Queued = tuple[int, int, Future[Any], Callable[[], Any]]
"""(rank, order of arrival, its future, the call)."""


class UrgentFirstExecutor(Executor):
    def __init__(self, thread_name: str) -> None:
        self._thread_name = thread_name
        self._queue: list[_Queued] = []
        self._order = itertools.count()
        self._wakeup = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        return self.submit_at(URGENT, fn, *args, **kwargs)

    def submit_at(self, rank: int, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Queue ``fn(*args, **kwargs)`` behind every queued call of a lower ``rank``."""
        future: Future[T] = Future()
        call = functools.partial(fn, *args, **kwargs)
        with self._wakeup:
            if self._closed:
                raise RuntimeError("cannot schedule new calls after shutdown")
            item: _Queued = (rank, next(self._order), future, call)
            heapq.heappush(self._queue, item)
            if self._thread is None:
                # Daemon: a call stuck in native code must not keep the process from exiting
                # (the lane has already reported it as stuck).
                thread = threading.Thread(
                    target=self._work, name=f"{self._thread_name}_0", daemon=True
                )
                thread.start()
                self._thread = thread  # only once it runs: a failed start is tried again
            self._wakeup.notify()
        return future

    def _work(self) -> None:
        while True:
            with self._wakeup:
                while not self._queue and not self._closed:
                    self._wakeup.wait()
                if not self._queue:
                    return
                _, _, future, call = heapq.heappop(self._queue)
            if not future.set_running_or_notify_cancel():
                continue  # its caller gave up while it waited
            try:
                result = call()
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._wakeup:
            self._closed = True
            if cancel_futures:
                for _, _, future, _ in self._queue:
                    future.cancel()
                self._queue.clear()
            self._wakeup.notify_all()
            thread = self._thread
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join()
