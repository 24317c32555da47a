"""VoiceSession: one conversation — listen, decide the turn is over, respond, yield to barge-in.

The transport pushes PCM16 audio and control calls in; the session pushes events and
20 ms audio frames out through its :class:`SessionSink`. Everything here runs on the
event loop; every model call goes through an engine, which runs it off the loop.

The session's jobs live in modules of their own, joined here: ``listening`` (audio,
VAD, segments, transcripts), ``turn_ending`` (end of turn, early drafts, confirmation),
``replying``, ``barge_in`` and ``acting`` (tool calls); ``session_core`` holds the
state they share. This module is the transport's side: start, audio in, controls, close.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from parley.engines.fallback import failover_listener
from parley.store import TurnState
from parley.telemetry import bind_session, get_logger
from parley.telemetry.usage import usage_listener
from parley.voice.acting import Acting
from parley.voice.audio_rate import InboundAudioBudget
from parley.voice.barge_in import BargeIn
from parley.voice.events import Event, event
from parley.voice.handoff import Handoff
from parley.voice.listening import Listening
from parley.voice.memory import ConversationMemory
from parley.voice.remembering import Remembering
from parley.voice.replying import Replying
from parley.voice.response import Reply
from parley.voice.revising import Revising
from parley.voice.turn_ending import TurnEnding
from parley.voice.turns import Segment, UserTurn

__all__ = [
    "CLOSE_TIMEOUT_SECS",
    "AudioTooFast",
    "Segment",
    "SessionOverloaded",
    "UserTurn",
    "VoiceSession",
]

log = get_logger(__name__)

CLOSE_TIMEOUT_SECS = 5.0
"""How long closing waits for the session's cancelled tasks to end."""


class SessionOverloaded(RuntimeError):
    """Inbound audio arrives faster than the session can process it."""


class AudioTooFast(SessionOverloaded):
    """Inbound audio arrives faster than ``server.max_audio_rate`` × real time: it was
    dropped. ``first``: the first drop of this episode (tell the client once);
    ``persistent``: still too fast after ``server.audio_too_fast_close_secs`` (close)."""

    def __init__(self, message: str, *, first: bool, persistent: bool) -> None:
        super().__init__(message)
        self.first = first
        self.persistent = persistent


