"""Parley's engines behind the OpenAI-compatible API: ``POST /v1/chat/completions``,
``/v1/audio/transcriptions`` and ``/v1/audio/speech``, ``GET /v1/models``.

Two uses: serving one machine's embedded models to Parley servers on others
(``parley engine-server``), and real local HTTP providers for the failover tests and
the chaos benchmark (wrapped in ``parley.provider_faults.FaultInjector``). The engines
are the same objects a Parley server uses, already async, so no request blocks the
event loop; only the decoding of an uploaded file runs in a thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import soxr
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException

from parley.audio.pcm import SAMPLE_RATE
from parley.engine_wire import (
    BadRequest,
    Completion,
    chat_messages,
    decode_wav,
    error_body,
    json_schema,
    max_tokens,
    parse_form,
    parse_json,
    sse,
    token_usage,
    wants_usage,
    wav_file,
)
from parley.engines.base import (
    ChatMessage,
    EngineError,
    LanguageModel,
    SpeechToText,
    TextToSpeech,
    first_item,
)
from parley.telemetry import get_logger
from parley.telemetry.usage import Usage, usage_listener

if TYPE_CHECKING:
    from parley.config import Settings

log = get_logger(__name__)

STAGES = frozenset({"llm", "stt", "tts"})
SPEECH_RATE = 24_000
"""OpenAI's ``pcm``: raw int16 mono at 24 kHz (what remote TTS clients expect)."""
MAX_UPLOAD_BYTES = 25 << 20
"""OpenAI's limit on an audio file."""
MAX_JSON_BYTES = 1 << 20
MAX_SPEECH_CHARS = 4096


class StageEngines(Protocol):
    """What the app serves: ``parley.engines.Engines`` or a :class:`ServedEngines`."""

    @property
    def stt(self) -> SpeechToText | None: ...

    @property
    def llm(self) -> LanguageModel | None: ...

    @property
    def tts(self) -> TextToSpeech | None: ...


@dataclass
class ServedEngines:
    """The engines of the served stages only (the others are None)."""

    stt: SpeechToText | None = None
    llm: LanguageModel | None = None
    tts: TextToSpeech | None = None

    async def close(self) -> None:
        for engine in (self.stt, self.llm, self.tts):
            for name in ("aclose", "close"):
                closer = getattr(engine, name, None)
                if closer is not None:
                    result = closer()
                    if asyncio.iscoroutine(result):
                        await result
                    break


def parse_stages(value: str | Iterable[str]) -> frozenset[str]:
    """``"llm,stt"`` (or an iterable of names) as a set of stages; unknown names raise."""
    names = value.split(",") if isinstance(value, str) else list(value)
    stages = frozenset(n.strip() for n in names if n.strip())
    unknown = stages - STAGES
    if not stages or unknown:
        raise ValueError(f"stages must be some of {sorted(STAGES)}, got {sorted(stages)}")
    return stages


def create_engine_app(engines: StageEngines, stages: str | Iterable[str]) -> FastAPI:
    """The API of ``stages`` (some of ``llm``, ``stt``, ``tts``, or ``"llm,stt"``) over ``engines``;
    the routes of the other stages do not exist (404)."""
    served = parse_stages(stages)
    for stage in served:
        if getattr(engines, stage, None) is None:
            raise ValueError(f"stage {stage!r} is served but has no engine")
    app = FastAPI(title="Parley engine server", docs_url=None, redoc_url=None, openapi_url=None)
    _add_error_handlers(app)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": f"parley-{s}", "object": "model", "created": 0, "owned_by": "parley"}
                for s in sorted(served)
            ],
        }

    if "llm" in served:
        assert engines.llm is not None
        _add_chat(app, engines.llm)
    if "stt" in served:
        assert engines.stt is not None
        _add_transcription(app, engines.stt)
    if "tts" in served:
        assert engines.tts is not None
        _add_speech(app, engines.tts)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's shape, which clients (Parley's among them) can read."""

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, exc: BadRequest) -> Response:
        kind = "invalid_request_error"
        return JSONResponse(error_body(str(exc), kind, exc.param), status_code=exc.status)

    @app.exception_handler(EngineError)
    async def engine_failed(request: Request, exc: EngineError) -> Response:
        log.warning("engine failed", path=request.url.path, error=repr(exc))
        return JSONResponse(error_body(f"the engine failed: {exc}", "server_error"), 503)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code)


async def _read_body(request: Request, limit: int) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BadRequest(f"the body is over {limit >> 20 or 1} MB", status=413)
    return bytes(body)


async def _close(stream: AsyncIterator[Any]) -> None:
    """Close an engine's stream: for every engine here that cancels its work."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


async def _first(stream: AsyncIterator[Any]) -> Any:
    """The stream's first item (None when empty), read before the response starts so
    that an engine failing at once is an HTTP error, not a stream cut short."""
    try:
        return await anext(stream)
    except StopAsyncIteration:
        return None
    except BaseException:
        await _close(stream)
        raise


# -- LLM ------------------------------------------------------------------------------


