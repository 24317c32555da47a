"""The voice loop's listening, barge-in and reply bookkeeping, driven window by window with
scripted engines: which speech joins which turn, which tasks are cancelled, what the
client is told. Nothing here depends on wall-clock timing: the VAD is fed windows
directly, endpointing delays are zero, and every model call the test needs to hold is
held on an event the test releases."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np
import pytest

from parley.config import Settings
from parley.engines import ChatMessage, EngineError, Engines, Transcript
from parley.voice.session import VoiceSession

WINDOW = 512
WORDS = {1: "no wait", 2: "the other day", 3: "hello there", 4: "please", 5: "a table for"}
"""Each stretch of test speech is a constant level; the scripted STT hears these words."""


def window(level: int) -> np.ndarray:
    """One 32 ms VAD window: silence for level 0, else speech the STT reads as WORDS[level]."""
    return np.full(WINDOW, level / 100, dtype=np.float32)


class LevelVAD:
    window_samples = WINDOW

    def stream(self) -> LevelVAD:
        return self

    async def probability(self, audio: np.ndarray) -> float:
        return 1.0 if float(np.abs(audio).max()) > 0.005 else 0.0


class Gated:
    """``hold()`` parks every later call until ``release()``; counts the calls cancelled
    while parked."""

    def __init__(self) -> None:
        self.gate: asyncio.Event | None = None
        self.cancelled = 0

    def hold(self) -> None:
        self.gate = asyncio.Event()

    def release(self) -> None:
        if self.gate is not None:
            self.gate.set()
        self.gate = None

    async def passing(self) -> None:
        try:
            if self.gate is not None:
                await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


class ScriptedSTT(Gated):
    """Hears WORDS by level."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    @property
    def busy(self) -> bool:
        return False

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        self.calls += 1
        await self.passing()
        levels: list[int] = []
        for value in np.round(np.abs(audio) * 100).astype(int):
            if value and value not in levels:
                levels.append(int(value))
        return Transcript(" ".join(WORDS[v] for v in levels), 1.0)


class HeldEOU:
    """Says "complete"; ``hold()`` keeps the turn from being confirmed until ``release()``.
    ``heard``: the audio it was asked about, in order."""

    def __init__(self) -> None:
        self.gate: asyncio.Event | None = None
        self.heard: list[np.ndarray] = []

    def hold(self) -> None:
        self.gate = asyncio.Event()

    def release(self) -> None:
        if self.gate is not None:
            self.gate.set()
        self.gate = None

    async def completion_probability(self, audio: np.ndarray) -> float:
        self.heard.append(audio)
        if self.gate is not None:
            await self.gate.wait()
        return 1.0


class HeldTextEOU(Gated):
    """The words' end-of-turn model, saying ``p``: what it was asked, in order."""

    def __init__(self, p: float = 0.9) -> None:
        super().__init__()
        self.p = p
        self.asked: list[str] = []

    async def completion_probability(self, text: str) -> float:
        self.asked.append(text)
        await self.passing()
        return self.p


class ScriptedLLM:
    def __init__(self, fail_first: bool = False) -> None:
        self.fail_first = fail_first
        self.calls = 0

    async def stream_chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[str]:
        self.calls += 1
        if self.fail_first and self.calls == 1:
            raise EngineError("model crashed")
        yield "Sure, here is a long answer."

    async def prefill(self, messages: Sequence[ChatMessage]) -> None:
        return None


class LongTTS:
    """Five seconds of audio per sentence: a reply that is still playing when the test
    talks over it."""

    async def synthesize(self, text: str) -> AsyncIterator[np.ndarray]:
        yield np.full(5 * 16_000, 3000, dtype="<i2")


class Sink:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.audio_bytes = 0

    def send_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def send_audio(self, pcm: bytes) -> None:
        self.audio_bytes += len(pcm)

    def clear_audio(self) -> None:
        pass

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


async def settle(rounds: int = 50) -> None:
    """Let every ready task run (no timers involved: all delays are zero)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def until(predicate: Any, timeout: float = 5.0) -> None:
    """A bound for a failing test, not a timing assumption: each step is event-driven."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


