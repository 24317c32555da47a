"""The fault injector in front of the engine server, over real HTTP: each fault as a
plain HTTP client sees it and as Parley's LLM client classifies it, the control API and
its counters (traffic apart from breaker probes), and a provider that stops (connections
refused) and comes back on the same port."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from engine_doubles import HI, Doubles, events, sine, upload, wav
from parley.config import LLMSettings
from parley.engines import ChatMessage
from parley.engines.llm_openai import OpenAICompatibleLLM
from parley.engines.provider_errors import ProviderError
from parley.provider_faults import FaultPlan
from parley.testing import EngineAppServer, serve_engine_app


@pytest.fixture
async def doubles() -> AsyncIterator[Doubles]:
    yield Doubles()


@pytest.fixture
async def engine_app(doubles: Doubles) -> AsyncIterator[EngineAppServer]:
    async with serve_engine_app(doubles, "llm,stt,tts") as srv:
        yield srv


@pytest.fixture
async def http(engine_app: EngineAppServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=engine_app.url, timeout=5) as client:
        yield client


CHAT = {"messages": HI, "stream": True}


async def test_hang_holds_the_request_until_the_client_gives_up(
    engine_app: EngineAppServer, http: httpx.AsyncClient
):
    engine_app.set_faults(mode="hang", paths=["/v1/chat/completions"])
    hung = asyncio.ensure_future(http.post("/chat/completions", json=CHAT, timeout=0.5))
    await asyncio.sleep(0.1)
    # Other requests are not held up meanwhile.
    other = await http.post("/audio/transcriptions", **upload(wav(sine(0.1, 16_000), 16_000)))
    assert other.status_code == 200 and not hung.done()
    with pytest.raises(httpx.ReadTimeout):
        await hung
    assert engine_app.faults()["requests"]["/v1/chat/completions"] == 1


async def test_status_answers_an_openai_error_with_retry_after(
    engine_app: EngineAppServer, http: httpx.AsyncClient
):
    engine_app.set_faults(mode="status", status=429, retry_after=2.5)
    response = await http.post("/chat/completions", json=CHAT)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "2.5"
    assert response.json()["error"]["type"] == "rate_limit_error"
    engine_app.set_faults(mode="status", status=503)
    response = await http.get("/models")
    assert response.status_code == 503 and "retry-after" not in response.headers


@pytest.mark.parametrize("chunks", [0, 2])
async def test_drop_after_cuts_a_stream_mid_way(
    engine_app: EngineAppServer, http: httpx.AsyncClient, chunks: int
):
    engine_app.set_faults(mode="drop_after", chunks=chunks)
    received = []
    with pytest.raises(httpx.RemoteProtocolError):
        async with http.stream("POST", "/chat/completions", json=CHAT) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                received.extend(events(line + "\n"))
    assert len(received) == chunks
    body = {"input": "Hello.", "response_format": "pcm"}
    with pytest.raises(httpx.RemoteProtocolError):
        async with http.stream("POST", "/audio/speech", json=body) as response:
            await response.aread()


async def test_drop_after_cuts_a_whole_body_too(
    engine_app: EngineAppServer, http: httpx.AsyncClient
):
    engine_app.set_faults(mode="drop_after", chunks=5)
    with pytest.raises(httpx.RemoteProtocolError):
        await http.post("/chat/completions", json={"messages": HI})
    engine_app.set_faults(mode="none")
    assert (await http.post("/chat/completions", json={"messages": HI})).status_code == 200


async def test_malformed_answers_200_with_the_wrong_body(
    engine_app: EngineAppServer, http: httpx.AsyncClient
):
    engine_app.set_faults(mode="malformed")
    streamed = await http.post("/chat/completions", json=CHAT)
    assert streamed.status_code == 200
    assert streamed.headers["content-type"].startswith("text/event-stream")
    with pytest.raises(json.JSONDecodeError):
        json.loads(events(streamed.text)[0])
    for response in (
        await http.post("/chat/completions", json={"messages": HI}),
        await http.post("/audio/transcriptions", **upload(wav(sine(0.1, 16_000), 16_000))),
    ):
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        with pytest.raises(json.JSONDecodeError):
            response.json()
    speech = await http.post("/audio/speech", json={"input": "Hi", "response_format": "pcm"})
    assert speech.status_code == 200 and speech.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize(
    ("plan", "kind"),
    [
        ({"mode": "hang"}, "timeout"),
        ({"mode": "status", "status": 500}, "http_500"),
        ({"mode": "status", "status": 429, "retry_after": 3}, "rate_limited"),
        ({"mode": "drop_after", "chunks": 1}, "stream_cut"),
        ({"mode": "malformed"}, "malformed"),
    ],
)
async def test_each_fault_as_parleys_llm_client_sees_it(
    engine_app: EngineAppServer, plan: dict[str, object], kind: str
):
    engine_app.set_faults(**plan)
    llm = OpenAICompatibleLLM(LLMSettings(provider="openai", base_url=engine_app.url, timeout=0.5))
    try:
        with pytest.raises(ProviderError) as failure:
            async for _ in llm.stream_chat([ChatMessage("user", "Hi")]):
                pass
    finally:
        await llm.aclose()
    assert failure.value.kind == kind
    if kind == "rate_limited":
        assert failure.value.retry_after == 3


async def test_counters_split_traffic_from_probes_over_the_control_api(
    engine_app: EngineAppServer, http: httpx.AsyncClient
):
    control = httpx.AsyncClient(base_url=engine_app.http, timeout=5)
    plan = {"mode": "status", "status": 502, "paths": ["/v1/audio/speech"]}
    assert (await control.post("/_faults", json=plan)).json()["mode"] == "status"
    await http.post("/chat/completions", json={"messages": HI})
    await http.post("/chat/completions", json={"messages": HI}, headers={"X-Parley-Probe": "1"})
    faulted = await http.post(
        "/audio/speech", json={"input": "Hi"}, headers={"X-Parley-Probe": "1"}
    )
    await http.get("/models")
    assert faulted.status_code == 502
    state = (await control.get("/_faults")).json()
    assert state["requests"] == {"/v1/chat/completions": 1, "/v1/models": 1}
    assert state["probes"] == {"/v1/chat/completions": 1, "/v1/audio/speech": 1}
    assert state["paths"] == ["/v1/audio/speech"] and state["status"] == 502
    reset = (await control.post("/_faults/reset")).json()
    assert reset["requests"] == reset["probes"] == {} and reset["mode"] == "status"
    bad = await control.post("/_faults", json={"mode": "explode"})
    assert bad.status_code == 400 and "mode" in bad.json()["error"]["message"]
    assert (await control.post("/_faults", content=b"{")).status_code == 400
    assert (await control.delete("/_faults")).status_code == 405
    await control.aclose()


def test_fault_plans_are_checked():
    assert FaultPlan.from_json({}) == FaultPlan()
    for wrong in (
        {"status": 99},
        {"status": True},
        {"retry_after": -1},
        {"retry_after": "soon"},
        {"chunks": -1},
        {"paths": "/v1/models"},
        {"retry-after": 1},
    ):
        with pytest.raises(ValueError):
            FaultPlan.from_json(wrong)


async def test_a_stopped_server_refuses_connections_and_comes_back(
    engine_app: EngineAppServer, http: httpx.AsyncClient
):
    engine_app.set_faults(mode="hang", paths=["/v1/chat/completions"])
    hung = asyncio.ensure_future(http.post("/chat/completions", json=CHAT, timeout=30))
    await asyncio.sleep(0.1)
    async with asyncio.timeout(5):
        await engine_app.stop()
        with pytest.raises(httpx.HTTPError):  # the open connection died with the server
            await hung
    with pytest.raises(httpx.ConnectError):
        await http.get("/models")
    await engine_app.start()
    assert (await http.get("/models")).status_code == 200
