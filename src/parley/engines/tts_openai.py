"""A remote text-to-speech engine behind the OpenAI-compatible speech API
(``POST /v1/audio/speech`` with ``response_format=pcm``: Kokoro-FastAPI, openedai-speech,
OpenAI), streamed as it is synthesized and resampled to Parley's 16 kHz on the way."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import numpy as np
import soxr

from parley.audio.pcm import SAMPLE_RATE
from parley.engine_settings import TTSProviderSettings, provider_name
from parley.engines.base import first_item
from parley.engines.provider_errors import ProviderError, http_failure, transport_failure
from parley.engines.provider_http import PROBE_HEADERS, provider_client
from parley.telemetry.usage import Usage, report_usage

WHAT = "the TTS provider"
NOT_AUDIO = ("application/json", "text/")


class OpenAICompatibleTTS:
    device = "remote"

    def __init__(self, settings: TTSProviderSettings) -> None:
        self._settings = settings
        self._http = provider_client(settings, settings.timeout)
        self._name = provider_name(settings)

    async def synthesize(self, text: str, *, probe: bool = False) -> AsyncIterator[np.ndarray]:
        body = {
            "model": self._settings.model,
            "input": text,
            "voice": self._settings.voice,
            "response_format": "pcm",
        }
        rate = self._settings.sample_rate
        resampler = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="int16", quality="HQ")
        odd = b""
        try:
            async with self._http.stream(
                "POST", "audio/speech", json=body, headers=PROBE_HEADERS if probe else None
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise http_failure(WHAT, response)
                if not probe:
                    # Billed by the text sent once accepted, heard whole or not.
                    model = self._settings.model
                    report_usage(Usage("tts", self._name, model, characters=len(text)))
                kind = response.headers.get("content-type", "")
                if kind.startswith(NOT_AUDIO):
                    raise ProviderError(f"{WHAT} answered {kind!r}, not audio", "malformed")
                async for chunk in response.aiter_bytes():
                    data = odd + chunk
                    cut = len(data) - len(data) % 2  # a sample may straddle two chunks
                    odd = data[cut:]
                    if not cut:
                        continue
                    pcm = np.frombuffer(data[:cut], dtype="<i2")
                    out = pcm if rate == SAMPLE_RATE else resampler.resample_chunk(pcm)
                    if out.size:
                        yield np.asarray(out, dtype=np.int16)
        except httpx.HTTPError as exc:
            raise transport_failure(WHAT, exc) from exc
        if rate != SAMPLE_RATE:
            tail = resampler.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
            if tail.size:
                yield np.asarray(tail, dtype=np.int16)

    async def probe(self) -> None:
        """The breaker's tiny request: one short word, its first audio."""
        await first_item(self.synthesize("Hi.", probe=True))

    async def close(self) -> None:
        await self._http.aclose()
