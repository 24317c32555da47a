"""Revised finals: once a turn's reply is over, its whole audio is transcribed again as
one window (``stt.revise``), in the background, never on a turn's path.

A segment's final is transcribed on its own audio, often at the first silence (an early
final): a word cut at a segment boundary, or the tail of the last one, may be misheard.
The reviser — the live recognizer by default, or ``stt.reviser`` (a larger model, a
remote provider) — hears all of the turn's segments in one window. When its words
differ from the finals, the stored segments and the turn's user text are patched, the
history keeps the corrected words for later turns, the client gets one
``transcript.revised`` per changed segment, and the timeline a ``transcript.revision``.
Every attempt is on the timeline with its outcome (``revised``, ``unchanged``,
``skipped`` and why, ``failed``).

The audio lives in memory only (the turn's segments), at most ``stt.revise_max_secs``
of it per turn, and is let go as soon as the revision is done, skipped or dropped (the
session closing drops a pending revision: the finals stand). A revision never
re-answers or re-acts: the reply and its tool calls were decided on the finals.
"""

from __future__ import annotations

import asyncio
from typing import Any

from parley.engines import EngineError, Transcript
from parley.engines.background import BackgroundSkipped
from parley.engines.base import Reviser
from parley.telemetry import get_logger
from parley.voice.events import event
from parley.voice.response import Reply
from parley.voice.revision import differs, joined_audio, split_by_segments
from parley.voice.session_core import SessionCore
from parley.voice.turns import Segment, UserTurn

log = get_logger(__name__)

SAMPLE_RATE = 16_000


class Revising(SessionCore):
    def _live_now(self) -> bool:
        """The caller is speaking, being answered or judged: background inference waits."""
        if self._closed:
            return False
        return (
            self._turn is not None
            or self._segment is not None
            or self._reply is not None
            or bool(self._overlaps)
        )

    def _keep_for_revision(self, turn: UserTurn, seg: Segment) -> None:
        """Keep an ended segment of ``turn`` for its revision, within the bound."""
        if self.engines.reviser is None or not turn.revisable:
            return
        turn.segments[seg.index] = seg
        kept = sum(len(s.audio) for s in turn.segments.values()) * self._window_secs
        if kept > self.settings.stt.revise_max_secs:
            turn.revisable = False  # too long to revise: the audio goes now
            turn.segments.clear()

    def _revise_later(self, turn: UserTurn, reply: Reply | None) -> None:
        """Revise the confirmed ``turn`` once ``reply`` (its answer, if any) is over."""
        reviser = self.engines.reviser
        if reviser is None:
            return
        if not turn.revisable:
            self._record_revision(turn, reviser, "skipped", reason="too_long")
            return
        self._spawn(self._revise(turn, reviser, reply), name="revise")

    async def _revise(self, turn: UserTurn, reviser: Reviser, reply: Reply | None) -> None:
        try:
            await self._revision(turn, reviser, reply)
        finally:
            turn.segments.clear()  # the audio is let go, whatever happened

    async def _revision(self, turn: UserTurn, reviser: Reviser, reply: Reply | None) -> None:
        segments = [turn.segments[i] for i in sorted(turn.segments)]
        audio = joined_audio(segments)
        audio_secs = round(audio.size / SAMPLE_RATE, 2)
        if audio.size == 0:
            self._record_revision(turn, reviser, "skipped", reason="no_audio")
            return
        if reviser.name == "live" and len(segments) == 1:
            seg = segments[0]
            if seg.heard_windows >= len(seg.audio):
                # The same model on the same audio says the same words (greedy decoding).
                self._record_revision(turn, reviser, "skipped", reason="nothing_new")
                return
        if reply is not None and reply.task is not None:
            # Never beside the reply: it waits until the answer is over (or cut off).
            await asyncio.wait({reply.task})
        started = self._now()
        try:
            result = await self._transcribe(reviser, audio)
        except BackgroundSkipped as exc:
            self._record_revision(turn, reviser, "skipped", reason=exc.reason)
            return
        except (EngineError, TimeoutError) as exc:
            log.warning("revision failed", turn_id=turn.turn_id, error=repr(exc))
            self._record_revision(turn, reviser, "failed", reason=type(exc).__name__)
            return
        waited = (self._now() - started) * 1000 - result.duration_ms
        detail = {
            "audio_secs": audio_secs,
            "revise_ms": round(result.duration_ms, 1),
            "waited_ms": round(max(0.0, waited), 1),  # for the process to be quiet
        }
        previous, revised = turn.text, " ".join(result.text.split())
        if not revised or not differs(previous, revised):
            # Never erase words: a reviser that hears nothing does not revise.
            self._record_revision(turn, reviser, "unchanged", **detail)
            return
        self._apply_revision(turn, reviser, previous, revised, detail)

    async def _transcribe(self, reviser: Reviser, audio: Any) -> Transcript:
        if not reviser.local:
            return await reviser.stt.transcribe(audio)  # another machine's cores
        background = self.engines.background
        max_wait = self.settings.stt.revise_max_wait_secs
        return await background.run(lambda: reviser.stt.transcribe(audio), max_wait=max_wait)

    def _apply_revision(
        self,
        turn: UserTurn,
        reviser: Reviser,
        previous: str,
        revised: str,
        detail: dict[str, Any],
    ) -> None:
        # Every segment whose text changes at all (a full stop too): the turn's segments
        # joined stay its user text, in the record and on the client.
        parts = split_by_segments(turn.texts, revised)
        changed = {i: t for i, t in parts.items() if t != turn.texts.get(i, "")}
        if turn.history_index is not None:
            self.history.revise_user(turn.history_index, previous, revised)
        for index, text in sorted(changed.items()):
            self.sink.send_event(
                event(
                    "transcript.revised",
                    turn_id=turn.turn_id,
                    segment_id=index,
                    text=text,
                    previous_text=turn.texts.get(index, ""),
                    turn_text=revised,
                    recognizer=reviser.name,
                )
            )
        if self.log_transcripts:
            log.info("transcript revised", turn_id=turn.turn_id, text=revised, previous=previous)
        else:
            log.info("transcript revised", turn_id=turn.turn_id, segments=len(changed))
            log.debug("revised transcript", turn_id=turn.turn_id, text=revised)
        if self.recorder is not None:
            self.recorder.revision(turn.turn_id, changed, revised)
        stored = self.recorder.stored_text if self.recorder is not None else str
        self._record_revision(
            turn,
            reviser,
            "revised",
            segment_ids=sorted(changed),
            previous_text=stored(previous),
            **detail,
        )
        if self._reply is None:
            self._prefill_next_turn()  # the prompt's prefix changed: warm it again

    def _record_revision(self, turn: UserTurn, reviser: Reviser, outcome: str, **data: Any) -> None:
        log.debug("revision", turn_id=turn.turn_id, outcome=outcome, reason=data.get("reason"))
        if self.recorder is not None:
            self.recorder.event(
                "transcript.revision",
                turn.turn_id,
                {"outcome": outcome, "recognizer": reviser.name, **data},
            )
