"""The OpenAI-compatible provider client against a real HTTP server: streaming, JSON
mode, and the provider failures a voice agent meets (timeouts, errors, no server)."""

from __future__ import annotations

import pytest

from fake_llm_provider import CHARS_PER_TOKEN, ProviderScript, fake_provider
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
    assert raw.text == "Hello there, how can I help?" and raw.finish_reason == "stop"
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
            assert (await llm.complete_json(HI, {})).text == "not an OpenAI body"
        else:
            with pytest.raises(EngineError, match=match):
                await llm.complete_json(HI, {})
            with pytest.raises(EngineError):
                async for _ in llm.stream_chat(HI):
                    pass
        await llm.aclose()


async def test_envelopes_get_their_own_token_budget_and_say_why_they_stopped():
    """No grammar keeps the remote model's JSON whole: the envelope request gets
    ``llm.envelope_max_tokens`` (a spoken reply keeps ``llm.max_tokens``), and the finish
    reason comes back, so output cut off by the budget is known to be."""
    envelope = '{"spoken_text": "' + "word " * 100 + '", "escalate": false}'
    script = ProviderScript(["Hi there.", envelope], cut_at_max_tokens=True)
    with fake_provider(script) as url:
        llm = client(url)
        assert "".join([p async for p in llm.stream_chat(HI)]) == "Hi there."
        whole = await llm.complete_json(HI, {})
        await llm.aclose()
        llm = client(url, envelope_max_tokens=64)
        cut = await llm.complete_json(HI, {})
        await llm.aclose()
    streamed, structured, small = script.requests
    assert streamed["max_tokens"] == 60
    assert structured["max_tokens"] == LLMSettings().envelope_max_tokens == 256
    assert whole.text == envelope and whole.finish_reason == "stop" and not whole.cut_off
    assert small["max_tokens"] == 64
    assert cut.text == envelope[: 64 * CHARS_PER_TOKEN] and cut.cut_off


async def test_an_unreachable_provider_is_a_clear_error():
    llm = client(f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(EngineError, match="unreachable"):
        await llm.complete_json(HI, {})
    await llm.aclose()
