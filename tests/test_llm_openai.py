"""The OpenAI-compatible provider client against a real HTTP server: streaming, JSON
mode, and the provider failures a voice agent meets (timeouts, errors, no server)."""

from __future__ import annotations

import pytest

from fake_llm_provider import ProviderScript, fake_provider
from parley.config import LLMSettings
from parley.engines import ChatMessage, EngineError
from parley.engines.llm_openai import OpenAICompatibleLLM
from parley.testing import free_port

HI = [ChatMessage("system", "Be brief."), ChatMessage("user", "Hi")]


def client(base_url: str, **settings: object) -> OpenAICompatibleLLM:
    return OpenAICompatibleLLM(
        LLMSettings(provider="openai", base_url=base_url, model="tiny", **settings)  # type: ignore[arg-type]
    )


async def test_streams_deltas_and_answers_json_mode():
    script = ProviderScript(["Hello there, how can I help?"])
    with fake_provider(script) as url:
        llm = client(url, api_key="sk-test")
        parts = [p async for p in llm.stream_chat(HI)]
        raw = await llm.complete_json(HI, {"type": "object"})
        await llm.aclose()
    assert "".join(parts) == "Hello there, how can I help?" and len(parts) > 1
    assert raw == "Hello there, how can I help?"
    streamed, structured = script.requests
    assert streamed["stream"] is True and streamed["model"] == "tiny"
    assert streamed["messages"][1] == {"role": "user", "content": "Hi"}
    assert structured["response_format"] == {"type": "json_object"}


@pytest.mark.parametrize(
    ("script", "match"),
    [
        (ProviderScript(["late"], delay_secs=2.0), "no reply from the LLM provider within 1 s"),
        (ProviderScript(["x"], status=500), "HTTP 500"),
        (ProviderScript(["not an OpenAI body"], status=200), None),
    ],
)
async def test_provider_failures_are_engine_errors(script, match):
    with fake_provider(script) as url:
        llm = client(url, timeout=1.0)
        if match is None:  # a 200 whose content is not JSON is the orchestrator's to reject
            assert await llm.complete_json(HI, {}) == "not an OpenAI body"
        else:
            with pytest.raises(EngineError, match=match):
                await llm.complete_json(HI, {})
            with pytest.raises(EngineError):
                async for _ in llm.stream_chat(HI):
                    pass
        await llm.aclose()


async def test_an_unreachable_provider_is_a_clear_error():
    llm = client(f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(EngineError, match="unreachable"):
        await llm.complete_json(HI, {})
    await llm.aclose()
