"""Revised finals: the pure text and audio logic, the background work that runs a
revision only while the process is quiet, and the session's side — driven window by
window with scripted engines (as in test_voice_turn_logic), recorded in a real SQLite
store. Nothing here depends on wall-clock timing beyond bounds for a failing test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from parley.config import Settings
from parley.engines import EngineError, Engines, Transcript
from parley.engines.background import BackgroundSkipped, BackgroundWork
from parley.engines.base import Reviser
from parley.engines.lanes import InferenceLane
from parley.store import Database, Store
from parley.voice.recording import SessionRecorder
from parley.voice.revision import differs, joined_audio, split_by_segments, words
from parley.voice.session import VoiceSession
from parley.voice.turns import UserTurn
from test_voice_turn_logic import (
    WORDS,
    HeldEOU,
    LevelVAD,
    ScriptedLLM,
    ScriptedSTT,
    Sink,
    settle,
    until,
    window,
)

# ---- the pure part ----------------------------------------------------------------------


def test_words_compare_without_case_punctuation_or_the_spelling_of_small_numbers() -> None:
    assert words("Book a table for 2, at seven-thirty!") == [
        "book", "a", "table", "for", "two", "at", "seven", "thirty",
    ]  # fmt: skip
    assert not differs("Book a table for 2.", "book a table for two")
    assert differs("Book a table for two.", "Book a cable for two.")
    assert differs("Book a table.", "Book a table now.")


def test_a_word_cut_at_a_segment_boundary_is_whole_in_the_segment_it_began_in() -> None:
    finals = {1: "I want a ta", 2: "ble for two."}
    assert split_by_segments(finals, "I want a table for two.") == {
        1: "I want a table",
        2: "for two.",
    }
    # The other way round: the revision's word is the finals' second half.
    assert split_by_segments({1: "I want a", 2: "table four two."}, "I want a table for two.") == {
        1: "I want a",
        2: "table for two.",
    }


def test_words_the_finals_missed_go_with_the_word_before_them() -> None:
    assert split_by_segments({1: "hello", 2: "world"}, "Hello there, world!") == {
        1: "Hello there,",
        2: "world!",
    }
    assert split_by_segments({1: "", 2: "world"}, "Oh, world") == {1: "", 2: "Oh, world"}
    assert split_by_segments({3: ""}, "words heard only now") == {3: "words heard only now"}


def test_words_the_revision_dropped_leave_their_segment_empty() -> None:
    assert split_by_segments({1: "book a table", 2: "um"}, "Book a table.") == {
        1: "Book a table.",
        2: "",
    }


@dataclass
class Stretch:
    first_window: int
    audio: list[np.ndarray]


def test_joined_audio_takes_each_window_once_in_order() -> None:
    w = [np.full(4, float(i), dtype=np.float32) for i in range(8)]
    # The second stretch carried the first's last two windows (an overlap joined to it);
    # the third begins after a pause the turn's audio leaves out.
    later, carried, first = (
        Stretch(6, [w[6], w[7]]),
        Stretch(2, [w[2], w[3], w[4]]),
        Stretch(0, [w[0], w[1], w[2]]),
    )
    audio = joined_audio([later, carried, first])
    assert audio.dtype == np.float32
    assert list(audio[::4]) == [0, 1, 2, 3, 4, 6, 7]
    assert joined_audio([]).size == 0


# ---- background work ----------------------------------------------------------------------


class Load:
    """A switch standing for the process's live inference."""

    def __init__(self) -> None:
        self.busy = False

    def __call__(self) -> bool:
        return not self.busy


async def test_background_work_waits_for_the_process_to_be_quiet() -> None:
    load = Load()
    load.busy = True
    work = BackgroundWork(load, settle_secs=0.05)
    ran: list[str] = []

    async def job() -> str:
        ran.append("job")
        return "done"

    pending = asyncio.ensure_future(work.run(job, max_wait=5))
    await asyncio.sleep(0.2)
    assert ran == []  # live work under way: it waits
    load.busy = False
    assert await pending == "done"


async def test_background_work_is_skipped_when_the_process_never_quiets() -> None:
    load = Load()
    load.busy = True
    work = BackgroundWork(load, settle_secs=0.0)

    async def job() -> None:
        raise AssertionError("never run")

    with pytest.raises(BackgroundSkipped) as skipped:
        await work.run(job, max_wait=0.2)
    assert skipped.value.reason == "busy"
    assert work.waiting == 0 and work.skipped == 1


