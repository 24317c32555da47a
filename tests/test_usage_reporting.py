"""Usage measured where each remote call happens, over real HTTP: the LLM client reads
the provider's token counts (``stream_options.include_usage``, or a whole reply's
``usage``) and estimates them only when none came; the STT client counts the audio it
sent, the TTS client the text; a failed request, a breaker's probe use nothing; in a
fallback chain the provider that served is the one counted. The engine server answers
with the counts its engine reported. A turn of the orchestration endpoint stores its
cost, and adds it to its session's, once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest

from fake_llm_provider import ProviderScript, fake_provider
from parley.config import Settings
from parley.engine_server import ServedEngines
from parley.engines import ChatMessage, Transcript
from parley.engines.base import first_item
from parley.engines.chains import build_llm
from parley.engines.llm_openai import OpenAICompatibleLLM
from parley.engines.stt_openai import OpenAICompatibleSTT
from parley.engines.tts_openai import OpenAICompatibleTTS
from parley.server import create_app
from parley.telemetry.usage import Usage, listening_for_usage, report_usage
from parley.testing import EngineAppServer, free_port, serve_engine_app

HI = [ChatMessage("system", "Be brief."), ChatMessage("user", "Hi")]
WORDS = ("It ", "is ", "noon.")


class CountingLLM:
    """Three deltas, and a usage report as the embedded model makes one: 11 prompt
    tokens, one per delta generated, told as the stream closes."""

    async def stream_chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[str]:
        made = 0
        try:
            for word in WORDS:
                await asyncio.sleep(0)
                made += 1
                yield word
        finally:
            report_usage(
                Usage("llm", "llama", "m", embedded=True, input_tokens=11, output_tokens=made)
            )

    async def prefill(self, messages: Sequence[ChatMessage]) -> None:
        return None


class Ears:
    busy = False

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        return Transcript("hello", 1.0)


class Tone:
    async def synthesize(self, text: str) -> AsyncIterator[np.ndarray]:
        yield np.full(1600, 2000, dtype="<i2")


@pytest.fixture
async def provider() -> AsyncIterator[EngineAppServer]:
    engines = ServedEngines(stt=Ears(), llm=CountingLLM(), tts=Tone())  # type: ignore[arg-type]
    async with serve_engine_app(engines, "llm,stt,tts") as srv:
        yield srv


def settings(kind: str, url: str, **fields: object) -> Settings:
    return Settings(**{kind: {"provider": "openai", "base_url": url, "model": "m1", **fields}})


async def collected(work) -> list[Usage]:  # type: ignore[no-untyped-def]
    seen: list[Usage] = []
    with listening_for_usage(seen.append):
        await work()
    return seen


async def test_a_streamed_reply_counts_the_providers_tokens(provider: EngineAppServer) -> None:
    llm = OpenAICompatibleLLM(settings("llm", provider.url, name="remote").llm)

    async def reply() -> None:
        assert "".join([d async for d in llm.stream_chat(HI)]) == "".join(WORDS)

    try:
        (usage,) = await collected(reply)
    finally:
        await llm.aclose()
    assert usage == Usage("llm", "remote", "m1", input_tokens=11, output_tokens=3)


async def test_without_counts_from_the_provider_they_are_estimated_and_marked() -> None:
    script = ProviderScript(["Hello there, how can I help?"])
    with fake_provider(script) as url:  # a server that never sends usage
        llm = OpenAICompatibleLLM(settings("llm", url, stream_usage=False).llm)

        async def reply() -> None:
            async for _ in llm.stream_chat(HI):
                pass

        try:
            (usage,) = await collected(reply)
        finally:
            await llm.aclose()
    assert script.requests[0].get("stream_options") is None  # switched off: not asked
    assert usage.estimated and usage.provider.startswith("openai@127.0.0.1:")
    prompt = "Be brief.Hi"
    assert usage.input_tokens == -(-len(prompt) // 4)
    assert usage.output_tokens == -(-len("Hello there, how can I help?") // 4)


async def test_a_reply_closed_early_counts_what_was_generated(provider: EngineAppServer) -> None:
    llm = OpenAICompatibleLLM(settings("llm", provider.url).llm)

    async def first_word() -> None:
        assert await first_item(llm.stream_chat(HI)) == WORDS[0]

    try:
        (usage,) = await collected(first_word)
    finally:
        await llm.aclose()
    # The usage chunk comes last: a reply closed after its first word never reads it.
    assert usage.estimated and usage.output_tokens == 1


async def test_a_whole_reply_counts_the_bodys_usage(provider: EngineAppServer) -> None:
    llm = OpenAICompatibleLLM(settings("llm", provider.url).llm)

    async def envelope() -> None:
        await llm.complete_json(HI, {"type": "object"})

    try:
        (usage,) = await collected(envelope)
    finally:
        await llm.aclose()
    assert (usage.input_tokens, usage.output_tokens, usage.estimated) == (11, 3, False)


async def test_a_failed_request_uses_nothing() -> None:
    with fake_provider(ProviderScript(["x"], status=500)) as url:
        llm = OpenAICompatibleLLM(settings("llm", url).llm)

        async def failing() -> None:
            with pytest.raises(Exception, match="HTTP 500"):
                async for _ in llm.stream_chat(HI):
                    pass

        try:
            assert await collected(failing) == []
        finally:
            await llm.aclose()


async def test_speech_to_text_counts_the_audio_and_speech_the_text(
    provider: EngineAppServer,
) -> None:
    stt = OpenAICompatibleSTT(settings("stt", provider.url, model="whisper-x").stt)
    tts = OpenAICompatibleTTS(settings("tts", provider.url, model="voice-x").tts)

    async def calls() -> None:
        await stt.transcribe(np.zeros(24_000, dtype=np.float32))
        await stt.probe()  # the breaker's: no session's
        async for _ in tts.synthesize("Hello there."):
            pass
        await tts.probe()

    try:
        heard, said = await collected(calls)
    finally:
        await stt.aclose()
        await tts.close()
    host = provider.url.split("//")[1].split("/")[0]
    assert heard == Usage("stt", f"openai@{host}", "whisper-x", seconds=1.5)
    assert said == Usage("tts", f"openai@{host}", "voice-x", characters=len("Hello there."))


async def test_in_a_chain_the_provider_that_served_is_counted(provider: EngineAppServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: connection refused
    llm = await build_llm(
        Settings(
            llm={
                "provider": "openai",
                "base_url": dead,
                "name": "primary",
                "fallbacks": [{"provider": "openai", "base_url": provider.url, "model": "m2"}],
            }
        )
    )

    async def reply() -> None:
        async for _ in llm.stream_chat(HI):
            pass

    try:
        (usage,) = await collected(reply)
    finally:
        await llm.aclose()  # type: ignore[attr-defined]
    host = provider.url.split("//")[1].split("/")[0]
    # Named as the chain names it (its metrics, failovers and the price table).
    assert usage.provider == f"openai@{host}" and usage.model == "m2"
    assert usage.output_tokens == 3


# -- the orchestration endpoint -------------------------------------------------------


async def test_an_http_turn_costs_once_on_its_record_and_its_sessions(tmp_path: Path) -> None:
    envelope = '{"spoken_text": "It is noon.", "escalate": false}'
    script = ProviderScript([envelope])  # no usage in its answers: counts are estimated
    with fake_provider(script) as url:
        settings = Settings(
            server={"database_url": f"sqlite:///{tmp_path / 'turns.db'}"},
            llm={"provider": "openai", "base_url": url, "model": "tiny", "name": "scripted"},
            costs={
                "prices": [
                    {
                        "provider": "scripted",
                        "llm_input_per_million_tokens": 1e6,
                        "llm_output_per_million_tokens": 2e6,
                    }
                ]
            },
        )
        remote = OpenAICompatibleLLM(settings.llm)
        app = create_app(settings, engines=SimpleNamespace(llm=remote))  # type: ignore[arg-type]
        try:
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://p") as http:
                    created = (await http.post("/v1/sessions", json={})).json()
                    sid, token = created["session_id"], created["token"]
                    for _ in range(2):  # the second is a replay of the first: no new call
                        answer = await http.post(
                            f"/v1/sessions/{sid}/turns",
                            json={"text": "What time is it?", "idempotency_key": "k-1"},
                            headers={"Authorization": f"Bearer {token}"},
                        )
                        assert answer.status_code == 200, answer.text
                    store = app.state.store
                    (turn,) = await store.turns(sid)
                    session = await store.get_session(sid)
        finally:
            await remote.aclose()
    assert len(script.requests) == 1 and answer.json()["replayed"] is True
    cost = turn.result["cost"]
    (item,) = cost["items"]
    assert (item["provider"], item["model"], item["requests"]) == ("scripted", "tiny", 1)
    assert item["estimated"] is True and item["output_tokens"] == -(-len(envelope) // 4)
    assert item["cost"] == item["input_tokens"] * 1.0 + item["output_tokens"] * 2.0
    assert session is not None and session.cost == cost  # counted once
