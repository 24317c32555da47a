"""VoiceSession: one conversation — listen, decide the turn is over, respond, yield to barge-in.

The transport pushes PCM16 audio and control calls in; the session pushes events and
20 ms audio frames out through its :class:`SessionSink`. Everything here runs on the
event loop; every model call goes through an engine, which runs it off the loop.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from parley.audio import pcm16_to_float
from parley.config import Settings
from parley.engines import EngineError, Engines, Transcript
from parley.orchestration.agent_actions import AgentActions
from parley.orchestration.envelope import ActionEnvelope
from parley.store import TurnState
from parley.telemetry import bind_session, bind_turn, get_logger
from parley.voice.endpointing import text_says_complete
from parley.voice.events import AgentState, Event, SessionSink, event
from parley.voice.history import ConversationHistory
from parley.voice.playout import AudioPlayout
from parley.voice.recording import SessionRecorder
from parley.voice.response import Reply, error_code, run_reply, unwrap_group_error
from parley.voice.segmenter import SpeechEdge, SpeechSegmenter

log = get_logger(__name__)

TURN_AUDIO_SECS = 8.0  # Smart Turn reads the last 8 s


CLOSE_TIMEOUT_SECS = 5.0
"""How long closing waits for the session's cancelled tasks to end."""


class SessionOverloaded(RuntimeError):
    """Inbound audio arrives faster than the session can process it."""


@dataclass
class Segment:
    """One stretch of user speech (with pre-roll), from VAD start to VAD stop."""

    index: int
    audio: list[np.ndarray]
    overlap: bool
    """Began while the agent was replying: a barge-in candidate, not yet part of a turn."""
    last_partial_secs: float = 0.0
    check: asyncio.Task[bool] | None = None
    last_check_secs: float = 0.0
    stopped: bool = False
    early: asyncio.Task[Transcript | None] | None = None
    """Transcription started at the first silence, valid while the silence lasts."""

    def samples(self) -> np.ndarray:
        return np.concatenate(self.audio) if self.audio else np.zeros(0, np.float32)


@dataclass
class UserTurn:
    turn_id: int
    audio: deque[np.ndarray]
    texts: dict[int, str] = field(default_factory=dict)
    finals: set[asyncio.Task[None]] = field(default_factory=set)
    last_speech_at: float = 0.0
    stt_ms: float | None = None
    eou_model_ms: float | None = None
    eou_probability: float | None = None
    confirmed_at: float | None = None
    drafts_discarded: int = 0
    """Replies drafted on this turn then dropped because the user went on speaking."""
    early_finals_discarded: int = 0
    marks: dict[str, float] = field(default_factory=dict)
    """Monotonic times of the turn's steps, for the timeline in turn.metrics."""

    @property
    def text(self) -> str:
        return self.text_with()

    async def transcribed(self) -> None:
        """Wait for every segment's final transcription.

        ``asyncio.wait``, not ``gather``: the endpointing task that waits here is cancelled
        whenever the user resumes speaking, and gather would cancel the transcriptions with
        it — the turn would then never end (seen in CI as a session that went deaf).
        """
        if self.finals:
            await asyncio.wait(set(self.finals))

    def text_with(self, index: int | None = None, text: str = "") -> str:
        """The turn's transcript, segments in order, optionally with one segment replaced."""
        texts = dict(self.texts)
        if index is not None:
            texts[index] = text
        return " ".join(t for _, t in sorted(texts.items()) if t)