async def test_a_watched_session_holds_background_work_back_until_unwatched() -> None:
    work = BackgroundWork(lambda: True, settle_secs=0.0)
    speaking = True
    unwatch = work.watch(lambda: speaking)
    assert not work.quiet()
    speaking = False
    assert work.quiet()
    speaking = True
    unwatch()
    assert work.quiet()


async def test_background_work_waits_while_more_than_one_session_is_live() -> None:
    work = BackgroundWork(lambda: True, settle_secs=0.0)
    first = work.watch(lambda: False)
    assert work.quiet()  # one quiet session: its own revision may run
    second = work.watch(lambda: False)
    assert not work.quiet()  # two: either caller may speak during a job
    second()
    assert work.quiet()
    first()


async def test_an_inference_lane_in_use_holds_background_work_back() -> None:
    lane = InferenceLane("test-busy", 1)
    vad = InferenceLane("test-vad", 1, counts_as_load=False)
    work = BackgroundWork(settle_secs=0.0)
    release = asyncio.Event()
    loop = asyncio.get_running_loop()

    def blocking() -> None:
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(10)

    try:
        vad_call = asyncio.ensure_future(vad.run(blocking))
        await until(lambda: vad.pending == 1)
        assert work.quiet()  # the VAD's constant calls are not load
        busy_call = asyncio.ensure_future(lane.run(blocking))
        await until(lambda: lane.pending == 1)
        assert not work.quiet()
        release.set()
        await asyncio.gather(vad_call, busy_call)
        assert work.quiet()
    finally:
        lane.shutdown()
        vad.shutdown()


async def test_background_jobs_run_one_at_a_time_in_order_and_crowded_ones_are_dropped() -> None:
    work = BackgroundWork(lambda: True, max_queued=2, settle_secs=0.0)
    gate = asyncio.Event()
    running: list[int] = []
    order: list[int] = []

    def job(n: int) -> Any:
        async def run() -> int:
            running.append(n)
            assert len(running) == 1, running  # never two at once
            await gate.wait()
            order.append(n)
            running.remove(n)
            return n

        return run

    first = asyncio.ensure_future(work.run(job(1), max_wait=5))
    await until(lambda: running == [1])
    queued = [asyncio.ensure_future(work.run(job(n), max_wait=5)) for n in (2, 3, 4)]
    await settle()
    gate.set()
    results = await asyncio.gather(first, *queued, return_exceptions=True)
    assert results[0] == 1
    assert isinstance(results[1], BackgroundSkipped) and results[1].reason == "crowded"
    assert results[2:] == [3, 4]
    assert order == [1, 3, 4]


async def test_a_cancelled_waiting_job_leaves_the_queue_and_the_next_one_runs() -> None:
    load = Load()
    load.busy = True
    work = BackgroundWork(load, settle_secs=0.0)

    async def job() -> str:
        return "ran"

    gone = asyncio.ensure_future(work.run(job, max_wait=5))
    kept = asyncio.ensure_future(work.run(job, max_wait=5))
    await settle()
    gone.cancel()
    await settle()
    assert work.waiting == 1
    load.busy = False
    assert await kept == "ran"
    assert gone.cancelled()


# ---- the session's side -------------------------------------------------------------------

REVISED = {1: "no wait", 2: "the other day", 3: "hello dear", 4: "please", 5: "a table for"}
"""What the reviser hears by level: level 3's words differ from the live recognizer's."""


class ScriptedReviser:
    """Hears REVISED by level in the whole turn's audio; ``hold()`` parks the next call."""

    busy = False

    def __init__(self, vocabulary: dict[int, str] | None = None) -> None:
        self.vocabulary = vocabulary or REVISED
        self.heard: list[np.ndarray] = []
        self.live_when_called: list[bool] = []
        self.gate: asyncio.Event | None = None
        self.fail = False
        self.session: VoiceSession | None = None

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        self.heard.append(audio)
        if self.session is not None:
            self.live_when_called.append(self.session._live_now())
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise EngineError("the reviser fell over")
        levels: list[int] = []
        for value in np.round(np.abs(audio) * 100).astype(int):
            if value and value not in levels:
                levels.append(int(value))
        return Transcript(" ".join(self.vocabulary[v] for v in levels) + ".", 1.0)


class ShortTTS:
    """A tenth of a second of audio per sentence: the reply is over soon."""

    async def synthesize(self, text: str) -> Any:
        yield np.full(1_600, 3000, dtype="<i2")