class Harness:
    def __init__(self, monkeypatch: Any, tmp_path: Any, **engine_kw: Any) -> None:
        monkeypatch.chdir(tmp_path)  # no ./parley.toml: the defaults (no greeting)
        monkeypatch.delenv("PARLEY_CONFIG", raising=False)
        self.settings = Settings(
            turn={"min_endpointing_delay": 0, "max_endpointing_delay": 0},
            stt={"partials": False},
            interruption={"min_duration": 0.2},
        )
        self.stt = ScriptedSTT()
        self.eou = HeldEOU()
        self.eou_text = HeldTextEOU()
        self.llm = engine_kw.get("llm", ScriptedLLM())
        self.sink = Sink()
        engines = Engines(
            stt=self.stt,
            llm=self.llm,
            tts=engine_kw.get("tts", LongTTS()),
            vad=LevelVAD(),
            eou=self.eou,
            eou_text=engine_kw.get("eou_text"),
        )
        self.session = VoiceSession(engines, self.settings, self.sink)

    async def feed(self, level: int, windows: int) -> None:
        for _ in range(windows):
            await self.session._process_window(window(level))
        await settle()

    async def speak(self, level: int, windows: int = 10) -> None:
        """Speech then enough silence for the VAD to end the segment (stop_secs) and to
        keep it out of the next segment's pre-roll."""
        await self.feed(level, windows)
        await self.feed(0, 12)

    async def agent_speaking(self) -> None:
        """The user asks something; the agent is answering (confirmed, playing)."""
        await self.speak(3)
        await until(lambda: self.session.state == "speaking")


@pytest.fixture
async def harness(monkeypatch: Any, tmp_path: Any) -> AsyncIterator[Harness]:
    h = Harness(monkeypatch, tmp_path)
    await h.session.start()
    yield h
    await h.session.close()


async def test_every_overlapping_segment_joins_the_turn_after_a_barge_in(harness: Harness) -> None:
    """Regression: only the segment that triggered a barge-in joined the new turn; speech
    that began (over the agent) while its check ran was dropped as a backchannel."""
    h = harness
    await h.agent_speaking()
    h.stt.hold()  # the barge-in check of the first stretch is still running...
    await h.speak(1)  # "no wait" (long enough to be checked), then a pause
    await h.feed(2, 4)  # ...when the user goes on: "the other day"
    h.stt.release()
    await until(lambda: h.sink.of("turn.interrupted"))
    await h.feed(2, 4)
    await h.feed(0, 12)
    await until(lambda: len(h.sink.of("turn.ended")) == 2)
    ended = h.sink.of("turn.ended")[1]
    assert ended["turn_id"] == 2
    assert ended["text"] == "no wait the other day"
    # The reply to the user's second turn is not itself interrupted by their own words.
    assert len(h.sink.of("turn.interrupted")) == 1


@pytest.mark.parametrize(("windows", "interrupts"), [(9, False), (14, True)])
async def test_a_short_sound_over_the_agent_never_interrupts_whatever_its_words(
    monkeypatch: Any, tmp_path: Any, windows: int, interrupts: bool
) -> None:
    """Regression (a fresh clone's `make test`: a 0.3 s "hm" stopped the agent, Whisper
    heard "Take it."): the segmenter counts the silence after a sound as speech until it
    ends the segment, so a 0.29 s sound lasted past ``min_duration`` (0.4 s) for barge-in
    and its invented words were believed. The silence after the sound no longer counts."""
    h = Harness(monkeypatch, tmp_path)
    h.settings.interruption.min_duration = 0.4
    h.settings.interruption.first_check_secs = 0.0
    await h.session.start()
    try:
        await h.agent_speaking()
        await h.speak(1, windows)  # words the STT reads as "no wait"; 9 windows: 0.29 s
        await until(lambda: not h.session._overlaps)  # judged whole once it stopped
        cut = h.sink.of("turn.interrupted")
        assert bool(cut) is interrupts, cut
        if not interrupts:
            assert h.session.state == "speaking"
    finally:
        await h.session.close()


