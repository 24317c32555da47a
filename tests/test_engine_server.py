"""The OpenAI-compatible engine server over real HTTP: each endpoint on test-double
engines, as a plain HTTP client and as Parley's own provider clients see it; bad
requests; speech made by the embedded TTS transcribed back by the embedded STT; the
``parley engine-server`` process crashing and coming back."""

from __future__ import annotations

import asyncio
import io
import json
import re
import wave
from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest

from engine_doubles import (
    HI,
    TONE,
    BrokenLLM,
    Doubles,
    EarSTT,
    StreamOnlyLLM,
    events,
    sine,
    upload,
    wav,
)
from parley.cli import main
from parley.config import LLMSettings
from parley.engine_server import create_engine_app, parse_stages
from parley.engine_settings import STTProviderSettings, TTSProviderSettings
from parley.engine_wire import decode_wav, wav_file
from parley.engines import ChatMessage
from parley.engines.completion import JSONCompletion
from parley.engines.llm_openai import OpenAICompatibleLLM
from parley.engines.stt_openai import OpenAICompatibleSTT
from parley.engines.tts_openai import OpenAICompatibleTTS
from parley.testing import EngineAppServer, EngineServerProcess, serve_engine_app


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


# -- the endpoints --------------------------------------------------------------------


async def test_models_lists_only_the_served_stages(doubles: Doubles):
    async with serve_engine_app(doubles, ["stt"], faults=False) as srv:
        async with httpx.AsyncClient(base_url=srv.url, timeout=5) as client:
            listed = (await client.get("/models")).json()
            chat = await client.post("/chat/completions", json={"messages": HI})
            speech = await client.post("/audio/speech", json={"input": "Hi"})
    assert listed["object"] == "list"
    assert [m["id"] for m in listed["data"]] == ["parley-stt"]
    assert chat.status_code == speech.status_code == 404
    assert chat.json()["error"]["type"] == "not_found_error"


def test_stages_are_checked(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["engine-server", "--stages", "llm,vad"])
    assert exit_.value.code == 2 and "stages must be some of" in capsys.readouterr().err
    assert parse_stages(" llm, tts ") == {"llm", "tts"}
    for wrong in ("", "llm,vad"):
        with pytest.raises(ValueError, match="stages"):
            parse_stages(wrong)
    only_stt = type("OnlySTT", (), {"stt": EarSTT(), "llm": None, "tts": None})()
    with pytest.raises(ValueError, match="no engine"):
        create_engine_app(only_stt, "llm")


