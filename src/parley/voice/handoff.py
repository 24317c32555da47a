"""Handing the conversation to a person, and back.

Three states: ``agent`` (the agent answers), ``requested`` (someone asked for a person;
the agent still answers until one takes over) and ``human`` (a supervisor took over: the
agent neither speaks nor answers, but keeps transcribing the caller into the record; the
supervisor's voice goes to the caller and, transcribed, into the history). Handing back
returns to ``agent``, and the agent's next answer sees what the person said, marked as a
person's words.

Triggers: the caller asks for a person (words matching ``handoff.request_phrases``, the
envelope's ``escalate``, the ``handoff`` control, a phone's handoff key), repeated failure
(``handoff.after_failed_turns`` failed turns or ``handoff.after_repeats`` repeated or
corrected turns in a row) and a supervisor pressing "take over". Each change is a
``handoff.requested`` / ``handoff.accepted`` / ``handoff.returned`` event and timeline
entry with who, why and when.
"""

from __future__ import annotations

import asyncio
import difflib
import re
import time
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np

from parley.store import TurnState
from parley.telemetry import get_logger
from parley.voice.events import event
from parley.voice.session_core import SessionCore
from parley.voice.turns import UserTurn

log = get_logger(__name__)

HUMAN_SPEECH_RMS = 0.02
"""A supervisor's 20 ms frame above this level (full scale 1.0) is speech. A level gate,
not the VAD: the supervisor speaks into a headset, and the gate costs nothing per frame."""
HUMAN_PAUSE_SECS = 0.7
"""Silence that ends one of the supervisor's utterances (it is then transcribed)."""
HUMAN_MAX_SECS = 20.0
"""An utterance longer than this is transcribed in pieces (bounded memory and STT input)."""
HAND_BACK_WAIT_SECS = 3.0
"""How long handing back waits for the person's last words to be transcribed (shorter
than a remote command's timeout, so the console hears the outcome)."""
CORRECTION = re.compile(r"^\s*(no[,.! ]|nope\b|that'?s not|not what i|i said\b|wrong\b)", re.I)
"""A turn that opens like this corrects the agent: it counts as a repeat."""

Transfer = Callable[[str, str], Coroutine[Any, Any, None]]
"""A transport's own way of reaching a person (a phone line's warm transfer): called with
(who asked, why) instead of waiting for a supervisor."""


