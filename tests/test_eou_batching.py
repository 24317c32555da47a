"""Smart Turn scores the pauses of sessions that end at the same moment in one inference:
each turn's probability is the one it gets alone, and a caller that gives up leaves."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from parley.engines.turn_smart import MAX_BATCH, SmartTurn, batch_size
from parley.testing import caller_speech


@pytest.fixture(scope="module")
def smart_turn() -> SmartTurn:
    model = SmartTurn()
    yield model
    model.close()


def _turns() -> list[np.ndarray]:
    said = [
        ("Could I get the vegetable curry please", "en-us"),
        ("I'd like to move my booking to", "en-us+f3"),
        ("What time do you open tomorrow", "en-us"),
        ("Is it possible to", "en-us+f3"),
        ("Cancel my order", "en-us"),
        ("My account number is four two", "en-us+f3"),
    ]
    turns = []
    for text, voice in said:
        audio = caller_speech(text, voice=voice).astype(np.float32) / 32768
        turns.append(np.concatenate([audio, np.zeros(4_000, dtype=np.float32)]))
    return turns


@contextlib.contextmanager
def batches_run(smart_turn: SmartTurn) -> Iterator[list[list[np.ndarray]]]:
    """Every batch the model runs meanwhile, as it runs it."""
    batches: list[list[np.ndarray]] = []
    run_batch = smart_turn._batches._run_batch

    def recorded(batch: list[np.ndarray]) -> list[float]:
        batches.append(batch)
        return run_batch(batch)

    smart_turn._batches._run_batch = recorded
    try:
        yield batches
    finally:
        smart_turn._batches._run_batch = run_batch


def test_this_cpu_batches_only_where_a_batch_costs_less() -> None:
    assert batch_size(0.048, 0.049 * MAX_BATCH) == 1  # an Intel Xeon: no saving, only a wait
    assert batch_size(0.056, 0.045 * MAX_BATCH) == MAX_BATCH  # an AMD EPYC core
    assert batch_size(0.050, 0.95 * 0.050 * MAX_BATCH) == 1  # 5 % saved: not worth a wait


class TimedSession:
    """An onnxruntime session whose runs take ``secs(batch)`` (and say nothing)."""

    def __init__(self, secs: dict[int, float]) -> None:
        self.secs = secs

    def run(self, _outputs: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        time.sleep(self.secs[len(feeds["input_features"])])
        return [np.zeros((len(feeds["input_features"]), 1), dtype=np.float32)]


@pytest.mark.parametrize(
    ("alone", "together", "chosen"), [(0.02, 0.03, MAX_BATCH), (0.02, 0.04, 1)]
)
def test_the_model_times_its_own_batches(
    smart_turn: SmartTurn,
    monkeypatch: pytest.MonkeyPatch,
    alone: float,
    together: float,
    chosen: int,
) -> None:
    assert smart_turn._batches.max_batch == smart_turn.max_batch
    monkeypatch.setattr(smart_turn, "_session", TimedSession({1: alone, MAX_BATCH: together}))
    assert smart_turn._batch_size() == chosen


async def test_turns_scored_together_each_get_their_own_probability(
    smart_turn: SmartTurn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batched whatever this CPU chose: a turn's probability must not depend on which
    others share its inference."""
    monkeypatch.setattr(smart_turn._batches, "max_batch", MAX_BATCH)
    turns = _turns()
    alone = [await smart_turn.completion_probability(t) for t in turns]
    with batches_run(smart_turn) as batches:
        together = await asyncio.gather(*(smart_turn.completion_probability(t) for t in turns))
    sizes = [len(batch) for batch in batches]
    # Six at one moment: batches of at most MAX_BATCH, fewer calls than turns.
    assert sum(sizes) == len(turns) and max(sizes) <= MAX_BATCH and len(sizes) < len(turns)
    assert together == pytest.approx(alone, abs=1e-4)
    assert len({round(p, 3) for p in alone}) > 1  # the turns differ: a real comparison


async def test_a_turn_whose_caller_gave_up_is_not_scored(smart_turn: SmartTurn) -> None:
    turns = _turns()[:3]
    with batches_run(smart_turn) as batches:
        first = asyncio.ensure_future(smart_turn.completion_probability(turns[0]))
        await asyncio.sleep(0.001)  # the first is in the model now; the next two queue
        given_up = asyncio.ensure_future(smart_turn.completion_probability(turns[1]))
        kept = asyncio.ensure_future(smart_turn.completion_probability(turns[2]))
        await asyncio.sleep(0)
        given_up.cancel()
        await asyncio.gather(first, kept)
    scored = [audio.size for batch in batches for audio in batch]
    assert given_up.cancelled()
    assert turns[1].size not in scored and turns[2].size in scored


async def test_calls_left_waiting_when_the_drain_stops_are_cancelled_not_stranded() -> None:
    """Batches of one: the second and third calls wait behind the first. If the drain is
    stopped then (the lane shut down, the loop closing), they are cancelled, not left
    waiting forever for a drain that will not come."""
    import threading

    from parley.engines.batching import BatchingLane
    from parley.engines.lanes import InferenceLane

    release = threading.Event()

    def run_batch(items: list[int]) -> list[int]:
        release.wait(5)
        return items

    lane = InferenceLane("test-batching", 1)
    batches: BatchingLane[int, int] = BatchingLane(lane, run_batch, max_batch=1)
    calls = [asyncio.ensure_future(batches.run(n)) for n in range(3)]
    await asyncio.sleep(0.01)
    assert batches.waiting == 2
    drain = batches._draining
    assert drain is not None
    drain.cancel()
    release.set()
    await asyncio.wait(calls, timeout=2)  # a bound for a failing test, not a timing assumption
    assert all(c.cancelled() for c in calls)
    lane.shutdown()
