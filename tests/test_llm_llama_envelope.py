"""The embedded model's envelope request, without loading a model: it gets the same
``llm.envelope_max_tokens`` budget as the remote one, and says why generation stopped
(a grammar keeps JSON valid only until the budget cuts it off)."""

from __future__ import annotations

from typing import Any

from parley.config import LLMSettings
from parley.engines import ChatMessage
from parley.engines.lanes import InferenceLane
from parley.engines.llm_llama import LlamaLLM


class FakeLlama:
    """Stands in for ``llama_cpp.Llama``: records the request, answers a cut-off reply."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def create_chat_completion(self, **request: Any) -> dict[str, Any]:
        self.requests.append(request)
        content = '{"spoken_text": "Booked", "tool_calls": [{"name": "book_table", "argu'
        return {"choices": [{"message": {"content": content}, "finish_reason": "length"}]}


async def test_the_envelope_budget_and_finish_reason_of_the_embedded_model():
    llm = LlamaLLM.__new__(LlamaLLM)  # no model file: only the request is under test
    fake = FakeLlama()
    llm._llm = fake  # type: ignore[assignment]
    llm._settings = LLMSettings(max_tokens=60, envelope_max_tokens=300)
    llm._lane = InferenceLane("llm-test", 1)
    try:
        reply = await llm.complete_json([ChatMessage("user", "Book a table")], {})
    finally:
        llm.close()
    (request,) = fake.requests
    assert request["max_tokens"] == 300
    assert reply.text.endswith('"argu') and reply.finish_reason == "length" and reply.cut_off
