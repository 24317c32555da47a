"""Barge-in: the caller's speech while the agent talks.

At its first window the agent's voice is ducked (unless the speech is the agent's own
echo), so the caller hears at once that they were heard. From ``min_duration`` on it is
transcribed every ``check_interval`` and once more when it ends: words that are not a
backchannel ("no", "wait", "sorry, that's…") stop the reply; a backchannel ("yeah",
"mm-hmm", "got it"), a cough or noise (no words) or an echo restore the volume and the
agent goes on. Speech with words longer than ``max_backchannel_secs`` interrupts too.
"""

from __future__ import annotations

from parley.engines import EngineError, Transcript
from parley.store import TurnState
from parley.telemetry import get_logger
from parley.voice.backchannel import Overlap, classify_overlap, repeats_agent
from parley.voice.echo import echo_similarity
from parley.voice.events import event
from parley.voice.session_core import SessionCore
from parley.voice.turns import Segment

log = get_logger(__name__)


class BargeIn(SessionCore):
    def _overlap_started(self, seg: Segment) -> None:
        """Speech began over a confirmed reply."""
        # Judged on its own first window: a caller's words in front would hide an echo.
        seg.echo = self._sounds_like_echo(seg)
        self._join_tail(seg)  # an echo at onset is judged again, with more audio, later
        if not seg.echo and self.settings.interruption.enabled:
            self._set_agent_gain(self.settings.interruption.duck_gain)

    def _join_tail(self, seg: Segment) -> None:
        """``seg`` carries the last overlap that was let go if it follows it closely: the
        caller's "Wait, | stop, | I have…" is one utterance, judged and kept whole. Each
        stretch alone is shorter than ``min_duration`` and would be dropped."""
        tail, self._overlap_tail = self._overlap_tail, None
        gap = self.settings.interruption.join_pause_secs
        if tail is not None and seg.onset_secs - tail.ended_secs <= gap:
            self._carry(tail, seg)

    @staticmethod
    def _carry(tail: Segment, seg: Segment) -> None:
        """Put ``tail``'s audio and speech in front of the later ``seg``'s."""
        shared = max(0, tail.last_window - seg.first_window + 1)  # seg's pre-roll is in both
        seg.audio[:shared] = tail.audio
        seg.first_window = tail.first_window
        seg.onset_secs = tail.onset_secs
        seg.carried_secs += tail.speech_secs
        seg.speech_secs += tail.speech_secs

    def _overlap_continues(self, seg: Segment, speech_secs: float) -> None:
        cfg = self.settings.interruption
        seg.speech_secs = seg.carried_secs + speech_secs
        if seg.stop_words is not None:
            if seg.speech_secs >= cfg.min_duration and seg.check is None:
                self._barge_in(
                    reason="speech", words=len(seg.stop_words.split()), heard_over=seg.stop_words
                )
            return
        if (
            cfg.enabled
            and seg.check is None
            and speech_secs >= cfg.first_check_secs
            and speech_secs - seg.last_check_secs >= cfg.check_interval
        ):
            seg.last_check_secs = speech_secs
            seg.check = self._spawn(self._check_barge_in(seg), turn_id=self._talked_over())

    def _overlap_stopped(self, seg: Segment, speech_secs: float) -> None:
        seg.speech_secs = seg.carried_secs + speech_secs
        if seg.check is not None:
            return  # the running check sees that it stopped and judges it whole
        cfg = self.settings.interruption
        # Shorter speech never interrupts: on a hum or a click of a few hundred ms Whisper
        # invents words ("Hey, Cap.", "Take it.").
        if cfg.enabled and seg.speech_secs >= cfg.min_duration:
            seg.check = self._spawn(self._check_barge_in(seg), turn_id=self._talked_over())
        else:
            self._overlap_settled(seg, Overlap.NOTHING, "", short=cfg.enabled)

    def _talked_over(self) -> int | None:
        """The turn whose reply speech overlaps: a barge-in check's calls are its."""
        return self._reply.turn_id if self._reply is not None else None

    def _sounds_like_echo(self, seg: Segment) -> bool:
        reply = self._reply
        if reply is None or reply.playout.echo is None:
            return False
        seg.echo_similarity = echo_similarity(seg.samples(), reply.playout.echo.recent())
        return seg.echo_similarity >= self.settings.interruption.echo_threshold

    async def _check_barge_in(self, seg: Segment) -> bool:
        """Judge the overlap ``seg`` from its words so far; stop the reply if it is a real
        interruption. Loops once more if the speech ended while it was being transcribed."""
        while True:
            finished = seg.stopped
            seg.echo = self._sounds_like_echo(seg)
            text = ""
            cfg = self.settings.interruption
            # Wordless sound going on past a backchannel's length (a TV, traffic) is
            # noise: the agent goes on at full volume while it is still listened to.
            long = seg.speech_secs > cfg.max_backchannel_secs
            if not seg.echo:
                self._set_agent_gain(1.0 if long else cfg.duck_gain)
                try:
                    result = await self.engines.stt.transcribe(seg.samples())
                except EngineError:
                    result = None
                text = "" if result is None else self._sure_words(result)
                seg.words = text
            reply = self._reply
            if reply is None or not reply.confirmed or not seg.overlap:
                seg.check = None
                self._overlap_settled(seg, Overlap.NOTHING, text)
                return False
            verdict = classify_overlap(text, finished=finished)
            if verdict is not Overlap.NOTHING and repeats_agent(text, reply.playout.recent_text()):
                seg.echo, verdict = True, Overlap.NOTHING
            log.debug(
                "overlap check",
                speech_secs=round(seg.speech_secs, 2),
                echo_similarity=round(seg.echo_similarity, 2),
                text=text,
                verdict=verdict.value,
            )
            stop = verdict is Overlap.INTERRUPTION or (verdict is not Overlap.NOTHING and long)
            if stop and seg.speech_secs >= cfg.min_duration:
                seg.check = None
                self._barge_in(reason="speech", words=len(text.split()), heard_over=text)
                return True
            if stop and not finished and not seg.stopped:
                # Words that stop it, heard early: it stops once the speech has lasted
                # min_duration (a short sound that merely sounded like words never does).
                seg.stop_words = text
                seg.check = None
                return False
            if finished:
                seg.check = None
                self._overlap_settled(seg, verdict, text)
                return False
            if not seg.stopped:
                seg.check = None
                return False
            # It ended while being transcribed: judge the whole of it once more.

    def _sure_words(self, result: Transcript) -> str:
        """The overlap's words, or "" when the model is unsure of them: on a short hum or
        click Whisper invents a word or two ("I kept", "Hey, Cap.")."""
        floor = self.settings.interruption.min_avg_logprob
        if result.avg_logprob is not None and result.avg_logprob < floor:
            return ""
        return result.text

    def _overlap_settled(
        self, seg: Segment, verdict: Overlap, text: str, *, short: bool = False
    ) -> None:
        """``seg`` was no interruption: the agent goes on at full volume. ``short``: it
        was shorter than ``min_duration``, too short to be judged by its words."""
        if seg in self._overlaps:
            self._overlaps.remove(seg)
        if seg.overlap and seg.stopped and not seg.echo and (seg.words or seg.stop_words):
            self._keep_tail(seg)
        # Words that would have stopped the agent, in speech too short to believe them.
        short = short or verdict is Overlap.INTERRUPTION
        kind = "echo" if seg.echo else "short" if short else verdict.value
        if seg.overlap and self._reply is not None:
            log.info("overlap ignored", kind=kind)
            self.sink.send_event(event("overlap.ignored", kind=kind, text=text))
            if self.recorder is not None:
                self.recorder.event(
                    "overlap.ignored", self._reply.turn_id, {"kind": kind, "text": text}
                )
        if not any(s.check is not None or not s.stopped for s in self._overlaps):
            self._set_agent_gain(1.0)

    def _keep_tail(self, seg: Segment) -> None:
        """Words let go may begin an utterance: the next stretch, if it follows closely,
        carries them — one begun while ``seg`` was being judged at once, a later one when
        it starts."""
        later = next((s for s in self._overlaps if s.first_window > seg.first_window), None)
        if later is None:
            self._overlap_tail = seg
        elif later.onset_secs - seg.ended_secs <= self.settings.interruption.join_pause_secs:
            self._carry(seg, later)

    def _set_agent_gain(self, gain: float) -> None:
        """Duck (gain < 1) or restore the agent's voice."""
        if self._reply is not None:
            self._reply.playout.gain = gain

    def _barge_in(self, *, reason: str, words: int = 0, heard_over: str = "") -> None:
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
                caller_text=heard_over,
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
        if reason != "disconnected":
            self._adopt_overlaps()

    def _adopt_overlaps(self) -> None:
        """The agent stopped (interrupted, or done) while the user was talking over it:
        every open stretch of that speech — the one that interrupted, any that stopped
        while its check ran, the one still going on — joins the user's next turn, in order."""
        segments, self._overlaps = self._overlaps, []
        for seg in segments:
            if not seg.overlap or (seg.echo and seg.stopped):
                continue  # a finished echo of the agent is nobody's turn
            seg.overlap = False
            created = self._turn is None
            turn = self._ensure_turn(seg.audio)
            if not created:
                turn.audio.extend(seg.audio)
            if seg.stopped:
                self._segment_ended(seg, seg.stopped_at)
        current = self._segment
        if current is not None and not current.overlap and self._endpoint is not None:
            # The user is still speaking: the turn ends when this segment does.
            self._endpoint.cancel()
            self._endpoint = None
