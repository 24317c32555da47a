"""The state one voice conversation shares between its jobs, and the small helpers they
all use. Each job lives in a module of its own (listening, turn_ending, replying,
barge_in, acting) as a mixin over :class:`SessionCore`; :class:`VoiceSession` joins them.

The stubs at the bottom are the calls one job makes into another: declared here so each
module type-checks on its own and the graph of calls between jobs is written down once.
"""

from __future__ import annotations

import asyncio
import contextvars
import uuid
from collections import deque
from collections.abc import Coroutine
from typing import Any

import numpy as np

from parley.config import Settings
from parley.engines import Engines
from parley.knowledge import AgentKnowledge
from parley.orchestration.agent_actions import AgentActions
from parley.telemetry import get_logger
from parley.telemetry.usage import Usage, UsageListener, usage_listener
from parley.voice.echo import EchoReference
from parley.voice.events import AgentState, HandoffState, SessionSink, event
from parley.voice.history import ConversationHistory
from parley.voice.phrases import CannedPhrases
from parley.voice.recording import SessionRecorder
from parley.voice.response import Reply
from parley.voice.segmenter import SpeechSegmenter
from parley.voice.turns import Segment, UserTurn

log = get_logger(__name__)


class SessionCore:
    handoff_state: HandoffState = "agent"
    """Who answers the caller (see ``voice/handoff.py``)."""
    phrases: CannedPhrases = CannedPhrases()
    """The filler and apology, synthesized at start-up (the server sets them; none here)."""

    def __init__(
        self,
        engines: Engines,
        settings: Settings,
        sink: SessionSink,
        session_id: str | None = None,
        recorder: SessionRecorder | None = None,
        actions: AgentActions | None = None,
        knowledge: AgentKnowledge | None = None,
    ) -> None:
        self.session_id = session_id or uuid.uuid4().hex
        self.actions = actions
        """Set when the agent has tools: replies are envelopes, tools run via the ledger."""
        self.knowledge = knowledge
        """Set when the agent has a knowledge file: its facts ground each reply."""
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
        self._window_count = 0
        """VAD windows processed: segments say by it which audio they hold."""
        self._overlaps: list[Segment] = []
        """Segments begun while a confirmed reply was active whose fate is open: the
        current one, and stopped ones whose barge-in check is still running."""
        self._overlap_tail: Segment | None = None
        """The last overlap with words that was judged no interruption: speech over the
        agent that resumes soon after it carries it (``interruption.join_pause_secs``)."""
        self._turn: UserTurn | None = None
        self._turn_count = 0
        """Confirmed turns (restored ones included): the last turn number given out."""
        self._reply: Reply | None = None
        self._endpoint: asyncio.Task[None] | None = None
        self._reading_ahead: asyncio.Task[None] | None = None
        """The words' model reading a partial transcript ahead (turn_ending.py)."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._muted = False
        self._closed = False
        self._restored = False
        self.last_activity = 0.0
        """Event-loop time of the caller's last speech or control message (the transport
        ends a session idle for ``server.idle_timeout_secs``)."""
        self.log_transcripts = False
        """The caller consented to their words in the logs at INFO (else only at DEBUG)."""
        self._audio_task: asyncio.Task[None] | None = None
        self._echo = EchoReference()
        """The agent audio just sent, by every reply: the echo guard compares speech with it."""

    # ---- helpers every job uses ---------------------------------------------------------

    @staticmethod
    def _now() -> float:
        """The one clock of the voice loop: the event loop's (uvloop's differs from
        ``time.monotonic()``), for every mark, delay and metric."""
        return asyncio.get_running_loop().time()

    def _current_turn_id(self) -> int:
        return self._turn.turn_id if self._turn is not None else self._turn_count + 1

    def _send_state(self, state: AgentState) -> None:
        if state != self.state:
            self.state = state
            self.sink.send_event(event("agent.state", state=state))

    def _send_error(
        self, code: str, message: str, turn_id: int | None = None, stage: str | None = None
    ) -> None:
        """``stage``: the pipeline stage that failed (``llm``, ``tts``…), where the code
        alone does not say it."""
        extra = {"stage": stage} if stage else {}
        self.sink.send_event(event("error", code=code, message=message, turn_id=turn_id, **extra))
        if self.recorder is not None:
            # The code and stage only: a message may quote a provider's reply.
            self.recorder.event("error", turn_id, {"code": code, **extra})

    def count_usage(self, usage: Usage, turn_id: int | None = None) -> None:
        """A provider call made for this session: for turn ``turn_id``, else for the
        session itself (its cost goes on the record: ``voice/costing.py``)."""
        if self.recorder is not None:
            self.recorder.usage(turn_id, usage)

    def _usage_listener(self, turn_id: int | None) -> UsageListener:
        def listener(usage: Usage) -> None:
            self.count_usage(usage, turn_id)

        return listener

    def _spawn(
        self, coro: Coroutine[Any, Any, Any], name: str | None = None, *, turn_id: int | None = None
    ) -> asyncio.Task[Any]:
        """A task of this session: cancelled when it closes, and never failing unseen.
        ``turn_id``: the turn it works for — the provider calls it (and the tasks it
        starts) makes are that turn's; else they are the session's own."""
        context = None
        if turn_id is not None:
            context = contextvars.copy_context()
            context.run(usage_listener.set, self._usage_listener(turn_id))
        task = asyncio.create_task(coro, name=name, context=context)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        # A bug, not an engine failure (those are handled where they happen): log it
        # with its traceback and tell the client, but keep the conversation going.
        name = getattr(task.get_coro(), "__qualname__", task.get_name())
        log.error("session task failed", task=name, error=repr(exc), exc_info=exc)
        if not self._closed:
            # The code and a safe message only: the exception's text is for the log.
            self._send_error("internal_error", "the server failed on this turn; go on talking")

    # ---- calls between the jobs (implemented by the mixins) -----------------------------

    def _ensure_turn(self, seed: list[np.ndarray]) -> UserTurn:
        raise NotImplementedError

    def _segment_ended(self, seg: Segment, last_speech_at: float) -> None:
        raise NotImplementedError

    def _endpointing(self, turn: UserTurn, heard: list[np.ndarray]) -> Coroutine[Any, Any, None]:
        raise NotImplementedError

    def _preempt(self, turn: UserTurn, text: str) -> None:
        raise NotImplementedError

    def _read_ahead(self, text: str) -> None:
        raise NotImplementedError

    def _forget_words_read(self) -> None:
        raise NotImplementedError

    def _keep_for_revision(self, turn: UserTurn, seg: Segment) -> None:
        raise NotImplementedError

    def _revise_later(self, turn: UserTurn, reply: Reply | None) -> None:
        raise NotImplementedError

    def _start_reply(
        self, turn_id: int, user_text: str | None, *, script: str | None = None, confirmed: bool
    ) -> Reply:
        raise NotImplementedError

    def _discard_reply(self, reply: Reply) -> None:
        raise NotImplementedError

    def _prefill_next_turn(self) -> None:
        raise NotImplementedError

    def _overlap_started(self, seg: Segment) -> None:
        raise NotImplementedError

    def _overlap_continues(self, seg: Segment, speech_secs: float) -> None:
        raise NotImplementedError

    def _overlap_stopped(self, seg: Segment, speech_secs: float) -> None:
        raise NotImplementedError

    def _join_tail(self, seg: Segment) -> None:
        raise NotImplementedError

    def _barge_in(self, *, reason: str, words: int = 0, heard_over: str = "") -> None:
        raise NotImplementedError

    def _adopt_overlaps(self) -> None:
        raise NotImplementedError

    def _act(self, reply: Reply) -> Coroutine[Any, Any, None]:
        raise NotImplementedError

    def request_handoff(self, reason: str, by: str = "caller") -> bool:
        raise NotImplementedError

    def _turn_for_person(self, turn: UserTurn, text: str) -> bool:
        raise NotImplementedError

    def _check_handoff_triggers(self, text: str) -> None:
        raise NotImplementedError

    def _note_turn_outcome(self, failed: bool) -> None:
        raise NotImplementedError

    def _end_call(self) -> None:
        raise NotImplementedError

    def _summarize_left_window(self) -> None:
        raise NotImplementedError

    def _update_state(self, turn_id: int, updates: dict[str, Any]) -> None:
        raise NotImplementedError
