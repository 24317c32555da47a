"""Listening: inbound audio → VAD windows → speech segments, their partial and final
transcripts, and the user turn they form."""

from __future__ import annotations

import asyncio
from collections import deque

import numpy as np

from parley.audio import pcm16_to_float
from parley.engines import EngineError, Transcript
from parley.telemetry import bind_turn, get_logger
from parley.voice.events import event
from parley.voice.response import safe_message
from parley.voice.segmenter import SpeechEdge
from parley.voice.session_core import SessionCore
from parley.voice.turns import TURN_AUDIO_SECS, Segment, UserTurn

log = get_logger(__name__)


class Listening(SessionCore):
    def _audio_loop_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._closed:
            return
        exc = task.exception()
        # Without its audio loop the session is deaf: say so loudly, to the log and client.
        log.error("audio loop failed", error=repr(exc), exc_info=exc)
        self._send_error("internal_error", "audio processing stopped; reconnect to resume")

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
        now = self._now()
        self._window_count += 1
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
        self.last_activity = self._now()
        self.sink.send_event(event("vad.speech_started", turn_id=self._current_turn_id()))
        if self._endpoint is not None:
            self._endpoint.cancel()  # speech resumed: the same turn goes on
            self._endpoint = None
        self._segment_count += 1
        reply = self._reply
        overlap = reply is not None and reply.confirmed
        self._segment = Segment(
            self._segment_count,
            [*preroll, window],
            overlap=overlap,
            onset_secs=self._window_count * self._window_secs - self._segmenter.speech_secs,
            first_window=self._window_count - len(preroll),
        )
        if overlap:
            self._overlaps.append(self._segment)
            self._overlap_started(self._segment)
            return
        if reply is not None:
            self._discard_reply(reply)  # preemptive work on a turn that is not over
        if self._turn is None:
            # Words the agent talked on over, as it finished, begin this turn.
            self._join_tail(self._segment)
        # The turn's audio: the segment's so far; this window joins it with every other.
        self._ensure_turn(self._segment.audio[:-1])

    def _during_speech(self) -> None:
        seg = self._segment
        if seg is None:
            return
        speech = self._segmenter.speech_secs
        silence = self._segmenter.trailing_silence_secs
        if seg.overlap:
            # The segmenter counts a trailing silence as speech until it ends the segment
            # (then takes it back): a 0.3 s hum must not last 0.45 s for barge-in. A
            # pause *inside* the speech ("No, | that's…") counts once the speech resumes.
            self._overlap_continues(seg, speech - silence)
            return
        if silence == 0.0 and seg.early is not None:
            # Speech went on: the early transcript, and any reply drafted on it, are stale.
            # Cancelled, not just forgotten: queued, it would hold the STT lane that the
            # next partial or final needs.
            seg.early.cancel()
            seg.early = None
            if self._turn is not None:
                self._turn.early_finals_discarded += 1
                self._turn.drop_text_scores()
            if self._reply is not None and not self._reply.confirmed:
                self._discard_reply(self._reply)
        elif silence >= self.settings.vad.early_final_secs and seg.early is None and self._turn:
            seg.early = self._spawn(self._early_final(self._turn, seg), turn_id=self._turn.turn_id)
            return
        cfg_stt = self.settings.stt
        if (
            silence == 0.0
            and cfg_stt.partials
            and speech - seg.last_partial_secs >= cfg_stt.partial_interval
            and not self.engines.stt.busy
        ):
            seg.last_partial_secs = speech
            self._spawn(self._partial(seg), turn_id=self._current_turn_id())

    def _on_speech_stopped(self, last_speech_at: float) -> None:
        self.last_activity = self._now()  # idle time counts from the end of speech
        self.sink.send_event(event("vad.speech_stopped", turn_id=self._current_turn_id()))
        seg, self._segment = self._segment, None
        if seg is None:
            return
        seg.stopped = True
        seg.stopped_at = last_speech_at
        seg.last_window = self._window_count
        seg.ended_secs = (
            self._window_count * self._window_secs - self._segmenter.trailing_silence_secs
        )
        if seg.overlap:
            self._overlap_stopped(seg, self._segmenter.speech_secs)
            return
        self._segment_ended(seg, last_speech_at)

    def _segment_ended(self, seg: Segment, last_speech_at: float) -> None:
        turn = self._ensure_turn(seg.audio)
        turn.last_speech_at = last_speech_at
        turn.marks["vad_stopped"] = self._now()  # when the VAD declared the silence
        self._keep_for_revision(turn, seg)
        final = self._spawn(self._finalize(turn, seg), turn_id=turn.turn_id)
        turn.finals.add(final)
        if self._endpoint is not None:
            # One endpointing decision per turn: the newest segment's replaces the last.
            self._endpoint.cancel()
        self._endpoint = self._spawn(self._endpointing(turn, list(turn.audio)), name="endpoint")

    def _ensure_turn(self, seed: list[np.ndarray]) -> UserTurn:
        if self._turn is None:
            maxlen = int(TURN_AUDIO_SECS / self._window_secs)
            self._turn = UserTurn(self._turn_count + 1, deque(seed, maxlen=maxlen))
            # The turn's timeline starts where its audio does (the preroll, or the whole
            # segment when speech over the agent became the turn).
            self._turn.marks["speech_started"] = self._now() - len(seed) * self._window_secs
            bind_turn(self._turn.turn_id)
        return self._turn

    async def _partial(self, seg: Segment) -> None:
        try:
            result = await self.engines.stt.transcribe(seg.samples())
        except EngineError:
            return  # a lost partial is harmless; the final reports errors
        if result.text and not seg.stopped and not seg.overlap:
            turn = self._turn
            if turn is not None:
                turn.marks.setdefault("first_partial", self._now())
            self._read_ahead(turn.text_with(seg.index, result.text) if turn else result.text)
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
        turn.marks["stt_started"] = self._now()
        seg.heard_windows = len(seg.audio)
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
            turn.marks["stt_started"] = self._now()
            seg.heard_windows = len(seg.audio)
            try:
                result = await self.engines.stt.transcribe(seg.samples())
            except EngineError as exc:
                log.warning("transcription failed", turn_id=turn.turn_id, error=repr(exc))
                self._send_error("stt_error", safe_message("stt_error"), turn.turn_id)
                turn.texts[seg.index] = ""
                return
        turn.texts[seg.index] = result.text
        turn.stt_ms = result.duration_ms
        turn.marks["stt_done"] = self._now()
        if result.text:
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
