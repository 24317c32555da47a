"""Ending the user's turn: after a pause, decide whether they have finished (Smart Turn on
the audio, the text hint on the words), draft the reply early, and confirm the turn."""

from __future__ import annotations

import asyncio

import numpy as np

from parley.engines import device
from parley.engines.base import TextReadAhead
from parley.telemetry import get_logger
from parley.voice.endpointing import (
    EndOfTurnEvidence,
    audio_matters,
    finish_delay,
    words_matter,
)
from parley.voice.events import event
from parley.voice.response import safe_message
from parley.voice.session_core import SessionCore
from parley.voice.turns import UserTurn

log = get_logger(__name__)


class TurnEnding(SessionCore):
    async def _endpointing(self, turn: UserTurn, heard: list[np.ndarray]) -> None:
        """Decide when the turn ends. ``heard`` is the turn's audio as the VAD declared
        the silence: what Smart Turn hears (as Pipecat asks it, at the VAD's stop),
        whenever it runs, the same on an idle worker and a busy one. The evidence is
        gathered as soon as the transcript is in, not after ``min_endpointing_delay``:
        under load the models' lanes queue, and the turn still never ends before that
        delay (every delay ``finish_delay`` gives is at least it)."""
        cfg = self.settings.turn
        # The transcription first: it is on the path to the reply's first word, and on
        # two cores the end-of-turn models beside it would slow it; this only gates playback.
        await turn.transcribed()
        started = turn.marks["eou_started"] = self._now()
        turn.marks.pop("audio_scored", None)  # an earlier pause's, in this decision's place
        evidence = await self._end_of_turn_evidence(turn, heard)
        turn.marks["eou_done"] = self._now()
        turn.eou_model_ms = (turn.marks["eou_done"] - started) * 1000
        turn.eou_probability = evidence.p_audio
        turn.eou_text_probability = evidence.p_text
        # Every segment is transcribed by now: new segments only come with new speech,
        # which cancels this task.
        delay = finish_delay(evidence, cfg)
        turn.eou_delay = delay
        await asyncio.sleep(max(0.0, turn.last_speech_at + delay - self._now()))
        if self._endpoint is asyncio.current_task():
            self._endpoint = None
        self._confirm_turn(turn)

    async def _end_of_turn_evidence(
        self, turn: UserTurn, heard: list[np.ndarray]
    ) -> EndOfTurnEvidence:
        """Smart Turn on the audio and the text model on the words; the audio model only
        while its verdict can still change the decision. Side by side while the worker
        has a core per live session; on a busier one, the audio only once the words
        asked for it."""
        text = turn.text
        cfg = self.settings.turn
        words = self._text_score(turn, text)
        if not audio_matters(text, None, cfg):
            return EndOfTurnEvidence(text, None, await words)
        if not words.done() and not self._cores_to_spare():
            # Asked alongside, Smart Turn would mostly run for nothing: the words decide
            # most turns alone, and its call would take a core from the other sessions
            # (`make bench-load`: ~3 in 4 turns asked it, each ~55 ms of CPU). One after
            # the other costs a turn that needs both about a Smart Turn call (~50 ms) more,
            # part of it hidden in what is left of ``min_endpointing_delay``.
            await asyncio.wait({words})
        if words.done() and not audio_matters(text, _verdict(words), cfg):
            return EndOfTurnEvidence(text, None, _verdict(words))
        audio: asyncio.Future[float | None] = asyncio.ensure_future(
            self._audio_score(turn, np.concatenate(heard))
        )
        try:
            done, _ = await asyncio.wait({audio, words}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            audio.cancel()  # speech resumed: nobody will read it
            raise
        if words in done and not audio.done() and not audio_matters(text, _verdict(words), cfg):
            # The words decided while the audio model ran or queued: a queued call is
            # dropped from its lane, a running one's answer is not waited for.
            audio.cancel()
            return EndOfTurnEvidence(text, None, _verdict(words))
        p_audio, p_text = await asyncio.gather(audio, words, return_exceptions=True)
        if isinstance(p_audio, BaseException):
            if not isinstance(p_audio, Exception):
                raise p_audio
            log.warning("end-of-turn model failed", turn_id=turn.turn_id, error=repr(p_audio))
            self._send_error("eou_error", safe_message("eou_error"), turn.turn_id)
            p_audio = 1.0 if cfg.max_endpointing_delay == 0 else 0.0
        if isinstance(p_text, asyncio.CancelledError):
            p_text = None  # its call was dropped (a lane shut down): the audio decides
        elif isinstance(p_text, BaseException):
            raise p_text
        return EndOfTurnEvidence(text, p_audio, p_text)

    def _cores_to_spare(self) -> bool:
        """No more sessions with audio flowing than this machine has cores, or Smart
        Turn runs elsewhere (a GPU): then a call asked for nothing costs no session."""
        if getattr(self.engines.eou, "device", "cpu") != "cpu":
            return True
        live = getattr(self.engines.vad, "live_streams", None)
        return live is None or live() <= device.cpu_count()

    async def _audio_score(self, turn: UserTurn, audio: np.ndarray) -> float:
        p = await self.engines.eou.completion_probability(audio)
        turn.marks["audio_scored"] = self._now()
        return p

    def _text_score(self, turn: UserTurn, text: str) -> asyncio.Future[float | None]:
        """The words' P(finished) for ``text``: begun when the text was first known (the
        early transcript), so the endpointing decision rarely waits for it."""
        task = turn.text_scores.get(text)
        if task is None:
            task = self._spawn(self._score_text(turn, text))
            turn.text_scores = {text: task}  # only the latest text is ever asked again
        return asyncio.shield(task)

    async def _score_text(self, turn: UserTurn, text: str) -> float | None:
        model = self.engines.eou_text
        # After a dangling last word the delay is decided without it: its answer would be
        # read by nobody (it is the largest share of a busy worker's CPU per turn).
        if model is None or not text or not words_matter(text, self.settings.turn):
            return None
        try:
            if isinstance(model, TextReadAhead):
                self._stop_reading_ahead()  # older words than these: nobody needs them now
                p = await model.completion_probability(text, caller=self.session_id)
            else:
                p = await model.completion_probability(text)
            if turn.text_scores.get(text) is asyncio.current_task():
                turn.marks["words_scored"] = self._now()  # the latest text's only
            return p
        except Exception as exc:
            # The words' model is an extra signal: without it the audio rule decides.
            log.warning("text end-of-turn failed", error=repr(exc))
            return None

    def _read_ahead(self, text: str) -> None:
        """Let the words' model read ``text`` (a partial transcript of the turn) while the
        caller still speaks: its verdict when they stop then reads only the words since."""
        model = self.engines.eou_text
        if not text or not self.settings.turn.text_read_ahead:
            return
        if not isinstance(model, TextReadAhead):
            return
        self._stop_reading_ahead()  # one at a time: only the newest words are worth reading
        self._reading_ahead = self._spawn(self._read_words(model, text))

    async def _read_words(self, model: TextReadAhead, text: str) -> None:
        try:
            await model.read_ahead(text, self.session_id)
        except Exception as exc:
            # Only a head start is lost: the verdict reads the words itself.
            log.debug("text read-ahead failed", error=repr(exc))

    def _stop_reading_ahead(self) -> None:
        if self._reading_ahead is not None:
            self._reading_ahead.cancel()  # queued, it is dropped; running, it finishes
            self._reading_ahead = None

    def _forget_words_read(self) -> None:
        self._stop_reading_ahead()
        model = self.engines.eou_text
        if isinstance(model, TextReadAhead):
            model.forget(self.session_id)

    def _preempt(self, turn: UserTurn, text: str) -> None:
        """Draft the reply to ``text`` while the end-of-turn decision is pending."""
        if self._turn is not turn or not text:
            return
        self._text_score(turn, text)
        if not self.settings.turn.preemptive_generation or self.handoff_state == "human":
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
            # Its number is not used up: the next turn takes it (numbers stay continuous
            # with the stored turns, which never see a word-less turn).
            log.info("turn dropped: no words", turn_id=turn.turn_id)
            return
        self._turn_count = turn.turn_id
        turn.confirmed_at = turn.marks["confirmed"] = self._now()
        self._forget_words_read()  # the next turn's words begin afresh
        self.sink.send_event(
            event(
                "turn.ended",
                turn_id=turn.turn_id,
                text=text,
                eou_probability=_rounded(turn.eou_probability),
                eou_text_probability=_rounded(turn.eou_text_probability),
                eou_delay=turn.eou_delay,
            )
        )
        # The caller's words reach the logs at INFO only with their consent
        # (``consent.log_transcripts``); otherwise only at DEBUG, for a developer.
        if self.log_transcripts:
            log.info("turn ended", turn_id=turn.turn_id, text=text)
        else:
            log.info("turn ended", turn_id=turn.turn_id, words=len(text.split()))
            log.debug("turn transcript", turn_id=turn.turn_id, text=text)
        self._record_turn(turn)
        if self.recorder is not None:
            self.recorder.event(
                "turn.ended",
                turn.turn_id,
                {
                    "eou_probability": turn.eou_probability,
                    "eou_text_probability": turn.eou_text_probability,
                    "eou_delay": turn.eou_delay,
                    "segments": len(turn.texts),
                },
            )
        if self._turn_for_person(turn, text):
            self._revise_later(turn, None)
            return
        reply = self._reply
        if reply is None or reply.turn_id != turn.turn_id or reply.user_text != text:
            if reply is not None:
                self._discard_reply(reply)
            reply = self._start_reply(turn.turn_id, text, confirmed=False)
        turn.history_index = self.history.add_user(text)
        reply.user_turn = turn
        reply.open_gate()
        self._send_state("thinking")
        if self.actions is not None:
            # Only now: a draft (an unconfirmed reply) never acts.
            self._spawn(self._act(reply))
        self._check_handoff_triggers(text)
        self._revise_later(turn, reply)

    def _record_turn(self, turn: UserTurn) -> None:
        """Store a turn the user finished (or, at close, began): the turn, then its final
        segments — only now, so a word-less or never-confirmed turn leaves no trace under a
        number another turn will take."""
        if self.recorder is None:
            return
        self.recorder.turn_started(turn.turn_id, turn.text)
        for index, text in sorted(turn.texts.items()):
            if text:
                self.recorder.segment(turn.turn_id, index, text)


def _rounded(p: float | None) -> float | None:
    return None if p is None else round(p, 3)


def _verdict(words: asyncio.Future[float | None]) -> float | None:
    """The words' verdict, once done; None if its call was dropped (a lane shut down):
    the turn is then decided without it, never left open."""
    return None if words.cancelled() else words.result()
