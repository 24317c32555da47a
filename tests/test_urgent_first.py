"""The urgent-first executor and lane: a background call (a read-ahead of a caller's words)
never delays an urgent one (a verdict a caller waits for), even one queued after it."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from parley.engines.lanes import InferenceLane
from parley.engines.urgent_first import BACKGROUND, URGENT, UrgentFirstExecutor


def test_background_calls_wait_behind_urgent_ones_queued_later() -> None:
    executor = UrgentFirstExecutor("test-lane")
    busy = threading.Event()
    ran: list[str] = []
    try:
        first = executor.submit(busy.wait, 5)  # holds the one worker
        later = [
            executor.submit_at(BACKGROUND, ran.append, "read 1"),
            executor.submit_at(BACKGROUND, ran.append, "read 2"),
            executor.submit_at(URGENT, ran.append, "verdict 1"),
            executor.submit(ran.append, "verdict 2"),
        ]
        busy.set()
        for future in [first, *later]:
            future.result(timeout=5)
        assert ran == ["verdict 1", "verdict 2", "read 1", "read 2"]
    finally:
        executor.shutdown()


def test_a_call_cancelled_while_queued_never_runs_and_errors_reach_the_caller() -> None:
    executor = UrgentFirstExecutor("test-lane")
    busy = threading.Event()
    ran: list[str] = []
    try:
        first = executor.submit(busy.wait, 5)
        dropped = executor.submit_at(BACKGROUND, ran.append, "stale read")
        failing = executor.submit(lambda: 1 / 0)
        assert dropped.cancel()
        busy.set()
        first.result(timeout=5)
        with pytest.raises(ZeroDivisionError):
            failing.result(timeout=5)
    finally:
        executor.shutdown(wait=True)  # the queue is empty once its worker has stopped
    assert ran == []


def test_shutdown_cancels_what_is_queued_and_refuses_new_calls() -> None:
    executor = UrgentFirstExecutor("test-lane")
    busy = threading.Event()
    first = executor.submit(busy.wait, 5)
    while not first.running():
        time.sleep(0.001)
    queued = executor.submit(lambda: "never")
    executor.shutdown(wait=False, cancel_futures=True)
    assert queued.cancelled()
    busy.set()
    assert first.result(timeout=5) is True
    with pytest.raises(RuntimeError):
        executor.submit(lambda: None)


async def test_an_urgent_first_lane_runs_its_verdicts_before_its_read_aheads() -> None:
    lane = InferenceLane("test-urgent", 1, timeout=5.0, urgent_first=True)
    busy = threading.Event()
    ran: list[str] = []
    try:
        holding = asyncio.ensure_future(lane.run(busy.wait, 5))
        await asyncio.sleep(0.05)
        reads = [
            asyncio.ensure_future(lane.run_in_background(ran.append, f"read {n}")) for n in (1, 2)
        ]
        await asyncio.sleep(0.01)
        stale = reads[0]
        stale.cancel()  # a newer partial replaced it: dropped from the queue
        verdict = asyncio.ensure_future(lane.run(ran.append, "verdict"))
        await asyncio.sleep(0.01)
        assert lane.pending == 3  # holding, read 2, verdict
        busy.set()
        await asyncio.gather(holding, reads[1], verdict)
        assert ran == ["verdict", "read 2"]
        assert lane.pending == 0
    finally:
        lane.shutdown()


async def test_an_ordinary_lane_runs_background_calls_like_any_other() -> None:
    lane = InferenceLane("test-plain", 2)
    try:
        assert await lane.run_in_background(sum, [1, 2, 3]) == 6
    finally:
        lane.shutdown()


def test_an_urgent_first_lane_has_one_worker() -> None:
    with pytest.raises(ValueError):
        InferenceLane("test-two", 2, urgent_first=True)