class RevisionHarness:
    def __init__(
        self, tmp_path: Path, monkeypatch: Any, vad: dict[str, Any] | None = None, **stt: Any
    ) -> None:
        monkeypatch.chdir(tmp_path)
        monkeypatch.delenv("PARLEY_CONFIG", raising=False)
        self.settings = Settings(
            turn={"min_endpointing_delay": 0, "max_endpointing_delay": 0},
            stt={"partials": False, **stt},
            vad=vad or {},
            interruption={"min_duration": 0.2},
        )
        self.stt = ScriptedSTT()
        self.eou = HeldEOU()
        self.reviser = ScriptedReviser()
        self.sink = Sink()
        self.background = BackgroundWork(lambda: True, settle_secs=0.0)
        self.engines = Engines(
            stt=self.stt,
            llm=ScriptedLLM(),
            tts=ShortTTS(),
            vad=LevelVAD(),
            eou=self.eou,
            reviser=Reviser(self.reviser, "scripted", local=True),
            background=self.background,
        )
        self.db = Database(f"sqlite:///{tmp_path / 'revise.db'}")
        self.store = Store(self.db)

    async def start(self) -> None:
        await self.db.migrate()
        record = await self.store.create_session()
        self.session_id = record.id
        recorder = SessionRecorder(self.store, record.id)
        self.session = VoiceSession(
            self.engines, self.settings, self.sink, session_id=record.id, recorder=recorder
        )
        self.reviser.session = self.session
        await self.session.start()

    async def close(self) -> None:
        await self.session.close()
        await self.db.close()

    async def feed(self, level: int, windows: int) -> None:
        for _ in range(windows):
            await self.session._process_window(window(level))
        await settle()

    async def two_segment_turn(self) -> UserTurn:
        """ "hello there" | a pause inside the turn | "please", then the turn ends."""
        self.eou.hold()
        await self.feed(3, 10)
        await self.feed(0, 12)
        await self.feed(4, 10)
        await self.feed(0, 12)
        turn = self.session._turn
        assert turn is not None
        self.eou.release()
        await until(lambda: self.sink.of("turn.ended"))
        return turn

    def revisions(self) -> list[dict[str, Any]]:
        return self.sink.of("transcript.revised")

    async def timeline(self, stage: str) -> list[dict[str, Any]]:
        await self.session.close()  # every queued write done
        return [e.data for e in await self.store.timeline(self.session_id) if e.stage == stage]


@pytest.fixture
async def revising(tmp_path: Path, monkeypatch: Any) -> AsyncIterator[RevisionHarness]:
    h = RevisionHarness(tmp_path, monkeypatch)
    await h.start()
    yield h
    await h.close()


async def test_a_finished_turn_is_revised_after_its_reply_and_the_record_is_patched(
    revising: RevisionHarness,
) -> None:
    h = revising
    await h.two_segment_turn()
    assert h.sink.of("turn.ended")[0]["text"] == "hello there please"
    await until(lambda: h.revisions())
    # One window of the whole turn, heard once the reply was over: both segments'
    # words are in what the reviser said, and nothing live went on meanwhile.
    assert len(h.reviser.heard) == 1
    assert h.reviser.live_when_called == [False]
    assert h.sink.of("agent.text")  # the reply came first, on the finals
    first, second = (e["segment_id"] for e in h.sink.of("transcript.final"))
    assert {e["segment_id"]: (e["text"], e["previous_text"]) for e in h.revisions()} == {
        first: ("hello dear", "hello there"),
        second: ("please.", "please"),  # its words stand; its text is the revision's
    }
    assert h.revisions()[0] == {
        "type": "transcript.revised",
        "ts": h.revisions()[0]["ts"],
        "turn_id": 1,
        "segment_id": first,
        "text": "hello dear",
        "previous_text": "hello there",
        "turn_text": "hello dear please.",
        "recognizer": "scripted",
    }
    # Later turns see the corrected words.
    users = [m.content for m in h.session.history.messages if m.role == "user"]
    assert users == ["hello dear please."]
    (entry,) = await h.timeline("transcript.revision")
    assert entry["outcome"] == "revised" and entry["segment_ids"] == [first, second]
    assert entry["previous_text"] == "hello there please"
    assert entry["recognizer"] == "scripted" and entry["audio_secs"] > 0
    stored = {s.segment_id: (s.kind, s.text) for s in await h.store.segments(h.session_id)}
    assert stored == {first: ("revised", "hello dear"), second: ("revised", "please.")}
    (turn,) = await h.store.turns(h.session_id)
    assert turn.user_text == "hello dear please."


