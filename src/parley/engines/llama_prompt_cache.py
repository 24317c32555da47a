"""llama-cpp-python's RAM cache of prompt states, held to its capacity for real.

Each state the cache keeps also holds a copy of the model's logits for up to ``n_batch``
tokens (512 × the vocabulary × 4 bytes: 100 MB for SmolLM2, 0.5 GB for a 262k-token
vocabulary), but ``LlamaRAMCache`` counts only the KV state against its capacity, so a
process answering varied prompts grew by gigabytes (``make bench-answers`` reached 3.4 GB
with SmolLM2 and 19 GB with a Gemma model before it was stopped).

A restored state is always evaluated again from its last token before sampling
(llama-cpp-python sets ``_requires_eval`` in ``load_state``), so the logits it carries
are never read: an entry keeps a single row (``load_state`` broadcasts it), and every
byte it does hold counts against the capacity. That holds with ``logits_all=False`` (how
``LlamaLLM`` builds its model): with ``logits_all`` (or a draft model) the echo+logprobs
path reads the restored rows, so this cache is not for such a model.
"""

from __future__ import annotations

from typing import Any

from llama_cpp import LlamaRAMCache


class PromptCache(LlamaRAMCache):
    def __setitem__(self, key: Any, value: Any) -> None:
        value.scores = value.scores[-1:].copy()
        super().__setitem__(key, value)

    @property
    def cache_size(self) -> int:
        return sum(
            state.llama_state_size + state.scores.nbytes + state.input_ids.nbytes
            for state in self.cache_state.values()
        )