class VoiceSession(
    Listening, TurnEnding, Replying, BargeIn, Acting, Handoff, Remembering, Revising
):
    _audio_budget: InboundAudioBudget | None = None
    _unwatch: Callable[[], None] | None = None
    """Stops the process's background work from waiting on this session."""
    caller_audio_tap: Callable[[bytes], None] | None = None
    """Sees the caller's audio as it is admitted (a supervisor listening in)."""

    def restore(
        self,
        messages: list[tuple[str, str]],
        last_turn_id: int,
        memory: ConversationMemory | None = None,
    ) -> None:
        """Resume a conversation from the server's record (a reconnect): its history, its
        memory (summary and state), and turn ids that continue after the stored ones. No
        greeting is spoken then."""
        for role, text in messages:
            if role == "user":
                self.history.add_user(text)
            elif role == "human":  # what a person said after taking the call over
                self.history.add_human(text)
            else:
                self.history.add_assistant(text)
        if memory is not None:
            self.history.restore_memory(memory)
        self._turn_count = last_turn_id
        self._restored = True

    async def start(self) -> None:
        bind_session(self.session_id)
        # The engines are shared; a failover inside this session's work (every task is
        # spawned from here on, so it inherits this) is told to this session's timeline.
        failover_listener.set(self._on_failover)
        # Likewise each provider call's usage (costs): the session's own here, a turn's
        # in the tasks spawned for it (``_spawn(…, turn_id=)``).
        usage_listener.set(self._usage_listener(None))
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
        self.note_activity()
        # Background inference (revisions) waits while this session hears or answers.
        self._unwatch = self.engines.background.watch(self._live_now)
        self._audio_task = asyncio.create_task(self._audio_loop(), name="audio-in")
        self._audio_task.add_done_callback(self._audio_loop_ended)
        if self.settings.agent.greeting and not self._restored:
            self._start_reply(0, None, script=self.settings.agent.greeting, confirmed=True)
        self._prefill_next_turn()

    def _cancel_reply(self, reply: Reply) -> None:
        """The caller left mid-reply: what they heard is kept, the turn is cancelled."""
        self._reply = None
        if reply.task is not None:
            reply.task.cancel()
        heard = reply.playout.heard_text()
        self.history.add_assistant(heard)
        if self.recorder is not None:
            self.recorder.turn_finished(
                reply.turn_id, TurnState.CANCELLED, {"heard": heard, "reason": "caller_ended"}
            )

    def _on_failover(self, detail: dict[str, Any]) -> None:
        turn_id = self._reply.turn_id if self._reply is not None else self._current_turn_id()
        log.info("provider failover", turn_id=turn_id, **detail)
        if self.recorder is not None:
            self.recorder.event("provider.failover", turn_id, detail)

    def push_audio(self, pcm: bytes) -> None:
        """Queue inbound PCM16LE 16 kHz mono (any length, even byte count). Audio beyond
        ``server.max_audio_rate`` × real time is dropped (:class:`AudioTooFast`)."""
        if self._audio_budget is None:
            limits = self.settings.server
            self._audio_budget = InboundAudioBudget(
                limits.max_audio_rate, limits.audio_burst_secs, limits.audio_too_fast_close_secs
            )
        verdict = self._audio_budget.admit(len(pcm), self._now())
        if not verdict.admitted:
            raise AudioTooFast(
                f"audio is arriving faster than {self.settings.server.max_audio_rate:g}x "
                "real time; the excess is dropped (send it as it is captured)",
                first=verdict.first_drop,
                persistent=verdict.persistent,
            )
        if self.caller_audio_tap is not None and not self._muted:  # muted: heard by nobody
            self.caller_audio_tap(pcm)
        try:
            self._inbound.put_nowait(pcm)
        except asyncio.QueueFull as exc:
            raise SessionOverloaded("inbound audio queue is full") from exc

    @property
    def deaf(self) -> bool:
        """The audio loop died (a VAD call that timed out, a bug): the session hears
        nothing more, and its transport should close the connection."""
        task = self._audio_task
        return task is not None and task.done() and not self._closed

    def note_activity(self) -> None:
        """The caller did something (a control message): the session is not idle."""
        self.last_activity = self._now()

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
            handoff=self.handoff_state,
            history=[{"role": m.role, "content": m.content} for m in self.history.messages],
            memory={
                "summary": self.history.memory.summary,
                "covered": self.history.memory.covered,
                "state": self.history.memory.state,
            },
        )

    def mute(self) -> None:
        self._muted = True

    def unmute(self) -> None:
        self._muted = False

    async def close(self, *, ended_by_caller: bool = False) -> None:
        """``ended_by_caller``: the caller ended the session (hung up, ``end``) rather than
        the connection being lost: a reply being spoken is then ``cancelled`` — nobody
        will come back for it — instead of interrupted."""
        if self._closed:
            return
        reply = self._reply
        if reply is not None and reply.confirmed and reply.started_speaking:
            if ended_by_caller:
                self._cancel_reply(reply)
            else:
                # The connection went while the agent spoke: keep what the user heard, so
                # a reconnect's history (and transcript) has it, as after any interruption.
                self._barge_in(reason="disconnected")
        turn = self._turn
        if turn is not None and turn.text:
            # The user had spoken words the turn never got to confirm: they are kept, in
            # a turn recorded as started and then cancelled by the close below.
            self._turn_count = turn.turn_id
            self._record_turn(turn)
        self._closed = True
        self._forget_words_read()
        if self._unwatch is not None:
            self._unwatch()
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
