"""What the engine server (``parley.engine_server``) reads and writes on the wire: the
OpenAI API's request fields, multipart forms, WAV files, chat completion bodies and
OpenAI-style error bodies. Pure functions, no I/O, so each is tested on its own."""

from __future__ import annotations

import email.parser
import email.policy
import io
import json
import time
import uuid
import wave
from dataclasses import dataclass
from typing import Any

import numpy as np
import soxr

from parley.audio.pcm import SAMPLE_RATE
from parley.engines.base import ChatMessage

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
"""OpenAI's roles as Parley's: ``developer`` is the newer name of ``system``."""


class BadRequest(ValueError):
    """The client's request is wrong (an HTTP 400, or ``status``)."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.param = param
        self.status = status


def error_body(message: str, kind: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape: clients (and Parley's own) read ``error.message``."""
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


# -- chat completions -----------------------------------------------------------------


def chat_messages(value: object) -> list[ChatMessage]:
    if not isinstance(value, list) or not value:
        raise BadRequest("'messages' must be a non-empty array", "messages")
    messages = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or item.get("role") not in ROLES:
            raise BadRequest(
                f"messages[{i}] needs a role of {sorted(ROLES)}", f"messages[{i}].role"
            )
        messages.append(ChatMessage(ROLES[item["role"]], _content(item.get("content"), i)))  # type: ignore[arg-type]
    return messages


def _content(value: object, i: int) -> str:
    """A string, or the text of an array of content parts (images are not understood)."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in value
    ):
        return "".join(p["text"] for p in value)
    raise BadRequest(f"messages[{i}].content must be text", f"messages[{i}].content")


def max_tokens(body: dict[str, Any]) -> int | None:
    value = body.get("max_completion_tokens", body.get("max_tokens"))
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest("'max_tokens' must be a positive integer", "max_tokens")
    return value


def json_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The schema a JSON-mode request asks for (``json_object``: any object), or None
    when the request is not in JSON mode."""
    fmt = body.get("response_format")
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_object":
        return {"type": "object"}
    if fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return schema if isinstance(schema, dict) else {"type": "object"}
    return None


@dataclass(frozen=True, slots=True)
class Completion:
    """One completion's identity, shared by its chunks."""

    model: str
    id: str = ""
    created: int = 0

    @classmethod
    def new(cls, model: str) -> Completion:
        return cls(model, f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()))

    def whole(
        self, text: str, finish_reason: str, usage: dict[str, int] | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish_reason,
                }
            ],
        }
        if usage is not None:
            body["usage"] = usage
        return body

    def usage_chunk(self, usage: dict[str, int]) -> str:
        """The last event of a stream asked for its usage (``stream_options``): no
        choices, the token counts."""
        body = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage,
        }
        return sse(body)

    def chunk(self, delta: dict[str, str], finish_reason: str | None = None) -> str:
        """One server-sent event of a streamed completion."""
        body = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
        return sse(body)


def token_usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's ``usage`` object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def wants_usage(body: dict[str, Any]) -> bool:
    """A streamed request asks for its token counts (``stream_options.include_usage``)."""
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def sse(body: object) -> str:
    return f"data: {json.dumps(body)}\n\n"


# -- multipart forms and audio --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FormPart:
    data: bytes
    filename: str | None = None

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


def parse_form(body: bytes, content_type: str) -> dict[str, FormPart]:
    """A ``multipart/form-data`` body by name. The stdlib's MIME parser reads it (a
    form is a MIME multipart message), so the server needs no multipart package."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise BadRequest("expected a multipart/form-data body (with a 'file' part)")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise BadRequest("the multipart body could not be parsed")
    form = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        form[name] = FormPart(payload if isinstance(payload, bytes) else b"", part.get_filename())
    return form


def decode_wav(data: bytes) -> np.ndarray:
    """A PCM WAV file at any rate and channel count as float32 mono at 16 kHz."""
    try:
        with wave.open(io.BytesIO(data), "rb") as wf:
            width, channels, rate = wf.getsampwidth(), wf.getnchannels(), wf.getframerate()
            raw = wf.readframes(wf.getnframes())
    except (wave.Error, EOFError, ValueError) as exc:
        raise BadRequest(f"the file is not a PCM WAV file ({exc})", "file") from exc
    if channels < 1 or rate < 1000:
        raise BadRequest("the WAV file declares no channels or a nonsensical rate", "file")
    audio = _samples(raw, width)
    frames = audio.size // channels
    if frames == 0:
        raise BadRequest("the audio is empty", "file")
    audio = audio[: frames * channels].reshape(frames, channels).mean(axis=1, dtype=np.float32)
    if rate != SAMPLE_RATE:
        audio = soxr.resample(audio, rate, SAMPLE_RATE, quality="HQ")
    return np.ascontiguousarray(audio, dtype=np.float32)


def _samples(raw: bytes, width: int) -> np.ndarray:
    """Interleaved PCM samples of ``width`` bytes as floats in [-1, 1)."""
    if width == 1:  # 8-bit WAV is unsigned
        return (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    if width == 2:
        return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    if width == 3:  # 24-bit: widen each sample to 32 bits, the low byte zero
        n = len(raw) // 3
        wide = np.zeros((n, 4), dtype=np.uint8)
        wide[:, 1:] = np.frombuffer(raw[: n * 3], dtype=np.uint8).reshape(n, 3)
        return wide.view("<i4").reshape(n).astype(np.float32) / 2_147_483_648.0
    if width == 4:
        return np.frombuffer(raw, dtype="<i4").astype(np.float32) / 2_147_483_648.0
    raise BadRequest(f"{width * 8}-bit WAV samples are not supported", "file")


def wav_file(pcm: bytes, sample_rate: int) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as wf:
        wf.setnchannels(1)
        wf.setsampwidth(2)
        wf.setframerate(sample_rate)
        wf.writeframes(pcm)
    return out.getvalue()