async def test_the_turns_audio_is_kept_in_memory_until_it_is_revised(
    revising: RevisionHarness,
) -> None:
    h = revising
    h.reviser.gate = asyncio.Event()
    turn = await h.two_segment_turn()
    assert len(turn.segments) == 2  # kept while the revision is to come
    await until(lambda: h.reviser.heard)
    # The reviser heard both segments (pre-roll and the silence that ended each one:
    # levels 0, 3 and 4), as one window, no window twice.
    (joined,) = h.reviser.heard
    levels = set(np.unique(np.round(np.abs(joined) * 100).astype(int)).tolist())
    assert levels == {0, 3, 4}
    held = {s.first_window + i for s in turn.segments.values() for i in range(len(s.audio))}
    assert sum(len(s.audio) for s in turn.segments.values()) > len(held)  # pre-roll shared
    assert joined.size == len(held) * 512
    h.reviser.gate.set()
    await until(lambda: h.revisions())
    await settle()
    assert turn.segments == {}  # let go


async def test_the_same_words_differently_written_change_nothing(
    tmp_path: Path, monkeypatch: Any
) -> None:
    h = RevisionHarness(tmp_path, monkeypatch)
    h.reviser.vocabulary = {3: "Hello, there", 4: "PLEASE"}
    await h.start()
    try:
        await h.two_segment_turn()
        await until(lambda: h.reviser.heard)
        (entry,) = await h.timeline("transcript.revision")
        assert entry["outcome"] == "unchanged"
        assert h.revisions() == []
        assert [m.content for m in h.session.history.messages if m.role == "user"] == [
            "hello there please"
        ]
    finally:
        await h.close()


async def test_a_failing_reviser_leaves_the_finals_and_tells_the_caller_nothing(
    revising: RevisionHarness,
) -> None:
    h = revising
    h.reviser.fail = True
    await h.two_segment_turn()
    await until(lambda: h.reviser.heard)
    (entry,) = await h.timeline("transcript.revision")
    assert entry == {"outcome": "failed", "recognizer": "scripted", "reason": "EngineError"}
    assert h.revisions() == [] and h.sink.of("error") == []


async def test_a_revision_pending_at_close_is_dropped_quietly(revising: RevisionHarness) -> None:
    h = revising
    h.reviser.gate = asyncio.Event()  # the revision is under way when the caller leaves
    await h.two_segment_turn()
    await until(lambda: h.reviser.heard)
    await h.session.close()
    assert h.revisions() == [] and h.sink.of("error") == []
    assert not h.session._tasks
    assert [s.kind for s in await h.store.segments(h.session_id)] == ["final", "final"]


async def test_a_turn_whose_reply_was_interrupted_is_revised_all_the_same(
    tmp_path: Path, monkeypatch: Any
) -> None:
    h = RevisionHarness(tmp_path, monkeypatch)
    h.engines.tts = LongTTS()
    await h.start()
    try:
        await h.two_segment_turn()
        await until(lambda: h.session.state == "speaking")
        await settle()
        assert h.reviser.heard == []  # never beside the reply
        assert h.session.interrupt()
        await until(lambda: h.revisions())
        assert h.revisions()[0]["turn_text"] == "hello dear please."
    finally:
        await h.close()


async def test_a_busy_process_skips_the_revision(tmp_path: Path, monkeypatch: Any) -> None:
    h = RevisionHarness(tmp_path, monkeypatch, revise_max_wait_secs=0.2)
    h.engines.background = BackgroundWork(lambda: False, settle_secs=0.0)
    await h.start()
    try:
        await h.two_segment_turn()
        await until(lambda: h.session.state == "listening" and not h.session._tasks)
        (entry,) = await h.timeline("transcript.revision")
        assert entry == {"outcome": "skipped", "recognizer": "scripted", "reason": "busy"}
        assert h.reviser.heard == []
    finally:
        await h.close()


async def test_a_turn_longer_than_the_bound_keeps_no_audio_and_is_not_revised(
    tmp_path: Path, monkeypatch: Any
) -> None:
    h = RevisionHarness(tmp_path, monkeypatch, revise_max_secs=0.5)
    await h.start()
    try:
        turn = await h.two_segment_turn()  # two segments of ~0.9 s each
        assert turn.segments == {} and not turn.revisable
        (entry,) = await h.timeline("transcript.revision")
        assert entry == {"outcome": "skipped", "recognizer": "scripted", "reason": "too_long"}
        assert h.reviser.heard == []
    finally:
        await h.close()


