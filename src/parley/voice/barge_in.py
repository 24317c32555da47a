"""Barge-in: user speech while the agent talks. A real interruption (it has words) stops
the reply at once and becomes the next turn, with every other stretch of speech that
overlapped it; short or word-less sounds (coughs, "mm-hm") are ignored."""

from __future__ import annotations

from parley.engines import EngineError
from parley.store import TurnState
from parley.telemetry import get_logger
from parley.voice.events import event
from parley.voice.session_core import SessionCore
from parley.voice.turns import Segment

log = get_logger(__name__)


class BargeIn(SessionCore):
    async def _check_barge_in(self, seg: Segment) -> bool:
        """Is this overlapping speech a real interruption? It must yield words."""
        try:
            result = await self.engines.stt.transcribe(seg.samples())
        except EngineError:
            result = None
        finally:
            seg.check = None
        words = 0 if result is None else len(result.text.split())
        if (
            result is None
            or words < self.settings.interruption.min_words
            or not seg.overlap
            or self._reply is None
            or not self._reply.confirmed
        ):
            self._overlap_settled(seg)
            return False
        self._barge_in(reason="speech", words=words)
        return True

    def _overlap_settled(self, seg: Segment) -> None:
        """``seg``'s check said "not an interruption": once it has stopped, it is dropped."""
        if seg.stopped and seg.check is None and seg in self._overlaps:
            self._overlaps.remove(seg)

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
        if reason != "disconnected":
            self._adopt_overlaps()

    def _adopt_overlaps(self) -> None:
        """The agent stopped (interrupted, or done) while the user was talking over it:
        every open stretch of that speech — the one that interrupted, any that stopped
        while its check ran, the one still going on — joins the user's next turn, in order."""
        segments, self._overlaps = self._overlaps, []
        for seg in segments:
            if not seg.overlap:
                continue
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