async def test_chat_streams_one_event_per_delta_then_stop_and_done(http: httpx.AsyncClient):
    response = await http.post(
        "/chat/completions", json={"model": "m", "messages": HI, "stream": True}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    data = events(response.text)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == [
        "It ",
        "is ",
        "noon.",
        None,
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "stop"]
    assert chunks[0]["object"] == "chat.completion.chunk" and chunks[0]["model"] == "m"
    assert len({c["id"] for c in chunks}) == 1


async def test_chat_honours_max_tokens_as_deltas(http: httpx.AsyncClient, doubles: Doubles):
    body = {"messages": HI, "stream": True, "max_tokens": 1}
    data = events((await http.post("/chat/completions", json=body)).text)
    chunks = [json.loads(d) for d in data[:-1]]
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["It ", None]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    whole = await http.post("/chat/completions", json={"messages": HI, "max_tokens": 2})
    assert whole.json()["choices"][0] == {
        "index": 0,
        "message": {"role": "assistant", "content": "It is "},
        "finish_reason": "length",
    }
    assert doubles.llm.closed == 2  # cut streams are closed: the engine stops generating


async def test_chat_whole_and_json_mode(http: httpx.AsyncClient, doubles: Doubles):
    whole = (await http.post("/chat/completions", json={"messages": HI})).json()
    assert whole["object"] == "chat.completion"
    assert whole["choices"][0]["message"]["content"] == "It is noon."
    assert whole["choices"][0]["finish_reason"] == "stop"
    fmt = {"type": "json_object"}
    structured = await http.post("/chat/completions", json={"messages": HI, "response_format": fmt})
    assert structured.json()["choices"][0]["message"]["content"] == '{"speak": "noon"}'
    schema = {"type": "object", "properties": {"speak": {"type": "string"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "e", "schema": schema}}
    await http.post("/chat/completions", json={"messages": HI, "response_format": fmt})
    assert doubles.llm.schemas == [{"type": "object"}, schema]


async def test_json_mode_without_the_engines_json_mode_joins_the_stream():
    async with serve_engine_app(type("E", (), {"llm": StreamOnlyLLM()})(), "llm") as srv:
        async with httpx.AsyncClient(base_url=srv.url) as client:
            body = {"messages": HI, "response_format": {"type": "json_object"}}
            answer = (await client.post("/chat/completions", json=body)).json()
    assert answer["choices"][0]["message"]["content"] == '{"speak": "noon"}'


async def test_parleys_llm_client_reads_it(engine_app: EngineAppServer):
    llm = OpenAICompatibleLLM(LLMSettings(provider="openai", base_url=engine_app.url))
    try:
        parts = [p async for p in llm.stream_chat([ChatMessage("user", "Hi")])]
        structured = await llm.complete_json([ChatMessage("user", "Hi")], {"type": "object"})
        await llm.probe()
    finally:
        await llm.aclose()
    assert parts == ["It ", "is ", "noon."]
    assert structured == JSONCompletion('{"speak": "noon"}', "stop")
    counted = engine_app.faults()
    assert counted["requests"] == {"/v1/chat/completions": 2}
    assert counted["probes"] == {"/v1/chat/completions": 1}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (json.dumps({"model": "m"}).encode(), "messages"),
        (json.dumps({"messages": [{"role": "tool", "content": "x"}]}).encode(), "messages[0].role"),
        (
            json.dumps({"messages": [{"role": "user", "content": 3}]}).encode(),
            "messages[0].content",
        ),
        (json.dumps({"messages": HI, "max_tokens": 0}).encode(), "max_tokens"),
    ],
)
async def test_bad_chat_requests_are_400s(http: httpx.AsyncClient, body: bytes, param: str | None):
    response = await http.post("/chat/completions", content=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert error["message"]


async def test_an_engine_that_fails_at_once_is_a_503():
    async with serve_engine_app(type("E", (), {"llm": BrokenLLM()})(), "llm") as srv:
        async with httpx.AsyncClient(base_url=srv.url) as client:
            for stream in (True, False):
                body = {"messages": HI, "stream": stream}
                response = await client.post("/chat/completions", json=body)
                assert response.status_code == 503
                assert "fell over" in response.json()["error"]["message"]


async def test_transcription_takes_a_wav_at_any_rate_and_channels(
    http: httpx.AsyncClient, doubles: Doubles
):
    tone = sine(1.0, 48_000)
    response = await http.post("/audio/transcriptions", **upload(wav(tone, 48_000, channels=2)))
    assert response.status_code == 200
    assert response.json() == {"text": "heard 16000 samples"}
    heard = doubles.stt.heard[-1]
    assert heard.dtype == np.float32 and heard.ndim == 1
    expected = sine(1.0, 16_000)
    assert np.abs(heard[1000:-1000] - expected[1000:-1000]).max() < 0.01
    text = await http.post(
        "/audio/transcriptions", **upload(wav(sine(0.5, 8_000), 8_000), response_format="text")
    )
    assert text.headers["content-type"].startswith("text/plain")
    assert text.text == "heard 8000 samples"
    verbose = await http.post(
        "/audio/transcriptions",
        **upload(wav(sine(0.5, 16_000), 16_000), response_format="verbose_json", language="en"),
    )
    assert verbose.json()["duration"] == 0.5 and verbose.json()["language"] == "en"


def test_wav_decoding_of_8_and_24_bit_samples():
    tone = sine(0.25, 16_000)
    for width, tolerance in ((1, 0.02), (3, 1e-5)):
        decoded = decode_wav(wav(tone, 16_000, width=width))
        assert np.abs(decoded - tone).max() < tolerance


async def test_parleys_stt_client_reads_it(engine_app: EngineAppServer):
    stt = OpenAICompatibleSTT(STTProviderSettings(provider="openai", base_url=engine_app.url))
    try:
        transcript = await stt.transcribe(sine(0.75, 16_000))
    finally:
        await stt.aclose()
    assert transcript.text == "heard 12000 samples"


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        (upload(b"RIFF....WAVEnope"), "file"),
        (upload(b"ID3\x03 an mp3 file"), "file"),
        (upload(wav(np.zeros(0, np.float32), 16_000)), "file"),
        ({"data": {"model": "m"}, "files": {"other": ("x", b"x")}}, "file"),
        (upload(wav(sine(0.1, 16_000), 16_000), response_format="srt"), "response_format"),
        ({"json": {"file": "speech.wav"}}, None),
    ],
)
async def test_bad_transcription_requests_are_400s(
    http: httpx.AsyncClient, kwargs: dict[str, object], param: str | None
):
    response = await http.post("/audio/transcriptions", **kwargs)  # type: ignore[arg-type]
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


