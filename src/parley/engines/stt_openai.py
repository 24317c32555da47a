"""A remote speech-to-text engine behind the OpenAI-compatible transcription API
(``POST /v1/audio/transcriptions``: faster-whisper-server / speaches, a vLLM Whisper,
OpenAI): the same :class:`SpeechToText` protocol as the embedded Whisper."""

from __future__ import annotations

import io
import time
import wave

import httpx
import numpy as np

from parley.audio.pcm import SAMPLE_RATE, float_to_pcm16
from parley.engine_settings import STTProviderSettings, provider_name
from parley.engines.base import Transcript
from parley.engines.provider_errors import ProviderError, http_failure, transport_failure
from parley.engines.provider_http import PROBE_HEADERS, provider_client
from parley.telemetry.usage import Usage, report_usage

WHAT = "the STT provider"


def wav_bytes(audio: np.ndarray) -> bytes:
    """float32 16 kHz mono as a WAV file (what every transcription server accepts)."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(float_to_pcm16(audio).astype("<i2").tobytes())
    return out.getvalue()


class OpenAICompatibleSTT:
    device = "remote"

    def __init__(self, settings: STTProviderSettings) -> None:
        self._settings = settings
        self._http = provider_client(settings, settings.attempt_timeout)
        self._in_flight = 0
        self._name = provider_name(settings)

    @property
    def busy(self) -> bool:
        return self._in_flight > 0

    async def transcribe(self, audio: np.ndarray, *, probe: bool = False) -> Transcript:
        start = time.perf_counter()
        self._in_flight += 1
        try:
            response = await self._http.post(
                "audio/transcriptions",
                files={"file": ("speech.wav", wav_bytes(audio), "audio/wav")},
                data={
                    "model": self._settings.model,
                    "language": self._settings.language,
                    "response_format": "json",
                },
                headers=PROBE_HEADERS if probe else None,
            )
        except httpx.HTTPError as exc:
            raise transport_failure(WHAT, exc) from exc
        finally:
            self._in_flight -= 1
        if response.status_code != 200:
            raise http_failure(WHAT, response)
        if not probe:
            # Billed by the audio sent, whatever the answer is (a breaker's probe is the
            # process's, no session's).
            seconds = audio.size / SAMPLE_RATE
            report_usage(Usage("stt", self._name, self._settings.model, seconds=seconds))
        try:
            text = response.json()["text"]
            if not isinstance(text, str):
                raise TypeError(f"text is {type(text).__name__}")
        except (ValueError, KeyError, TypeError) as exc:
            raise ProviderError(
                f"{WHAT} answered an unexpected body: {exc!r}", "malformed"
            ) from exc
        return Transcript(text.strip(), (time.perf_counter() - start) * 1000)

    async def probe(self) -> None:
        """The breaker's tiny request: half a second of silence."""
        await self.transcribe(np.zeros(SAMPLE_RATE // 2, dtype=np.float32), probe=True)

    async def aclose(self) -> None:
        await self._http.aclose()
