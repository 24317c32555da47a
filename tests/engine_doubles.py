"""Test-double engines and request helpers for the engine server's tests: an LLM of
three deltas with a JSON mode, an STT that keeps what it heard, a TTS whose second chunk
waits for a gate, and WAV files and multipart uploads made to order."""

from __future__ import annotations

import asyncio
import io
import wave
from collections.abc import AsyncIterator, Sequence

import numpy as np

from parley.engines import ChatMessage, EngineError, Transcript
from parley.engines.completion import JSONCompletion

HI = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
TONE = np.full(1600, 5000, dtype="<i2")  # 100 ms at 16 kHz


class WordsLLM:
    """Three deltas; JSON mode answers a fixed object and keeps the schema it was given."""

    def __init__(self) -> None:
        self.schemas: list[dict[str, object]] = []
        self.closed = 0

    async def stream_chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[str]:
        try:
            for word in ("It ", "is ", "noon."):
                await asyncio.sleep(0)
                yield word
        finally:
            self.closed += 1

    async def prefill(self, messages: Sequence[ChatMessage]) -> None:
        return None

    async def complete_json(
        self, messages: Sequence[ChatMessage], schema: dict[str, object]
    ) -> JSONCompletion:
        self.schemas.append(schema)
        return JSONCompletion('{"speak": "noon"}', "stop")


class StreamOnlyLLM:
    async def stream_chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[str]:
        yield '{"speak": '
        yield '"noon"}'

    async def prefill(self, messages: Sequence[ChatMessage]) -> None:
        return None


class BrokenLLM:
    async def stream_chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[str]:
        raise EngineError("the model fell over")
        yield ""  # an async generator all the same

    async def prefill(self, messages: Sequence[ChatMessage]) -> None:
        return None


class EarSTT:
    """Keeps what it was given; says how much it heard."""

    busy = False

    def __init__(self) -> None:
        self.heard: list[np.ndarray] = []

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        self.heard.append(audio)
        return Transcript(f"heard {audio.size} samples", 1.0)


class GatedTTS:
    """Three 100 ms tone chunks; the second waits for ``gate`` (open by default)."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()

    async def synthesize(self, text: str) -> AsyncIterator[np.ndarray]:
        yield TONE
        await self.gate.wait()
        yield TONE
        yield TONE


class Doubles:
    def __init__(self) -> None:
        self.llm = WordsLLM()
        self.stt = EarSTT()
        self.tts = GatedTTS()


def wav(audio: np.ndarray, rate: int, channels: int = 1, width: int = 2) -> bytes:
    """Float audio in [-1, 1] as a PCM WAV file (the same signal on every channel)."""
    frames = np.repeat(audio[:, None], channels, axis=1).reshape(-1)
    if width == 1:
        raw = (frames * 127 + 128).astype(np.uint8).tobytes()
    elif width == 3:
        ints = (frames * 8_388_607).astype("<i4")
        raw = ints.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        raw = (frames * 32767).astype("<i2").tobytes()
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)
    return out.getvalue()


def sine(seconds: float, rate: int, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def events(body: str) -> list[str]:
    return [line[6:] for line in body.splitlines() if line.startswith("data: ")]


def upload(data: bytes, **fields: str) -> dict[str, object]:
    return {"files": {"file": ("speech.wav", data, "audio/wav")}, "data": {"model": "m", **fields}}