class Handoff(SessionCore):
    handoff_transfer: Transfer | None = None
    """Set by a transport that transfers the caller itself (a phone line with a transfer
    number)."""
    on_end_call: Callable[[], None] | None = None
    """Set by the transport: end the conversation once the agent said goodbye (envelope
    ``end_call``); a phone line hangs up through the carrier's API."""
    _supervisor: str | None = None
    _failed_streak = 0
    _repeat_streak = 0
    _last_user_text = ""
    _human_frames: list[np.ndarray] | None = None
    _human_silence = 0.0
    _human_pending: set[asyncio.Task[None]] | None = None
    _human_quiet: asyncio.TimerHandle | None = None
    _holder: str | None = None
    _handing_back = False

    # ---- requests ------------------------------------------------------------------------

    def request_handoff(self, reason: str, by: str = "caller") -> bool:
        """Ask for a person. False when one is already asked for or on the line."""
        if self.handoff_state != "agent" or self._closed:
            return False
        self.handoff_state = "requested"
        reason = reason[:200]
        self._handoff_event("handoff.requested", by=by, reason=reason)
        # The reason may quote the caller (a client's own words, the LLM's): not at INFO.
        log.info("handoff requested", by=by)
        log.debug("handoff reason", reason=reason)
        transfer = self.handoff_transfer
        if transfer is not None:
            self._stop_agent(reason="handoff")
            self._spawn(transfer(by, reason), name="handoff-transfer")
        return True

    @property
    def holder(self) -> str | None:
        """Who has the conversation (a supervisor's unique id), while a person has it."""
        return self._holder if self.handoff_state == "human" else None

    def take_over(self, by: str, holder: str | None = None, *, force: bool = False) -> bool:
        """A person takes the conversation: the agent stops talking (what the caller heard
        is kept) and stops answering. ``by`` names them in events; ``holder`` tells them
        apart (two supervisors may share a name). False when someone has it already,
        unless ``force`` (the holder left: a colleague takes it from them)."""
        holder = holder or by
        if self._closed or self._handing_back:
            return False
        if self.handoff_state == "human" and not (force and holder != self._holder):
            return False
        if self.handoff_state == "agent":  # a supervisor stepped in unasked: say so first
            self.handoff_state = "requested"
            self._handoff_event("handoff.requested", by=by, reason="supervisor took over")
        if self.handoff_state == "human":
            self._flush_human_speech()  # the previous holder's last words are theirs
        else:
            self._stop_agent(reason="takeover")
        self.handoff_state = "human"
        self._supervisor = by
        self._holder = holder
        self._human_frames = []
        self._human_silence = 0.0
        self._handoff_event(
            "handoff.accepted", by=by, reason="forced" if force else "", holder=holder
        )
        self._send_state("listening")
        log.info("handoff accepted", by=by)
        return True

    async def hand_back(self, by: str) -> bool:
        """The person hands the conversation back; their last words are transcribed into
        the history first, so the agent's next answer knows them. False when no person
        has it (or it is being handed back already)."""
        if self.handoff_state != "human" or self._handing_back or self._closed:
            return False
        self._handing_back = True
        try:
            self._flush_human_speech()
            self._human_frames = None  # what comes now is not theirs to say any more
            pending = list(self._human_pending or ())
            if pending:
                await asyncio.wait(pending, timeout=HAND_BACK_WAIT_SECS)
            if self._closed or self.handoff_state != "human":
                return False
            self.handoff_state = "agent"
            self._supervisor = self._holder = None
            self._failed_streak = self._repeat_streak = 0
            self._handoff_event("handoff.returned", by=by, reason="")
            log.info("handoff returned", by=by)
            self._prefill_next_turn()
            return True
        finally:
            self._handing_back = False

    def handoff_snapshot(self) -> tuple[str, str | None, str | None]:
        """Who has the conversation, for the session that replaces this one (a reconnect)."""
        return self.handoff_state, self._supervisor, self._holder

    def restore_handoff(self, snapshot: tuple[str, str | None, str | None]) -> None:
        state, supervisor, holder = snapshot
        if state in ("requested", "human"):
            self.handoff_state = state  # type: ignore[assignment]
            self._supervisor, self._holder = supervisor, holder
            if state == "human":
                self._human_frames = []

    def withdraw_handoff(self, by: str, reason: str) -> bool:
        """A request nobody can take after all (a phone transfer that failed): the agent
        has the conversation again, and a new request may be made. False unless one was
        pending."""
        if self.handoff_state != "requested":
            return False
        self.handoff_state = "agent"
        self._handoff_event("handoff.returned", by=by, reason=reason)
        log.info("handoff withdrawn", by=by, reason=reason)
        return True

    def _handoff_event(self, kind: str, *, by: str, reason: str, holder: str | None = None) -> None:
        """``holder``: kept in the record only (a reconnect restores who has the call)."""
        data: dict[str, Any] = {"by": by, "reason": reason, "at": round(time.time(), 3)}
        self.sink.send_event(event(kind, session_id=self.session_id, **data))
        if self.recorder is not None:
            self.recorder.event(kind, None, {**data, "holder": holder} if holder else data)

    def _stop_agent(self, *, reason: str) -> None:
        reply = self._reply
        if reply is None or reply.task is asyncio.current_task():
            return  # none, or the reply itself asked (it ends on its own)
        if reply.confirmed:
            self._barge_in(reason=reason)
        else:
            self._discard_reply(reply)

    async def say(self, text: str) -> None:
        """Say ``text`` now (a scripted line: no LLM), stopping whatever the agent was
        saying, and return once it was played out to the transport."""
        self._stop_agent(reason="handoff")
        reply = self._start_reply(self._turn_count, None, script=text, confirmed=True)
        if reply.task is not None:
            await asyncio.wait({reply.task})

    # ---- the person on the line ----------------------------------------------------------

    def human_audio(self, pcm: bytes) -> None:
        """One stretch of the supervisor's PCM16 16 kHz speech, while they have the
        conversation: it goes to the caller, and is transcribed utterance by utterance."""
        if self.handoff_state != "human" or self._closed or not pcm:
            return
        send = getattr(self.sink, "send_human_audio", self.sink.send_audio)
        send(pcm)
        samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], "<i2").astype(np.float32) / 32768.0
        frames = self._human_frames
        if frames is None or samples.size == 0:
            return
        loud = float(np.sqrt(np.mean(samples * samples))) >= HUMAN_SPEECH_RMS
        secs = samples.size / 16_000
        if loud:
            frames.append(samples)
            self._human_silence = 0.0
        elif frames:
            frames.append(samples)
            self._human_silence += secs
        heard = sum(f.size for f in frames) / 16_000
        if frames and (self._human_silence >= HUMAN_PAUSE_SECS or heard >= HUMAN_MAX_SECS):
            self._flush_human_speech()
        # A microphone that stops sending (the supervisor closed the page, muted, or the
        # connection dropped) ends the utterance too: no silence frames will come.
        if self._human_quiet is not None:
            self._human_quiet.cancel()
        loop = asyncio.get_running_loop()
        self._human_quiet = loop.call_later(HUMAN_PAUSE_SECS, self._flush_human_speech)

    def _flush_human_speech(self) -> None:
        if self._human_quiet is not None:
            self._human_quiet.cancel()
            self._human_quiet = None
        frames = self._human_frames
        if self._closed:
            return
        if not frames:
            return
        self._human_frames = []
        self._human_silence = 0.0
        audio = np.concatenate(frames)
        if self._human_pending is None:
            self._human_pending = set()
        task = self._spawn(self._transcribe_human(audio, self._supervisor), name="human-speech")
        self._human_pending.add(task)
        task.add_done_callback(self._human_pending.discard)

    async def _transcribe_human(self, audio: np.ndarray, by: str | None) -> None:
        result = await self.engines.stt.transcribe(audio)
        text = result.text.strip()
        if not text or self._closed:
            return
        self.history.add_human(text)
        turn_id = self._turn_count
        self.sink.send_event(event("human.text", turn_id=turn_id, text=text, by=by))
        if self.recorder is not None:
            # Kept as the caller's words are: redacted when the server redacts them.
            stored = self.recorder.stored_text(text)
            self.recorder.event("human.said", turn_id, {"by": by, "text": stored})

    # ---- turns while handed off, and the triggers ----------------------------------------

    def _turn_for_person(self, turn: UserTurn, text: str) -> bool:
        """Called as a caller's turn is confirmed: True when a person has the conversation
        (the turn is kept in the record and history, and nobody's reply is started)."""
        if self.handoff_state != "human":
            return False
        reply = self._reply
        if reply is not None:
            self._discard_reply(reply)
        turn.history_index = self.history.add_user(text)
        if self.recorder is not None:
            self.recorder.turn_finished(
                turn.turn_id, TurnState.COMPLETED, {"handled_by": "human", "by": self._supervisor}
            )
        self._send_state("listening")
        return True

    def _check_handoff_triggers(self, text: str) -> None:
        """After a confirmed turn: does the caller ask for a person, or keep repeating?"""
        previous, self._last_user_text = self._last_user_text, text
        if self.handoff_state != "agent":
            return
        settings = self.settings.handoff
        if any(re.search(p, text, re.I) for p in settings.request_phrases):
            self.request_handoff("the caller asked for a person", by="caller")
            return
        alike = bool(previous) and _alike(previous, text) >= settings.repeat_similarity
        if alike or (previous and CORRECTION.match(text)):
            self._repeat_streak += 1
        else:
            self._repeat_streak = 0
        limit = settings.after_repeats
        if limit is not None and self._repeat_streak >= limit:
            self.request_handoff(
                f"the caller repeated or corrected themselves {self._repeat_streak} turns in a row",
                by="agent",
            )

    def _note_turn_outcome(self, failed: bool) -> None:
        """After a reply: ``handoff.after_failed_turns`` failures in a row ask for a person."""
        self._failed_streak = self._failed_streak + 1 if failed else 0
        limit = self.settings.handoff.after_failed_turns
        if failed and limit is not None and self._failed_streak >= limit:
            self.request_handoff(f"{self._failed_streak} failed turns in a row", by="agent")

    def _end_call(self) -> None:
        """The agent said its goodbye (envelope ``end_call``): the transport ends it."""
        self._handoff_event_free("call.ending")
        if self.on_end_call is not None:
            self.on_end_call()

    def _handoff_event_free(self, kind: str) -> None:
        self.sink.send_event(event(kind, session_id=self.session_id))
        if self.recorder is not None:
            self.recorder.event(kind, None, {"by": "agent"})


def _alike(a: str, b: str) -> float:
    def letters(s: str) -> str:
        return re.sub(r"[^a-z0-9 ]", "", s.lower()).strip()

    return difflib.SequenceMatcher(None, letters(a), letters(b)).ratio()