async def test_speech_streams_24khz_pcm_as_it_is_synthesized(
    http: httpx.AsyncClient, doubles: Doubles
):
    doubles.tts.gate.clear()  # the engine stops after its first chunk
    body = {"model": "m", "input": "Hello there.", "voice": "v", "response_format": "pcm"}
    async with http.stream("POST", "/audio/speech", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "audio/pcm"
        assert "content-length" not in response.headers  # chunked: streamed
        chunks = response.aiter_bytes()
        first = await asyncio.wait_for(anext(chunks), 2)  # arrives while the engine waits
        doubles.tts.gate.set()
        rest = b"".join([c async for c in chunks])
    pcm = np.frombuffer(first + rest, dtype="<i2")
    assert 0 < len(first) < len(first + rest)
    assert abs(pcm.size - 3 * TONE.size * 3 // 2) <= 2  # 300 ms at 24 kHz
    assert abs(int(np.median(pcm[500:-500])) - 5000) < 50


async def test_speech_as_wav_and_through_parleys_tts_client(engine_app: EngineAppServer):
    async with httpx.AsyncClient(base_url=engine_app.url) as client:
        body = {"input": "Hello.", "response_format": "wav"}
        response = await client.post("/audio/speech", json=body)
    with wave.open(io.BytesIO(response.content)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24_000, 1, 2)
        assert abs(w.getnframes() - 7200) <= 2
    tts = OpenAICompatibleTTS(TTSProviderSettings(provider="openai", base_url=engine_app.url))
    try:
        audio = np.concatenate([c async for c in tts.synthesize("Hello.")])
    finally:
        await tts.close()
    assert abs(audio.size - 4800) <= 4  # back at 16 kHz


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": "   "}, "input"),
        ({"model": "m"}, "input"),
        ({"input": "x" * 5000}, "input"),
        ({"input": "Hi", "response_format": "mp3"}, "response_format"),
    ],
)
async def test_bad_speech_requests_are_400s(
    http: httpx.AsyncClient, body: dict[str, object], param: str
):
    response = await http.post("/audio/speech", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


# -- the real thing -------------------------------------------------------------------


def words(text: str) -> list[str]:
    # Apostrophes split words: Piper samples its voice afresh each time (VITS noise), and
    # a quick "weather is" is rightly heard as "weather's", which keeps "weather".
    return re.findall(r"[a-z]+", text.lower())


async def test_embedded_speech_transcribes_back_to_its_words(embedded_engines):
    sentence = "The weather is lovely today."
    async with serve_engine_app(embedded_engines, "stt,tts", faults=False) as srv:
        async with httpx.AsyncClient(base_url=srv.url, timeout=60) as client:
            body = {"model": "piper", "input": sentence, "voice": "joe", "response_format": "pcm"}
            speech = await client.post("/audio/speech", json=body)
            assert speech.status_code == 200 and len(speech.content) > 24_000  # > 0.5 s
            heard = await client.post(
                "/audio/transcriptions",
                **upload(wav_file(speech.content, 24_000), response_format="json"),
            )
    said, got = words(sentence), words(heard.json()["text"])
    assert len(set(said) & set(got)) >= len(said) - 1, got


def test_engine_server_process_crashes_and_comes_back(tmp_path):
    with EngineServerProcess("stt", log_path=tmp_path / "engines.log") as provider:
        assert provider.url.endswith("/v1")
        models = httpx.get(f"{provider.url}/models", timeout=5).json()
        assert [m["id"] for m in models["data"]] == ["parley-stt"]
        provider.set_faults(mode="status", status=503)
        faulted = httpx.post(
            f"{provider.url}/audio/transcriptions", **upload(wav(sine(0.2, 16_000), 16_000))
        )
        assert faulted.status_code == 503
        assert provider.faults()["requests"]["/v1/audio/transcriptions"] == 1
        provider.kill()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{provider.url}/models", timeout=2)
        provider.start()
        assert provider.faults()["mode"] == "none"  # a fresh process, a fresh plan
        silence = httpx.post(
            f"{provider.url}/audio/transcriptions",
            **upload(wav(np.zeros(8000, np.float32), 16_000)),
            timeout=30,
        )
        assert silence.status_code == 200 and "text" in silence.json()
