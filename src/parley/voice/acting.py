"""Acting on the envelope: once a turn is confirmed, the reply's tool calls run through
the ledger (exactly once per stored turn and call), beside its speech."""

from __future__ import annotations

import asyncio

from parley.orchestration.envelope import ActionEnvelope
from parley.voice.events import event
from parley.voice.response import Reply
from parley.voice.session_core import SessionCore


class Acting(SessionCore):
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
        self._update_state(reply.turn_id, envelope.state_updates)
        if envelope.escalate:
            self.request_handoff(envelope.escalation_reason or "the agent escalated", by="agent")
        if not envelope.tool_calls:
            return
        stored = None
        if self.recorder is not None:
            stored = await self.recorder.stored_turn_id(reply.turn_id)
        if stored is None:
            self._send_error("tools_not_run", "the turn could not be stored", reply.turn_id)
            return
        for call in envelope.tool_calls:  # in order: a later call may depend on an earlier
            started = self._now()
            outcome = await self.actions.ledger.run(stored, call)
            details = {
                "call_id": call.id,
                "tool": call.name,
                "status": outcome.status,
                "duration_ms": round((self._now() - started) * 1000, 1),
            }
            self.sink.send_event(
                event("tool.result", turn_id=reply.turn_id, result=outcome.result, **details)
            )
            if self.recorder is not None:
                self.recorder.event("tool.result", reply.turn_id, details)