@pytest.mark.parametrize(("pause", "joined"), [(6, True), (25, False)])
async def test_short_stretches_of_one_utterance_over_the_agent_are_judged_and_kept_whole(
    monkeypatch: Any, tmp_path: Any, pause: int, joined: bool
) -> None:
    """Regression (CI: "Wait, | stop, | I have another question" became the turn "I have
    another question"): each stretch between the caller's comma pauses was shorter than
    ``min_duration``, so "Wait" and "stop" were each let go as too short and only the
    last stretch interrupted and became the turn. Stretches a short pause apart (here
    0.19 s) are one utterance; a long pause (0.8 s) still separates them."""
    h = Harness(monkeypatch, tmp_path)
    h.settings.interruption.min_duration = 0.4
    await h.session.start()
    try:
        await h.agent_speaking()
        for level in (1, 4):  # "no wait", "please": 0.29 s each, a pause after each
            await h.feed(level, 9)
            await h.feed(0, pause)
            await until(lambda: not h.session._overlaps)
        if not joined:
            assert not h.sink.of("turn.interrupted")
            await h.feed(2, 14)  # "the other day", long enough on its own
            await h.feed(0, 12)
        await until(lambda: len(h.sink.of("turn.ended")) == 2)
        (cut,) = h.sink.of("turn.interrupted")
        expected = "no wait please" if joined else "the other day"
        assert cut["caller_text"] == expected
        assert h.sink.of("turn.ended")[1]["text"] == expected
        kinds = [e["kind"] for e in h.sink.of("overlap.ignored")]
        assert kinds == (["short"] if joined else ["short", "short"])
    finally:
        await h.session.close()


async def test_a_new_endpointing_decision_cancels_the_old_one(harness: Harness) -> None:
    """Regression: a segment that ended after another replaced the endpointing task
    without cancelling it, so the turn could be confirmed (and stored) twice."""
    h = harness
    h.eou.hold()
    await h.speak(3)
    first = h.session._endpoint
    assert first is not None and h.session._turn is not None
    # Another segment of the same turn ends before the first decision is taken (as when
    # several overlapping stretches join a turn after a barge-in).
    from parley.voice.session import Segment

    second = Segment(99, [window(4)], overlap=False, stopped=True)
    h.session._segment_ended(second, asyncio.get_running_loop().time())
    await settle()
    assert first.cancelled()
    h.eou.release()
    await until(lambda: h.sink.of("turn.ended"))
    await settle()
    assert len(h.sink.of("turn.ended")) == 1
    assert h.sink.of("turn.ended")[0]["text"] == "hello there please"


async def test_a_stale_early_transcription_is_cancelled(harness: Harness) -> None:
    """Regression: when speech resumed, the early final transcription was forgotten but
    left running, holding the STT lane that the next transcription waits for."""
    h = harness
    h.stt.hold()
    await h.feed(3, 10)
    await h.feed(0, 2)  # a short pause: the early final transcription starts
    assert h.stt.calls == 1
    await h.feed(3, 3)  # speech resumes: that transcription is stale
    assert h.stt.cancelled == 1
    h.stt.release()
    await h.feed(0, 12)
    await until(lambda: h.sink.of("turn.ended"))


async def test_the_words_model_is_not_asked_after_a_dangling_word(
    monkeypatch: Any, tmp_path: Any
) -> None:
    """A turn ending "... a table for" waits ``unfinished_delay`` whatever the words'
    model would say: it is not asked (under load, its calls are the largest share of a
    worker's CPU)."""
    words = HeldTextEOU()
    h = Harness(monkeypatch, tmp_path, eou_text=words)
    h.settings.turn.unfinished_delay = 0
    await h.session.start()
    try:
        await h.speak(5)
        await until(lambda: h.sink.of("turn.ended"))
        ended = h.sink.of("turn.ended")[0]
        assert ended["text"] == "a table for" and ended["eou_text_probability"] is None
        assert words.asked == []
        await h.speak(3)  # a whole phrase: asked
        await until(lambda: len(h.sink.of("turn.ended")) == 2)
        assert words.asked == ["hello there"]
        assert h.sink.of("turn.ended")[1]["eou_text_probability"] == 0.9
    finally:
        await h.session.close()


async def test_a_stale_words_verdict_is_dropped_when_speech_resumes(
    monkeypatch: Any, tmp_path: Any
) -> None:
    """The words' model is asked on the early transcript; when the caller goes on, that
    call (queued behind other sessions' under load) is cancelled, not run for nothing."""
    words = HeldTextEOU()
    words.hold()
    h = Harness(monkeypatch, tmp_path, eou_text=words)
    await h.session.start()
    try:
        await h.feed(3, 10)
        await h.feed(0, 2)  # a short pause: the early final, then its words are scored
        await until(lambda: words.asked == ["hello there"])
        await h.feed(3, 3)  # speech resumes: that verdict is stale
        await settle()
        assert words.cancelled == 1
        words.release()
        await h.feed(0, 12)
        await until(lambda: h.sink.of("turn.ended"))
    finally:
        await h.session.close()