class VoiceSession:
    def __init__(
        self,
        engines: Engines,
        settings: Settings,
        sink: SessionSink,
        session_id: str | None = None,
        recorder: SessionRecorder | None = None,
        actions: AgentActions | None = None,
    ) -> None:
        self.session_id = session_id or uuid.uuid4().hex
        self.actions = actions
        """Set when the agent has tools: replies are envelopes, tools run via the ledger."""
        self.engines = engines
        self.settings = settings
        self.sink = sink
        self.recorder = recorder
        self.history = ConversationHistory(
            settings.agent.system_prompt, settings.agent.max_history_messages
        )
        self.state: AgentState = "listening"
        self._vad = engines.vad.stream()
        self._window = self._vad.window_samples
        self._window_secs = self._window / 16_000
        self._segmenter = SpeechSegmenter(settings.vad, self._window_secs)
        preroll = max(1, round(settings.vad.preroll_secs / self._window_secs))
        self._recent: deque[np.ndarray] = deque(maxlen=preroll)
        self._inbound: asyncio.Queue[bytes] = asyncio.Queue(maxsize=1_000)
        self._segment: Segment | None = None
        self._segment_count = 0
        self._turn: UserTurn | None = None
        self._turn_count = 0
        self._reply: Reply | None = None
        self._endpoint: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._muted = False
        self._closed = False
        self._restored = False
        self._audio_task: asyncio.Task[None] | None = None

    # ---- the transport's side -------------------------------------------------------------

    def restore(self, messages: list[tuple[str, str]], last_turn_id: int) -> None:
        """Resume a conversation from the server's record (a reconnect): its history, and
        turn ids that continue after the stored ones. No greeting is spoken then."""
        for role, text in messages:
            if role == "user":
                self.history.add_user(text)
            else:
                self.history.add_assistant(text)
        self._turn_count = last_turn_id
        self._restored = True

    async def start(self) -> None:
        bind_session(self.session_id)
        self.sink.send_event(
            event(
                "session.started",
                session_id=self.session_id,
                sample_rate=16_000,
                frame_ms=20,
                resumed=self._restored,
                turns=self._turn_count,
            )
        )
        self._send_state("listening")
        self._audio_task = asyncio.create_task(self._audio_loop(), name="audio-in")
        self._audio_task.add_done_callback(self._audio_loop_ended)
        if self.settings.agent.greeting and not self._restored:
            self._start_reply(0, None, script=self.settings.agent.greeting, confirmed=True)
        self._prefill_next_turn()

    def push_audio(self, pcm: bytes) -> None:
        """Queue inbound PCM16LE 16 kHz mono (any length, even byte count)."""
        try:
            self._inbound.put_nowait(pcm)
        except asyncio.QueueFull as exc:
            raise SessionOverloaded("inbound audio queue is full") from exc

    def interrupt(self) -> bool:
        """Client-requested interruption; True if there was a reply to interrupt."""
        if self._reply is None or not self._reply.confirmed:
            return False
        self._barge_in(reason="client")
        return True

    def status(self) -> Event:
        """The session as the server sees it: state, counts and the conversation so far."""
        return event(
            "session.status",
            session_id=self.session_id,
            state=self.state,
            muted=self._muted,
            turns=self._turn_count,
            history=[{"role": m.role, "content": m.content} for m in self.history.messages],
        )

    def mute(self) -> None:
        self._muted = True

    def unmute(self) -> None:
        self._muted = False

    async def close(self) -> None:
        if self._closed:
            return
        reply = self._reply
        if reply is not None and reply.confirmed and reply.started_speaking:
            # The connection went while the agent spoke: keep what the user heard, so a
            # reconnect's history (and transcript) has it, as after any interruption.
            self._barge_in(reason="disconnected")
        self._closed = True
        tasks = [t for t in (self._audio_task, self._endpoint) if t is not None]
        if self._reply is not None and self._reply.task is not None:
            tasks.append(self._reply.task)
        tasks.extend(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            # Bounded: a task that does not end when cancelled must not keep the session
            # (and its record) open forever; it is named in the log instead.
            done, stuck = await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT_SECS)
            for task in done:
                if not task.cancelled():
                    task.exception()  # retrieved: it was logged where it happened
            if stuck:
                log.error(
                    "tasks still running after close",
                    tasks=[getattr(t.get_coro(), "__qualname__", t.get_name()) for t in stuck],
                )
        if self.recorder is not None:
            await self.recorder.close()
        log.info("session closed", turns=self._turn_count)

    # ---- listening --------------------------------------------------------------------------

    def _audio_loop_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._closed:
            return
        exc = task.exception()
        # Without its audio loop the session is deaf: say so loudly, to the log and client.
        log.error("audio loop failed", error=repr(exc), exc_info=exc)
        self._send_error("internal_error", f"audio processing stopped: {exc!r}")

    async def _audio_loop(self) -> None:
        pending = np.zeros(0, dtype=np.float32)
        while True:
            pcm = await self._inbound.get()
            audio = pcm16_to_float(pcm)
            if self._muted:
                # A muted mic is silence: an open segment ends as it would in a pause.
                audio = np.zeros_like(audio)
            pending = np.concatenate([pending, audio])
            while pending.size >= self._window:
                window, pending = pending[: self._window], pending[self._window :]
                await self._process_window(window)

    async def _process_window(self, window: np.ndarray) -> None:
        probability = await self._vad.probability(window)
        edge = self._segmenter.update(probability)
        now = asyncio.get_running_loop().time()
        if edge is SpeechEdge.STARTED:
            self._on_speech_started(list(self._recent), window)
        elif self._segment is not None:
            self._segment.audio.append(window)
        if self._turn is not None:
            self._turn.audio.append(window)
        self._recent.append(window)
        if edge is SpeechEdge.STOPPED:
            self._on_speech_stopped(now - self._segmenter.trailing_silence_secs)
        elif self._segmenter.speaking:
            self._during_speech()

    def _on_speech_started(self, preroll: list[np.ndarray], window: np.ndarray) -> None:
        self.sink.send_event(event("vad.speech_started", turn_id=self._current_turn_id()))
        if self._endpoint is not None:
            self._endpoint.cancel()  # speech resumed: the same turn goes on
            self._endpoint = None
        self._segment_count += 1
        reply = self._reply
        overlap = reply is not None and reply.confirmed
        self._segment = Segment(self._segment_count, [*preroll, window], overlap=overlap)
        if overlap:
            return
        if reply is not None:
            self._discard_reply(reply)  # preemptive work on a turn that is not over
        self._ensure_turn(preroll)  # this window joins the turn's audio with every other

    def _during_speech(self) -> None:
        seg = self._segment
        if seg is None:
            return
        speech = self._segmenter.speech_secs
        if seg.overlap:
            cfg = self.settings.interruption
            if (
                cfg.enabled
                and speech >= cfg.min_duration
                and seg.check is None
                and speech - seg.last_check_secs >= 0.25
            ):
                seg.last_check_secs = speech
                seg.check = self._spawn(self._check_barge_in(seg))
            return
        silence = self._segmenter.trailing_silence_secs
        if silence == 0.0 and seg.early is not None:
            # Speech went on: the early transcript, and any reply drafted on it, are stale.
            seg.early = None
            if self._turn is not None:
                self._turn.early_finals_discarded += 1
            if self._reply is not None and not self._reply.confirmed:
                self._discard_reply(self._reply)
        elif silence >= self.settings.vad.early_final_secs and seg.early is None and self._turn:
            seg.early = self._spawn(self._early_final(self._turn, seg))
            return
        cfg_stt = self.settings.stt
        if (
            silence == 0.0
            and cfg_stt.partials
            and speech - seg.last_partial_secs >= cfg_stt.partial_interval
            and not self.engines.stt.busy
        ):
            seg.last_partial_secs = speech
            self._spawn(self._partial(seg))

    def _on_speech_stopped(self, last_speech_at: float) -> None:
        self.sink.send_event(event("vad.speech_stopped", turn_id=self._current_turn_id()))
        seg, self._segment = self._segment, None
        if seg is None:
            return
        seg.stopped = True
        if seg.overlap:
            return  # a backchannel or cough unless its barge-in check says otherwise
        self._segment_ended(seg, last_speech_at)

    def _segment_ended(self, seg: Segment, last_speech_at: float) -> None:
        turn = self._ensure_turn(seg.audio)
        turn.last_speech_at = last_speech_at
        final = self._spawn(self._finalize(turn, seg))
        turn.finals.add(final)
        self._endpoint = asyncio.create_task(self._endpointing(turn), name="endpoint")

    def _ensure_turn(self, seed: list[np.ndarray]) -> UserTurn:
        if self._turn is None:
            self._turn_count += 1
            maxlen = int(TURN_AUDIO_SECS / self._window_secs)
            self._turn = UserTurn(self._turn_count, deque(seed, maxlen=maxlen))
            bind_turn(self._turn_count)
        return self._turn

    async def _partial(self, seg: Segment) -> None:
        try:
            result = await self.engines.stt.transcribe(seg.samples())
        except EngineError:
            return  # a lost partial is harmless; the final reports errors
        if result.text and not seg.stopped and not seg.overlap:
            self.sink.send_event(
                event(
                    "transcript.partial",
                    turn_id=self._current_turn_id(),
                    segment_id=seg.index,
                    text=result.text,
                )
            )

    async def _early_final(self, turn: UserTurn, seg: Segment) -> Transcript | None:
        """The segment's final transcription, started at its first silence (before VAD
        declares the speech over); if the silence lasts, a reply is drafted on it at once."""
        me = asyncio.current_task()
        turn.marks["stt_started"] = time.monotonic()
        try:
            result = await self.engines.stt.transcribe(seg.samples())
        except EngineError:
            return None  # _finalize transcribes again and reports a repeated failure
        if seg.early is me and not seg.stopped:
            self._preempt(turn, turn.text_with(seg.index, result.text))
        return result

    async def _finalize(self, turn: UserTurn, seg: Segment) -> None:
        result = await seg.early if seg.early is not None else None
        if result is None:
            turn.marks["stt_started"] = time.monotonic()
            try:
                result = await self.engines.stt.transcribe(seg.samples())
            except EngineError as exc:
                self._send_error("stt_error", str(exc), turn.turn_id)
                turn.texts[seg.index] = ""
                return
        turn.texts[seg.index] = result.text
        turn.stt_ms = result.duration_ms
        turn.marks["stt_done"] = time.monotonic()
        if result.text:
            if self.recorder is not None:
                self.recorder.segment(turn.turn_id, seg.index, result.text)
            self.sink.send_event(
                event(
                    "transcript.final",
                    turn_id=turn.turn_id,
                    segment_id=seg.index,
                    text=result.text,
                    stt_ms=round(result.duration_ms, 1),
                )
            )
        if self._segment is None and all(
            t.done() for t in turn.finals if t is not asyncio.current_task()
        ):
            self._preempt(turn, turn.text)

    # ---- the turn ---------------------------------------------------------------------------

    async def _endpointing(self, turn: UserTurn) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.settings.turn
        await asyncio.sleep(max(0.0, turn.last_speech_at + cfg.min_endpointing_delay - loop.time()))
        # The transcription first: it is on the path to the reply's first word, and on
        # two cores the end-of-turn model beside it would slow it; this only gates playback.
        await turn.transcribed()
        started = time.monotonic()
        turn.marks["eou_started"] = started
        try:
            probability = await self.engines.eou.completion_probability(
                np.concatenate(list(turn.audio))
            )
        except Exception as exc:
            self._send_error("eou_error", str(exc), turn.turn_id)
            probability = 1.0 if cfg.max_endpointing_delay == 0 else 0.0
        turn.marks["eou_done"] = time.monotonic()
        turn.eou_model_ms = (turn.marks["eou_done"] - started) * 1000
        turn.eou_probability = probability
        # Every segment is transcribed by now: new segments only come with new speech,
        # which cancels this task.
        complete = probability >= cfg.eou_threshold
        if cfg.use_text_hint:
            complete = text_says_complete(turn.text, probability, cfg.eou_threshold)
        if not complete:
            await asyncio.sleep(
                max(0.0, turn.last_speech_at + cfg.max_endpointing_delay - loop.time())
            )
        self._endpoint = None
        self._confirm_turn(turn)

    def _preempt(self, turn: UserTurn, text: str) -> None:
        """Draft the reply to ``text`` while the end-of-turn decision is pending."""
        if not self.settings.turn.preemptive_generation or self._turn is not turn or not text:
            return
        if self._reply is not None:
            if self._reply.turn_id == turn.turn_id and self._reply.user_text == text:
                return
            self._discard_reply(self._reply)
        self._start_reply(turn.turn_id, text, confirmed=False)

    def _confirm_turn(self, turn: UserTurn) -> None:
        if self._turn is turn:
            self._turn = None
        text = turn.text
        if not text:
            log.info("turn dropped: no words", turn_id=turn.turn_id)
            return
        turn.confirmed_at = turn.marks["confirmed"] = asyncio.get_running_loop().time()
        self.sink.send_event(
            event(
                "turn.ended",
                turn_id=turn.turn_id,
                text=text,
                eou_probability=None
                if turn.eou_probability is None
                else round(turn.eou_probability, 3),
            )
        )
        log.info("turn ended", turn_id=turn.turn_id, text=text)
        if self.recorder is not None:
            self.recorder.turn_started(turn.turn_id, text)
            self.recorder.event(
                "turn.ended",
                turn.turn_id,
                {"eou_probability": turn.eou_probability, "segments": len(turn.texts)},
            )
        reply = self._reply
        if reply is None or reply.turn_id != turn.turn_id or reply.user_text != text:
            if reply is not None:
                self._discard_reply(reply)
            reply = self._start_reply(turn.turn_id, text, confirmed=False)
        self.history.add_user(text)
        reply.user_turn = turn
        reply.open_gate()
        self._send_state("thinking")
        if self.actions is not None:
            # Only now: a draft (an unconfirmed reply) never acts.
            self._spawn(self._act(reply))

    # ---- responding -------------------------------------------------------------------------

    def _start_reply(
        self, turn_id: int, user_text: str | None, *, script: str | None = None, confirmed: bool
    ) -> Reply:
        reply = Reply(turn_id, user_text, AudioPlayout(self.sink, self.settings.playout.lead_secs))
        if confirmed:
            reply.open_gate()
        prompt = None if script is not None else self.history.prompt(pending_user=user_text)
        decide = None
        if self.actions is not None and user_text is not None:
            window = self.settings.agent.max_history_messages
            earlier = [(m.role, m.content) for m in self.history.messages][-window:]
            decide = functools.partial(self.actions.decide, earlier, user_text)
        self._reply = reply
        reply.task = asyncio.create_task(
            self._run_reply(reply, prompt, script, decide), name="reply"
        )
        return reply

    async def _run_reply(
        self,
        reply: Reply,
        prompt: Any,
        script: str | None,
        decide: Callable[[], Awaitable[ActionEnvelope]] | None = None,
    ) -> None:
        try:
            await run_reply(
                reply,
                engines=self.engines,
                settings=self.settings,
                sink=self.sink,
                prompt=prompt,
                script=script,
                decide=decide,
                on_speaking=self._on_speaking,
            )
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            real = unwrap_group_error(exc)
            log.warning("reply failed", turn_id=reply.turn_id, error=repr(real))
            code = error_code(real)
            self._send_error(code, str(real) or type(real).__name__, reply.turn_id)
            self.history.add_assistant(reply.playout.heard_text())
            if self.recorder is not None:
                self.recorder.turn_finished(reply.turn_id, TurnState.FAILED, {"error": code})
        else:
            self.history.add_assistant(reply.raw_text() or reply.full_text())
            self._prefill_next_turn()
            if self.recorder is not None:
                result: dict[str, Any] = {"spoken": reply.full_text()}
                if reply.envelope is not None:
                    result["envelope"] = reply.envelope.model_dump()
                self.recorder.turn_finished(reply.turn_id, TurnState.COMPLETED, result)
        if self._reply is reply:
            self._reply = None
            self._send_state("listening")
            self._adopt_overlap()

    def _on_speaking(self, reply: Reply) -> None:
        self._send_state("speaking")
        turn = reply.user_turn
        if not isinstance(turn, UserTurn):
            return
        now = asyncio.get_running_loop().time()

        def ms(seconds: float | None) -> float | None:
            return None if seconds is None else round(seconds * 1000, 1)

        metrics: dict[str, Any] = {
            "stt_ms": None if turn.stt_ms is None else round(turn.stt_ms, 1),
            "eou_ms": ms(
                None if turn.confirmed_at is None else turn.confirmed_at - turn.last_speech_at
            ),
            "eou_model_ms": None if turn.eou_model_ms is None else round(turn.eou_model_ms, 1),
            **reply.metrics.as_ms(),
            "voice_to_voice_ms": ms(now - turn.last_speech_at),
            "drafts_discarded": turn.drafts_discarded,
            "early_finals_discarded": turn.early_finals_discarded,
            "preemptive": reply.metrics.llm_started is not None
            and turn.confirmed_at is not None
            and reply.metrics.llm_started < turn.confirmed_at,
        }
        steps = {
            **turn.marks,
            "llm_started": reply.metrics.llm_started,
            "llm_first_token": reply.metrics.llm_first_token,
            "tts_started": reply.metrics.tts_started,
            "tts_first_audio": reply.metrics.tts_first_audio,
            "first_frame": now,
        }
        # Each step in ms after the user's last speech: where the voice-to-voice time went.
        metrics["timeline_ms"] = {
            k: ms(v - turn.last_speech_at) for k, v in steps.items() if v is not None
        }
        self.sink.send_event(event("turn.metrics", turn_id=reply.turn_id, **metrics))
        if self.recorder is not None:
            self.recorder.event("turn.metrics", reply.turn_id, metrics)
        log.info("turn metrics", turn_id=reply.turn_id, **metrics)

    def _prefill_next_turn(self) -> None:
        """Warm the LLM's KV cache with the next turn's prompt prefix while the user talks."""
        messages = self.history.next_prefix()

        async def prefill() -> None:
            try:
                await self.engines.llm.prefill(messages)
            except Exception as exc:  # an optimisation only: never fail the session
                log.warning("prefill failed", error=repr(exc))

        self._spawn(prefill())

    def _discard_reply(self, reply: Reply) -> None:
        """Drop a reply that was never heard (preemptive work on an unfinished turn)."""
        if self._turn is not None and self._turn.turn_id == reply.turn_id:
            self._turn.drafts_discarded += 1
        if reply.task is not None:
            reply.task.cancel()
        if self._reply is reply:
            self._reply = None

    # ---- barge-in ---------------------------------------------------------------------------

    async def _check_barge_in(self, seg: Segment) -> bool:
        """Is this overlapping speech a real interruption? It must yield words."""
        try:
            result = await self.engines.stt.transcribe(seg.samples())
        except EngineError:
            return False
        finally:
            seg.check = None
        words = len(result.text.split())
        if words < self.settings.interruption.min_words or not seg.overlap:
            return False
        if self._reply is None or not self._reply.confirmed:
            return False
        self._barge_in(reason="speech", words=words)
        seg.overlap = False
        if self._segment is seg:
            self._ensure_turn(seg.audio)
        else:
            # The speech already stopped while we checked: finish it as a turn now.
            self._segment_ended(seg, asyncio.get_running_loop().time())
        return True

    def _barge_in(self, *, reason: str, words: int = 0) -> None:
        reply = self._reply
        if reply is None:
            return
        self._reply = None
        if reply.task is not None:
            reply.task.cancel()
        self.sink.clear_audio()
        heard = reply.playout.heard_text() if reply.confirmed else ""
        if reply.confirmed:
            self.history.add_assistant(heard)
            self._prefill_next_turn()
        self.sink.send_event(
            event(
                "turn.interrupted",
                turn_id=reply.turn_id,
                reason=reason,
                heard_text=heard,
                words=words,
            )
        )
        log.info("turn interrupted", turn_id=reply.turn_id, reason=reason)
        if self.recorder is not None:
            result = {"heard": heard, "reason": reason}
            self.recorder.turn_finished(reply.turn_id, TurnState.INTERRUPTED, result)
            self.recorder.event(
                "turn.interrupted", reply.turn_id, {"reason": reason, "words": words}
            )
        self._send_state("listening")

    async def _act(self, reply: Reply) -> None:
        """Run the confirmed reply's tool calls through the ledger, beside its speech.
        A barge-in stops the talking, not an action already decided (the next turn can
        undo it); closing the session stops it."""
        assert self.actions is not None and reply.task is not None
        ready = asyncio.ensure_future(reply.envelope_ready.wait())
        await asyncio.wait({ready, reply.task}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        envelope: ActionEnvelope | None = reply.envelope
        if envelope is None:
            return  # the reply failed before deciding: its error is reported already
        extras = envelope.model_dump(exclude={"spoken_text"})
        self.sink.send_event(event("agent.envelope", turn_id=reply.turn_id, **extras))
        if not envelope.tool_calls:
            return
        stored = None
        if self.recorder is not None:
            stored = await self.recorder.stored_turn_id(reply.turn_id)
        if stored is None:
            self._send_error("tools_not_run", "the turn could not be stored", reply.turn_id)
            return
        for call in envelope.tool_calls:  # in order: a later call may depend on an earlier
            outcome = await self.actions.ledger.run(stored, call)
            details = {"call_id": call.id, "tool": call.name, "status": outcome.status}
            self.sink.send_event(
                event("tool.result", turn_id=reply.turn_id, result=outcome.result, **details)
            )
            if self.recorder is not None:
                self.recorder.event("tool.result", reply.turn_id, details)

    def _adopt_overlap(self) -> None:
        """The agent finished while the user was talking over it: that speech is a new turn."""
        seg = self._segment
        if seg is not None and seg.overlap:
            seg.overlap = False
            self._ensure_turn(seg.audio)

    # ---- helpers ----------------------------------------------------------------------------

    def _current_turn_id(self) -> int:
        return self._turn.turn_id if self._turn is not None else self._turn_count + 1

    def _send_state(self, state: AgentState) -> None:
        if state != self.state:
            self.state = state
            self.sink.send_event(event("agent.state", state=state))

    def _send_error(self, code: str, message: str, turn_id: int | None = None) -> None:
        self.sink.send_event(event("error", code=code, message=message, turn_id=turn_id))

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