class ClosingStreamingResponse(StreamingResponse):
    """A stream whose generator is closed however the response ends. When the connection
    dies mid-stream Starlette leaves the generator to the garbage collector, and the
    engine it reads (the embedded LLM's single lane) stays busy until then."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()


class TokenCount:
    """The tokens a request's LLM calls reported (the embedded model counts its own)."""

    def __init__(self) -> None:
        self.prompt = 0
        self.completion = 0

    def add(self, usage: Usage) -> None:
        if usage.stage == "llm":
            self.prompt += usage.input_tokens
            self.completion += usage.output_tokens

    def usage(self) -> dict[str, int]:
        return token_usage(self.prompt, self.completion)


def _add_chat(app: FastAPI, llm: LanguageModel) -> None:
    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = parse_json(await _read_body(request, MAX_JSON_BYTES))
        messages = chat_messages(body.get("messages"))
        limit = max_tokens(body)
        completion = Completion.new(str(body.get("model") or "parley-llm"))
        # The engine reports its calls' tokens to this request's context (and to the
        # streaming response's task, which copies it): never reset, it ends with it.
        count = TokenCount()
        usage_listener.set(count.add)
        if body.get("stream"):
            stream = llm.stream_chat(messages)
            first = await _first(stream)
            return ClosingStreamingResponse(
                _chat_events(
                    completion, stream, first, limit, count if wants_usage(body) else None
                ),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        schema = json_schema(body)
        complete_json = getattr(llm, "complete_json", None)
        if schema is not None and complete_json is not None:
            # The engine's own JSON mode (a grammar for the embedded model) and its own
            # token budget: the finish reason says whether that budget cut it off.
            result = await complete_json(messages, schema)
            text, reason = result.text, result.finish_reason or "stop"
        else:
            text, reason = await _joined(llm, messages, limit)
        return JSONResponse(completion.whole(text, reason, count.usage()))


async def _joined(
    llm: LanguageModel, messages: list[ChatMessage], limit: int | None
) -> tuple[str, str]:
    parts: list[str] = []
    stream = llm.stream_chat(messages)
    try:
        async for delta in stream:
            parts.append(delta)
            if limit is not None and len(parts) >= limit:
                return "".join(parts), "length"
    finally:
        await _close(stream)
    return "".join(parts), "stop"


async def _chat_events(
    completion: Completion,
    stream: AsyncIterator[str],
    first: str | None,
    limit: int | None,
    count: TokenCount | None = None,
) -> AsyncIterator[str]:
    """The SSE stream; ``max_tokens`` counts deltas (a delta is about one token).
    ``count``: the client asked for the usage (sent last, once the engine is done)."""
    reason, sent, delta = "stop", 0, first
    try:
        while delta is not None:
            role = {"role": "assistant"} if sent == 0 else {}
            yield completion.chunk({**role, "content": delta})
            sent += 1
            if limit is not None and sent >= limit:
                reason = "length"
                break
            delta = await anext(stream, None)
    except EngineError as exc:
        # Headers are gone: report it as OpenAI does mid-stream, with no finish reason,
        # so the client knows the reply is incomplete.
        log.warning("engine failed mid-stream", error=repr(exc))
        yield sse(error_body(f"the engine failed: {exc}", "server_error"))
        return
    finally:
        # Also when the client goes away (the response is cancelled): generation stops.
        await _close(stream)
    yield completion.chunk({}, reason)
    if count is not None:
        yield completion.usage_chunk(count.usage())
    yield "data: [DONE]\n\n"


# -- STT ------------------------------------------------------------------------------

TRANSCRIPT_FORMATS = ("json", "text", "verbose_json")


def _add_transcription(app: FastAPI, stt: SpeechToText) -> None:
    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Response:
        body = await _read_body(request, MAX_UPLOAD_BYTES)
        kind = request.headers.get("content-type", "")
        form = await asyncio.to_thread(parse_form, body, kind)
        fmt = form["response_format"].text if "response_format" in form else "json"
        if fmt not in TRANSCRIPT_FORMATS:
            raise BadRequest(
                f"response_format must be one of {TRANSCRIPT_FORMATS}", "response_format"
            )
        if "file" not in form:
            raise BadRequest("the form has no 'file'", "file")
        audio = await asyncio.to_thread(decode_wav, form["file"].data)
        transcript = await stt.transcribe(audio)
        if fmt == "text":
            return PlainTextResponse(transcript.text)
        if fmt == "verbose_json":
            language = form["language"].text if "language" in form else None
            return JSONResponse(
                {
                    "task": "transcribe",
                    "language": language,
                    "duration": round(audio.size / SAMPLE_RATE, 3),
                    "text": transcript.text,
                    "segments": [],
                }
            )
        return JSONResponse({"text": transcript.text})


# -- TTS ------------------------------------------------------------------------------

SPEECH_FORMATS = ("pcm", "wav")


def _add_speech(app: FastAPI, tts: TextToSpeech) -> None:
    @app.post("/v1/audio/speech")
    async def speech(request: Request) -> Response:
        body = parse_json(await _read_body(request, MAX_JSON_BYTES))
        text = body.get("input")
        if not isinstance(text, str) or not text.strip():
            raise BadRequest("'input' must be non-empty text", "input")
        if len(text) > MAX_SPEECH_CHARS:
            raise BadRequest(f"'input' is over {MAX_SPEECH_CHARS} characters", "input")
        # OpenAI's default is mp3, which this server does not encode: raw PCM is the
        # default here, and the compressed formats are refused rather than mislabelled.
        fmt = body.get("response_format") or "pcm"
        if fmt not in SPEECH_FORMATS:
            raise BadRequest(f"response_format must be one of {SPEECH_FORMATS}", "response_format")
        stream = tts.synthesize(text)
        first = await _first(stream)
        audio = _speech_pcm(stream, first)
        if fmt == "wav":
            pcm = b"".join([chunk async for chunk in audio])
            return Response(wav_file(pcm, SPEECH_RATE), media_type="audio/wav")
        return ClosingStreamingResponse(
            audio, media_type="audio/pcm", headers={"X-Sample-Rate": str(SPEECH_RATE)}
        )


async def _speech_pcm(
    stream: AsyncIterator[np.ndarray], first: np.ndarray | None
) -> AsyncIterator[bytes]:
    """The engine's 16 kHz chunks at 24 kHz, each sent as soon as it is synthesized."""
    resampler = soxr.ResampleStream(SAMPLE_RATE, SPEECH_RATE, 1, dtype="int16")
    chunk = first
    try:
        while chunk is not None:
            out = resampler.resample_chunk(np.ascontiguousarray(chunk, dtype=np.int16))
            if out.size:
                yield np.asarray(out, dtype="<i2").tobytes()
            chunk = await anext(stream, None)
    except EngineError as exc:
        # Raw PCM has no way to say so: the connection is cut (the client sees a body
        # that ended early, not a short clean one).
        log.warning("engine failed mid-speech", error=repr(exc))
        raise
    finally:
        await _close(stream)
    tail = resampler.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
    if tail.size:
        yield np.asarray(tail, dtype="<i2").tobytes()


# -- loading and serving (``parley engine-server``) -----------------------------------

GRACEFUL_SHUTDOWN_SECS = 3
"""A request held by the ``hang`` fault never finishes: shutdown waits this long."""


async def load_stage_engines(settings: Settings, stages: str | Iterable[str]) -> ServedEngines:
    """The embedded engines of ``stages`` only, loaded and warmed up. The providers the
    settings name are not consulted: this server is where embedded models are served
    from (``settings.stt``, ``.llm`` and ``.tts`` still set their models and devices)."""
    from parley.engines.llm_llama import LlamaLLM
    from parley.engines.stt_whisper import WhisperSTT
    from parley.engines.tts_piper import PiperTTS

    served = parse_stages(stages)
    engines = ServedEngines()
    try:
        tts_started = None
        if "tts" in served:
            tts = PiperTTS(settings.tts)  # Piper itself runs in worker processes (GPL)
            engines.tts = tts
            tts_started = asyncio.ensure_future(tts.start())
        if "stt" in served:
            engines.stt = await asyncio.to_thread(WhisperSTT, settings.stt)
        if "llm" in served:
            engines.llm = await asyncio.to_thread(LlamaLLM, settings.llm)
        if tts_started is not None:
            await tts_started
        await _warm_up(engines)
    except BaseException:
        await engines.close()
        raise
    return engines


async def _warm_up(engines: ServedEngines) -> None:
    """A model's first call is slow (allocation, graph set-up): paid before listening,
    so that the first client (or a breaker's probe) sees the engine's real speed."""
    if engines.stt is not None:
        await engines.stt.transcribe(np.zeros(SAMPLE_RATE, dtype=np.float32))
    if engines.tts is not None:
        async for _ in engines.tts.synthesize("Hello."):
            pass
    if engines.llm is not None:
        await first_item(engines.llm.stream_chat([ChatMessage("user", "Hi")]))


async def run_engine_server(
    stages: str | Iterable[str],
    host: str = "127.0.0.1",
    port: int = 9000,
    *,
    faults: bool = False,
    settings: Settings | None = None,
) -> None:
    """Load the engines of ``stages``, then serve them until SIGINT / SIGTERM (the port
    opens only once they are warm: a client that reaches it can use it). ``faults``
    wraps the app in the fault injector (its control API at ``/_faults``)."""
    import uvicorn

    from parley.config import load_settings
    from parley.provider_faults import FaultInjector
    from parley.telemetry import configure_logging

    served = parse_stages(stages)
    settings = settings or load_settings()
    configure_logging(settings.log_level, settings.log_redact)
    engines = await load_stage_engines(settings, served)
    try:
        app: Any = create_engine_app(engines, served)
        if faults:
            app = FaultInjector(app)
        log.info("engine server ready", stages=sorted(served), host=host, port=port, faults=faults)
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            lifespan="off",
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECS,
        )
        await uvicorn.Server(config).serve()
    finally:
        await engines.close()