async def test_the_audio_is_judged_as_the_vad_stopped_as_soon_as_the_words_are_known(
    monkeypatch: Any, tmp_path: Any
) -> None:
    """Smart Turn hears the turn up to the VAD's stop, asked once the words are
    transcribed, not after ``min_endpointing_delay`` (under load its lane queues). The
    silence that follows is not in what it hears, and the turn still waits the delay."""
    h = Harness(monkeypatch, tmp_path)
    # No test waits this long: the turn must not end within the test.
    h.settings.turn.min_endpointing_delay = h.settings.turn.max_endpointing_delay = 60.0
    await h.session.start()
    try:
        await h.speak(3)  # speech, then silence past the VAD's stop
        await until(lambda: len(h.eou.heard) == 1)
        await h.feed(0, 40)  # more silence: nothing more to hear, nothing asked again
        assert len(h.eou.heard) == 1
        audio = h.eou.heard[0]
        trailing = audio.size - 1 - int(np.flatnonzero(audio)[-1])
        stop_windows = int(np.ceil(h.settings.vad.stop_secs / (WINDOW / 16_000)))
        assert WINDOW <= trailing <= (stop_windows + 1) * WINDOW
        assert not h.sink.of("turn.ended")  # the delay still holds the turn open
    finally:
        await h.session.close()


@pytest.mark.parametrize(
    ("live_sessions", "p_words", "audio_asked"),
    [(99, 0.9, False), (99, 0.1, True), (1, 0.9, True)],
    ids=["busy-words-sure", "busy-words-unsure", "idle-side-by-side"],
)
async def test_a_busy_worker_asks_the_audio_only_once_the_words_want_it(
    monkeypatch: Any, tmp_path: Any, live_sessions: int, p_words: float, audio_asked: bool
) -> None:
    """With more live sessions than cores, Smart Turn waits for the words' verdict and
    runs only if that leaves the decision open (most turns it does not: a call asked
    alongside would take a core from the other sessions for nothing). With a core to
    spare it runs beside the words, as the words' answer may not be the last word."""
    words = HeldTextEOU(p_words)
    words.hold()
    h = Harness(monkeypatch, tmp_path, eou_text=words)
    h.session.engines.vad.live_streams = lambda: live_sessions  # type: ignore[attr-defined]
    monkeypatch.setattr("parley.voice.turn_ending.device.cpu_count", lambda: 2)
    await h.session.start()
    try:
        await h.speak(3)
        await until(lambda: words.asked == ["hello there"])
        if live_sessions > 2:
            await settle()
            assert h.eou.heard == []  # not while the words are out
        else:
            await until(lambda: len(h.eou.heard) == 1)  # beside them
        words.release()
        await until(lambda: h.sink.of("turn.ended"))
        assert len(h.eou.heard) == (1 if audio_asked else 0)
        ended = h.sink.of("turn.ended")[0]
        assert ended["eou_text_probability"] == p_words
        assert (ended["eou_probability"] is not None) == audio_asked
    finally:
        await h.session.close()


async def test_speech_resuming_while_a_busy_worker_waits_for_the_words_asks_nothing(
    monkeypatch: Any, tmp_path: Any
) -> None:
    """The caller goes on while the decision waits for the words: that decision is
    dropped without asking Smart Turn, and the turn ends once, on all its words."""
    words = HeldTextEOU(0.1)
    words.hold()
    h = Harness(monkeypatch, tmp_path, eou_text=words)
    h.session.engines.vad.live_streams = lambda: 99  # type: ignore[attr-defined]
    monkeypatch.setattr("parley.voice.turn_ending.device.cpu_count", lambda: 2)
    await h.session.start()
    try:
        await h.speak(3)
        await until(lambda: words.asked == ["hello there"])
        await h.feed(3, 3)  # speech resumes: the pending decision is cancelled
        words.release()
        await settle()
        assert h.eou.heard == [] and not h.sink.of("turn.ended")
        await h.feed(0, 12)
        await until(lambda: h.sink.of("turn.ended"))
        await settle()
        assert [e["text"] for e in h.sink.of("turn.ended")] == ["hello there hello there"]
        assert len(h.eou.heard) == 1  # the second decision's, after its words
    finally:
        await h.session.close()


