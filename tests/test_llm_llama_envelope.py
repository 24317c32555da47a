"""The embedded model's envelope request, without loading a model: it gets the same
``llm.envelope_max_tokens`` budget as the remote one, and says why generation stopped
(a grammar keeps JSON valid only until the budget cuts it off)."""

from __future__ import annotations

from typing import Any

from parley.config import LLMSettings
from parley.engines import ChatMessage
from parley.engines.lanes import InferenceLane
from parley.engines.llm_llama import LlamaLLM
from parley.telemetry.usage import Usage, listening_for_usage


class FakeLlama:
    """Stands in for ``llama_cpp.Llama``: records the request, answers a cut-off reply."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def create_chat_completion(self, **request: Any) -> dict[str, Any]:
        self.requests.append(request)
        content = '{"spoken_text": "Booked", "tool_calls": [{"name": "book_table", "argu'
        return {
            "choices": [{"message": {"content": content}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 40, "completion_tokens": 300, "total_tokens": 340},
        }


async def test_the_envelope_budget_and_finish_reason_of_the_embedded_model():
    llm = LlamaLLM.__new__(LlamaLLM)  # no model file: only the request is under test
    fake = FakeLlama()
    llm._llm = fake  # type: ignore[assignment]
    llm._settings = LLMSettings(max_tokens=60, envelope_max_tokens=300)
    llm._lane = InferenceLane("llm-test", 1)
    llm._name, llm._model = "llama", "fake"
    used: list[Usage] = []
    try:
        with listening_for_usage(used.append):
            reply = await llm.complete_json([ChatMessage("user", "Book a table")], {})
    finally:
        llm.close()
    (request,) = fake.requests
    assert request["max_tokens"] == 300
    assert reply.text.endswith('"argu') and reply.finish_reason == "length" and reply.cut_off
    # llama.cpp's own counts, for the cost record (an embedded model's: free by default).
    assert used == [
        Usage("llm", "llama", "fake", embedded=True, input_tokens=40, output_tokens=300)
    ]
