"""The embedded LLM's prompt cache stays within its capacity, counting every byte an
entry holds (llama-cpp-python's own cache counted only the KV state, and grew by a
copy of the logits, 100 MB for SmolLM2, with every prompt it kept), drops the oldest
entries past it, and a restored prompt still answers exactly as a fresh one."""

from __future__ import annotations

from parley.engines.llama_prompt_cache import PromptCache
from parley.engines.llm_llama import default_model_path


def test_the_cache_holds_to_its_capacity_and_restored_prompts_answer_the_same() -> None:
    from llama_cpp import Llama

    llm = Llama(model_path=str(default_model_path()), n_ctx=512, n_threads=2, verbose=False)
    cache = PromptCache(capacity_bytes=1 << 40)

    def ask(prompt: str) -> str:
        return str(
            llm.create_completion(prompt, max_tokens=4, temperature=0.0)["choices"][0]["text"]
        )

    llm.set_cache(cache)
    prompts = [f"Question {i}: what is {i} plus {i}? Answer:" for i in range(8)]
    first = [ask(prompts[0])]
    (entry,) = cache.cache_state.values()
    assert entry.scores.shape[0] == 1  # one row of logits kept, not n_batch rows
    assert cache.cache_size == entry.llama_state_size + entry.scores.nbytes + entry.input_ids.nbytes
    # Room for three entries of this size: the oldest go first.
    cache.capacity_bytes = 3 * cache.cache_size + cache.cache_size // 2
    first += [ask(p) for p in prompts[1:]]
    assert 1 <= len(cache.cache_state) <= 3 and cache.cache_size <= cache.capacity_bytes
    kept = [key for key in cache.cache_state]
    assert all(llm.tokenize(prompts[0].encode())[:8] != list(key)[:8] for key in kept)
    # The last prompts are cached: asked again they are restored, and answer the same.
    assert [ask(p) for p in prompts[-2:]] == first[-2:]
