"""Replying: start a reply (drafted early or confirmed), run it, report its metrics when
its first audio goes out, and record how it ended."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

from parley.orchestration.envelope import ActionEnvelope
from parley.store import TurnState
from parley.telemetry import get_logger
from parley.voice.events import event
from parley.voice.playout import AudioPlayout
from parley.voice.response import (
    Reply,
    error_code,
    error_stage,
    run_reply,
    safe_message,
    unwrap_group_error,
)
from parley.voice.session_core import SessionCore
from parley.voice.turns import UserTurn

log = get_logger(__name__)


class Replying(SessionCore):
    def _start_reply(
        self, turn_id: int, user_text: str | None, *, script: str | None = None, confirmed: bool
    ) -> Reply:
        playout = AudioPlayout(self.sink, self.settings.playout.lead_secs, echo=self._echo)
        reply = Reply(turn_id, user_text, playout)
        if confirmed:
            reply.open_gate()
        asked = user_text
        if script is None and user_text is not None and self.knowledge is not None:
            # With tools the envelope decides (a booking request must reach its tool),
            # so the facts go to the model even when the agent would quote — unless the
            # agent file says which words ask for an action and none is in these.
            acts = self.actions is not None and self.knowledge.asks_for_tools(user_text)
            grounding = self.knowledge.ground(
                user_text, quote=not acts, last_said=self.history.last_reply
            )
            reply.facts = [f.text for f in grounding.facts]
            # The history keeps the caller's own words; only this prompt has the facts.
            asked = grounding.user_message(user_text)
            script = grounding.quote
        prompt = None if script is not None else self.history.prompt(pending_user=asked)
        if prompt is not None:
            self._summarize_left_window()
        decide = None
        if self.actions is not None and asked is not None and script is None:
            window = self.settings.agent.max_history_messages
            earlier = [(m.role, m.content) for m in self.history.messages][-window:]
            remembered = self.history.memory.system_prompt("").strip()
            decide = functools.partial(self.actions.decide, earlier, asked, remembered)
        self._reply = reply
        reply.task = self._spawn(
            self._run_reply(reply, prompt, script, decide), name="reply", turn_id=turn_id
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
                filler=self.phrases.filler if reply.user_text is not None else None,
            )
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            real = unwrap_group_error(exc)
            if not reply.confirmed:
                # A draft the user never saw: no error for it. If its turn is confirmed,
                # the reply starts again then (and reports its own failure, if any).
                log.info("draft failed", turn_id=reply.turn_id, error=repr(real))
                if self._reply is reply:
                    self._reply = None
                return
            log.warning("reply failed", turn_id=reply.turn_id, error=repr(real))
            code = error_code(real)
            stage = error_stage(real)
            self._send_error(code, safe_message(code, stage), reply.turn_id, stage)
            if self.recorder is not None:
                self.recorder.turn_finished(reply.turn_id, TurnState.FAILED, {"error": code})
            try:
                await self._apologise(reply)
            except Exception as exc:  # never leave the session holding a dead reply
                log.error("the apology failed", error=repr(exc), exc_info=exc)
            self.history.add_assistant(reply.playout.heard_text())
            failed = True
        else:
            self.history.add_assistant(reply.raw_text() or reply.full_text())
            self._prefill_next_turn()
            if self.recorder is not None:
                result: dict[str, Any] = {"spoken": reply.full_text()}
                if reply.facts:
                    result["facts"] = reply.facts
                if reply.envelope is not None:
                    result["envelope"] = reply.envelope.model_dump()
                self.recorder.turn_finished(reply.turn_id, TurnState.COMPLETED, result)
            failed = False
            if reply.envelope is not None and reply.envelope.end_call:
                self._end_call()
        if self._reply is reply:
            self._reply = None
            self._send_state("listening")
            self._adopt_overlaps()
        if reply.user_text is not None:  # a caller's turn (not the greeting, not a script)
            self._note_turn_outcome(failed)

    async def _apologise(self, reply: Reply) -> None:
        """Say the canned apology (synthesized at start-up: heard even when every speech
        provider is down) after a reply that failed."""
        apology = self.phrases.apology
        if apology is None or reply.user_text is None:
            return
        self._send_state("speaking")
        self.sink.send_event(event("agent.text", turn_id=reply.turn_id, text=apology.text))
        await reply.playout.play(apology.text, apology.audio)
        await reply.playout.finish()

    def _on_speaking(self, reply: Reply) -> None:
        self._send_state("speaking")
        turn = reply.user_turn
        if not isinstance(turn, UserTurn):
            return
        metrics = turn_metrics(turn, reply, self._now())
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


def turn_metrics(turn: UserTurn, reply: Reply, now: float) -> dict[str, Any]:
    """What ``turn.metrics`` reports as ``reply``'s first frame goes out at loop time ``now``."""

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
        "filler_ms": ms(
            None
            if reply.metrics.filler_at is None
            else reply.metrics.filler_at - turn.last_speech_at
        ),
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
        "filler": reply.metrics.filler_at,
        "first_frame": now,
    }
    # Each step in ms after the user's last speech: where the voice-to-voice time went.
    metrics["timeline_ms"] = {
        k: ms(v - turn.last_speech_at) for k, v in steps.items() if v is not None
    }
    return metrics
