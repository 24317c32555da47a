"""The embedded LLM's prompt cache stays within its capacity, counting every byte an
entry holds (llama-cpp-python's own cache counted only the KV state, and grew by a
copy of the logits, 100 MB for SmolLM2, with every prompt it kept), and a restored
prompt still answers exactly as a fresh one."""

from __future__ import annotations

from parley.engines.llama_prompt_cache import PromptCache
from parley.engines.llm_llama import default_model_path


def test_the_cache_holds_to_its_capacity_and_restored_prompts_answer_the_same() -> None:
    from llama_cpp import Llama

    llm = Llama(model_path=str(default_model_path()), n_ctx=512, n_threads=2, verbose=False)
    cache = PromptCache(capacity_bytes=64 << 20)
    llm.set_cache(cache)
    prompts = [f"Question {i}: what is {i} plus {i}? Answer:" for i in range(12)]
    first = [
        llm.create_completion(p, max_tokens=4, temperature=0.0)["choices"][0]["text"]
        for p in prompts
    ]
    assert cache.cache_size <= 64 << 20
    held = list(cache.cache_state.values())
    assert held and all(s.scores.shape[0] == 1 for s in held)
    vocab_row = held[0].scores.nbytes
    assert cache.cache_size == sum(
        s.llama_state_size + vocab_row + s.input_ids.nbytes for s in held
    )
    # The last prompts are cached: asked again they are restored, and answer the same.
    again = [
        llm.create_completion(p, max_tokens=4, temperature=0.0)["choices"][0]["text"]
        for p in prompts[-3:]
    ]
    assert again == first[-3:]