@pytest.mark.parametrize("early", [False, True])
async def test_the_live_recognizer_is_not_asked_again_about_audio_it_heard_whole(
    tmp_path: Path, monkeypatch: Any, early: bool
) -> None:
    """One segment whose final heard all of it: the same model on the same audio would
    say the same words. One whose final was early (at the first silence) has more."""
    vad = {} if early else {"early_final_secs": 1.0}  # later than the segment's end
    h = RevisionHarness(tmp_path, monkeypatch, vad=vad)
    h.engines.reviser = Reviser(h.reviser, "live", local=True)
    await h.start()
    try:
        await h.feed(3, 10)
        seg = h.session._segment
        assert seg is not None
        for _ in range(12):  # window by window: the early final starts at once
            await h.feed(0, 1)
        await until(lambda: h.sink.of("turn.ended"))
        await until(lambda: h.session.state == "listening" and not h.session._tasks)
        assert (seg.heard_windows < len(seg.audio)) is early
        entries = await h.timeline("transcript.revision")
        if early:
            assert entries[0]["outcome"] == "revised" and len(h.reviser.heard) == 1
        else:
            assert entries == [
                {"outcome": "skipped", "recognizer": "live", "reason": "nothing_new"}
            ]
            assert h.reviser.heard == []
    finally:
        await h.close()


class LongTTS:
    async def synthesize(self, text: str) -> Any:
        yield np.full(5 * 16_000, 3000, dtype="<i2")


def test_the_scripted_words_are_the_live_ones_but_one() -> None:
    """The tests above rely on it: only level 3's words differ."""
    assert {k for k in WORDS if WORDS[k] != REVISED[k]} == {3}


async def test_a_supervisor_reads_the_revised_words_of_the_turn(revising: RevisionHarness) -> None:
    from parley.transports.supervision import SupervisionHub

    h = revising
    hub = SupervisionHub()
    watched = hub.attach(h.session, "websocket")
    try:
        await h.two_segment_turn()
        await until(lambda: h.revisions())
        for ev in h.sink.events:  # what the transport's sink shows the hub
            watched.event(ev)
        callers = [line for line in watched.transcript if line["role"] == "caller"]
        assert callers == [
            {"role": "caller", "text": "hello dear please.", "turn_id": 1, "revised": True}
        ]
        assert watched.summary()["latest_user"] == "hello dear please."
    finally:
        hub.detach(watched)


async def test_the_reviser_is_the_named_one_else_the_live_recognizer_when_it_runs_here() -> None:
    from parley.engines.chains import build_reviser
    from parley.engines.stt_openai import OpenAICompatibleSTT

    class Here:
        device = "cpu"

    class Elsewhere:
        device = "remote"

    here = Here()
    on = Settings(stt={"revise": True})
    assert await build_reviser(on, here) == Reviser(here, "live", True)
    # A remote live recognizer is not asked twice (it may be paid by the request).
    assert await build_reviser(on, Elsewhere()) is None
    assert await build_reviser(Settings(stt={"revise": False}), here) is None
    named = Settings(
        stt={
            "revise": True,
            "reviser": {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "name": "big"},
        }
    )
    with pytest.raises(ValueError, match="must not be 'live'"):
        Settings(stt={"reviser": {"provider": "openai", "name": "live"}})  # a clear refusal
    reviser = await build_reviser(named, here)
    assert reviser is not None and reviser.name == "big" and not reviser.local
    assert isinstance(reviser.stt, OpenAICompatibleSTT)
    await reviser.stt.aclose()
    # A chain: its primary decides. An embedded fallback does not revise a remote
    # primary's (better) words; an embedded primary revises, never through the chain.
    from parley.engine_settings import BreakerSettings
    from parley.engines.breaker import CircuitBreaker
    from parley.engines.fallback import FallbackSTT, Provider

    async def probe() -> None:
        return None

    def chain(*engines: Any) -> FallbackSTT:
        return FallbackSTT(
            "stt",
            [
                Provider(f"p{i}", e, CircuitBreaker("stt", f"p{i}", BreakerSettings(), probe), 1.0)
                for i, e in enumerate(engines)
            ],
        )

    assert await build_reviser(on, chain(Elsewhere(), here)) is None
    assert await build_reviser(on, chain(here, Elsewhere())) == Reviser(here, "live", True)
