"""Remembering: the messages that leave the prompt's window are summarized in the
background (never on a turn's path) and the envelopes' state updates are merged into
the conversation's state; both are kept on the session record."""

from __future__ import annotations

import asyncio
from typing import Any

from parley.store.repository import merge_state
from parley.telemetry import get_logger
from parley.voice.memory import ExcerptSummarizer, ModelSummarizer, Summarizer
from parley.voice.session_core import SessionCore

log = get_logger(__name__)


def choose_summarizer(session: SessionCore) -> Summarizer | None:
    agent = session.settings.agent
    kind = agent.memory_summary
    if kind == "off":
        return None
    if kind == "auto":
        kind = "excerpts" if session.settings.llm.provider == "llama" else "model"
    if kind == "model":
        return ModelSummarizer(session.engines.llm, agent.memory_summary_chars)
    return ExcerptSummarizer(agent.memory_summary_chars)


class Remembering(SessionCore):
    _summarizer: Summarizer | None = None
    _summarizer_chosen = False
    _summarizing: asyncio.Task[None] | None = None

    def _summarize_left_window(self) -> None:
        """Called once a prompt is built: if the window slid, bring the summary up to
        date in the background (one job at a time; it catches up on what it missed)."""
        if self._summarizing is not None or self.history.left_window() is None:
            return
        if not self._summarizer_chosen:
            self._summarizer, self._summarizer_chosen = choose_summarizer(self), True
        if self._summarizer is None:
            return
        self._summarizing = self._spawn(self._summarize(self._summarizer), name="summary")

    async def _summarize(self, summarizer: Summarizer) -> None:
        try:
            while (left := self.history.left_window()) is not None:
                messages, covered = left
                memory = self.history.memory
                kind = summarizer.kind
                started = self._now()
                try:
                    summary = await summarizer.summarize(memory.summary, messages)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # The model failed or wrote nothing: these messages are still
                    # remembered, as excerpts (a summary never blocks, never loses turns).
                    log.warning("summary by the model failed", error=repr(exc))
                    excerpts = ExcerptSummarizer(self.settings.agent.memory_summary_chars)
                    summary, kind = await excerpts.summarize(memory.summary, messages), "excerpts"
                memory.summary, memory.covered = summary, covered
                details: dict[str, Any] = {
                    "covered": covered,
                    "kind": kind,
                    "chars": len(summary),
                    "ms": round((self._now() - started) * 1000, 1),
                }
                log.info("conversation summarized", **details)
                if self.recorder is not None:
                    stored = {**memory.record(), "summary": self.recorder.stored_text(summary)}
                    self.recorder.memory(stored)
                    self.recorder.event("memory.summarized", None, details)
            # The system message changed: warm the next turn's prompt as it now starts.
            self._prefill_next_turn()
        finally:
            self._summarizing = None

    def _update_state(self, turn_id: int, updates: dict[str, Any]) -> None:
        """A confirmed reply's envelope settled something (e.g. a booking's party size)."""
        if not updates:
            return
        memory = self.history.memory
        memory.state = merge_state(memory.state, updates)
        if self.recorder is not None:
            self.recorder.state(updates)
            self.recorder.event("state.updated", turn_id, {"keys": sorted(updates)})