class ReadingTextEOU:
    """A words' model that reads ahead (engines.base.TextReadAhead): what it was asked."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, str | None]] = []

    async def completion_probability(self, user_text: str, caller: str | None = None) -> float:
        self.log.append(("verdict", user_text, caller))
        return 0.9

    async def read_ahead(self, user_text: str, caller: str) -> None:
        self.log.append(("read", user_text, caller))

    def forget(self, caller: str) -> None:
        self.log.append(("forget", "", caller))


async def test_the_words_are_read_ahead_from_partials_and_forgotten_when_the_turn_ends(
    monkeypatch: Any, tmp_path: Any
) -> None:
    """Each partial transcript of the turn is read ahead under the session's name; the
    verdict when the caller stops names the session too (so only the words since are
    read), and what was read is dropped once the turn ends, and at close."""
    words = ReadingTextEOU()
    h = Harness(monkeypatch, tmp_path, eou_text=words)
    h.settings.stt.partials = True
    h.settings.stt.partial_interval = 0.1
    h.settings.turn.text_read_ahead = False
    me = h.session.session_id
    await h.session.start()
    try:
        await h.feed(3, 6)  # "hello there": partials, but read-ahead is off
        assert h.sink.of("transcript.partial") and words.log == []
        h.settings.turn.text_read_ahead = True
        await h.feed(3, 6)  # the same speech goes on: its next partials are read
        assert ("read", "hello there", me) in words.log
        assert all(kind == "read" for kind, _, _ in words.log)
        await h.feed(0, 12)
        await until(lambda: h.sink.of("turn.ended"))
        kinds = [kind for kind, _, _ in words.log]
        assert ("verdict", "hello there", me) in words.log
        assert kinds.index("verdict") < kinds.index("forget")
        assert h.sink.of("turn.ended")[0]["eou_text_probability"] == 0.9
    finally:
        await h.session.close()
    assert words.log[-1] == ("forget", "", me)


async def test_a_failed_draft_reports_no_error_and_the_turn_is_answered(
    monkeypatch: Any, tmp_path: Any
) -> None:
    """Regression: a reply drafted before the turn was confirmed sent an ``error`` for a
    turn the user never saw answered; now the confirmed turn just starts its reply."""
    h = Harness(monkeypatch, tmp_path, llm=ScriptedLLM(fail_first=True))
    await h.session.start()
    try:
        h.eou.hold()  # the turn is not confirmed yet: the reply is a draft
        await h.speak(3)
        await until(lambda: h.llm.calls == 1)
        await settle()
        h.eou.release()
        await until(lambda: h.session.state == "speaking")
        assert h.sink.of("error") == []
        assert [e["turn_id"] for e in h.sink.of("agent.text")] == [1]
    finally:
        await h.session.close()


def test_turn_metrics_use_one_clock(monkeypatch: Any, tmp_path: Any) -> None:
    """Regression: some marks came from time.monotonic() and others from the event
    loop's clock; under a loop whose clock is not time.monotonic() (uvloop's is not) the
    timeline was nonsense. Here, on a loop of its own, the clock runs a day ahead."""

    async def one_turn() -> dict[str, Any]:
        h = Harness(monkeypatch, tmp_path)
        await h.session.start()
        try:
            await h.speak(3)
            await until(lambda: h.sink.of("turn.metrics"))
            return h.sink.of("turn.metrics")[0]
        finally:
            await h.session.close()

    loop = asyncio.new_event_loop()
    real_time = loop.time
    loop.time = lambda: real_time() + 86_400.0  # type: ignore[method-assign]
    try:
        metrics = loop.run_until_complete(one_turn())
    finally:
        loop.close()
    timeline = metrics["timeline_ms"]
    assert {"stt_started", "eou_started", "confirmed", "first_frame"} <= set(timeline)
    for step, ms in timeline.items():
        assert 0 <= ms < 60_000, (step, ms)
    assert 0 <= metrics["voice_to_voice_ms"] < 60_000


async def test_a_word_less_turn_does_not_use_up_a_number(harness: Harness) -> None:
    """Turn numbers follow the stored turns: a turn dropped for having no words (here a
    sound the STT hears nothing in) gives its number to the next turn."""
    h = harness
    WORDS[5] = ""
    try:
        await h.speak(5)
        await until(lambda: h.session._turn is None and h.session._endpoint is None)
        await h.speak(3)
        await until(lambda: h.sink.of("turn.ended"))
        assert [e["turn_id"] for e in h.sink.of("turn.ended")] == [1]
    finally:
        del WORDS[5]


async def test_a_failing_session_task_is_logged_and_reported(harness: Harness, caplog: Any) -> None:
    """Regression: an exception in a task the session started vanished unseen."""

    async def broken() -> None:
        raise ValueError("boom")

    harness.session._spawn(broken())
    await settle()
    errors = harness.sink.of("error")
    assert errors and errors[0]["code"] == "internal_error"
    # The client gets a code and a safe message; the exception's text goes to the log.
    assert "boom" not in errors[0]["message"]
    failed = [r for r in caplog.records if "session task failed" in r.getMessage()]
    assert failed and "boom" in str(failed[0].fields)  # type: ignore[attr-defined]


async def test_turn_identity_survives_dropped_turns_and_a_reconnect(
    store: Any, monkeypatch: Any, tmp_path: Any
) -> None:
    """Regression: the loop numbered a dropped turn and, after a reconnect, restarted
    from the stored count, so a new turn's key named an older, completed turn: the new
    turn was never stored and its segments and events landed under the wrong number."""
    from parley.voice.recording import SessionRecorder

    record = await store.create_session()
    WORDS[5] = ""  # a sound the STT hears no word in: a dropped turn
    live: list[dict[str, Any]] = []
    try:
        for connection, levels in enumerate(([3, 5, 1], [2, 5, 4])):
            h = Harness(monkeypatch, tmp_path)
            h.session = VoiceSession(
                h.session.engines,
                h.settings,
                h.sink,
                session_id=record.id,
                recorder=SessionRecorder(store, record.id),
            )
            if connection:  # a reconnect: resume from the server's record
                h.session.restore(*await store.conversation(record.id))
            await h.session.start()
            session = h.session
            for level in levels:
                await h.speak(level)
                await until(lambda s=session: s._turn is None and s._endpoint is None)
                if WORDS[level]:
                    await until(lambda s=session: s.state == "speaking")
                    session.interrupt()
            await session.close()
            live += h.sink.of("turn.ended")
    finally:
        del WORDS[5]
    turns = await store.turns(record.id)
    assert [t.seq for t in turns] == [1, 2, 3, 4]
    assert [t.user_text for t in turns] == ["hello there", "no wait", "the other day", "please"]
    assert len({t.idempotency_key for t in turns}) == 4
    assert all(t.state == "interrupted" for t in turns)
    assert [(e["turn_id"], e["text"]) for e in live] == [(t.seq, t.user_text) for t in turns]
    segments = await store.segments(record.id)
    assert [(s.turn_seq, s.text) for s in segments] == [(t.seq, t.user_text) for t in turns]
    ended = [e.turn_seq for e in await store.timeline(record.id) if e.stage == "turn.ended"]
    assert ended == [1, 2, 3, 4]


class StreamingTTS(Gated):
    """A streaming provider: a sentence's first 0.2 s at once, the rest (0.3 s, in an odd
    number of samples) only when the test releases it."""

    async def synthesize(self, text: str) -> AsyncIterator[np.ndarray]:
        yield np.full(3_200, 3000, dtype="<i2")
        await self.passing()
        yield np.full(4_801, 3000, dtype="<i2")


async def test_a_streamed_sentence_is_heard_from_its_first_chunk(
    monkeypatch: Any, tmp_path: Any
) -> None:
    """The reply's first sentence starts playing with its first audio chunk, while the
    provider is still synthesizing the rest; every sample it sends is played."""
    tts = StreamingTTS()
    tts.hold()
    h = Harness(monkeypatch, tmp_path, tts=tts)
    await h.session.start()
    try:
        await h.speak(3)
        await until(lambda: h.sink.of("turn.metrics"))
        assert h.session.state == "speaking"
        assert h.sink.audio_bytes > 0  # frames of the first chunk are out...
        assert h.sink.audio_bytes <= 3_200 * 2  # ...and nothing it has not been given
        tts.release()
        await until(lambda: h.session.state == "listening")
        # Both chunks, the last partial frame padded to a whole one.
        assert h.sink.audio_bytes == -(-(3_200 + 4_801) // 320) * 320 * 2
        assert [e["text"] for e in h.sink.of("agent.text")] == ["Sure, here is a long answer."]
    finally:
        await h.session.close()
