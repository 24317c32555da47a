"""Readiness: ``GET /ready`` answers 200 only when this process can serve a call now.

``/health`` is liveness (the process answers at all). Readiness asks every dependency a
real question: the database a query, each configured engine a tiny inference through
its own async API — so the probe queues in the engine's lane like a session's call and
never runs beside it on the same model — the TTS pool whether all its worker processes
are alive, a remote LLM whether its server answers, and admission whether there is room
for one more session.

Probes are not free on two cores, so their results are kept
``server.readiness_cache_secs`` (a load balancer probing every second does not keep the
models busy) and concurrent requests share one round of probes; room is counted at every
request. Each probe has a deadline (``server.readiness_timeout_secs``): a dependency that
hangs is a failed check, not a hung ``/ready``. Failure reasons are short and never
carry a secret (every secret setting and the database password are masked).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, SecretStr
from sqlalchemy.engine import make_url

from parley.config import Settings
from parley.engines import (
    ChatMessage,
    EngineError,
    Engines,
    LanguageModel,
    TextEndOfTurnModel,
    TextToSpeech,
    VoiceActivityDetector,
)
from parley.engines.base import first_item
from parley.engines.fallback import AllProvidersFailed, ProviderChain, provider_chains
from parley.engines.provider_errors import ProviderError
from parley.store import Store
from parley.telemetry import get_logger
from parley.transports.admission import Admission

log = get_logger(__name__)

router = APIRouter(tags=["health"])

Probe = Callable[[], Awaitable[object]]
"""One dependency's question: returns when it answered, raises when it failed."""
Status = Literal["ready", "not_ready", "full", "draining"]

PROBE_SAMPLES = 8_000
"""Half a second of 16 kHz silence: the audio engines' probe input."""
MAX_REASON_CHARS = 200
_URL_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")


class ProbeFailed(Exception):
    """A dependency answered, but not as a working one does; the message is the reason."""


@dataclass(frozen=True, slots=True)
class Check:
    ok: bool
    ms: float
    """How long the probe took."""
    reason: str | None = None
    """Why it failed (short, no secrets)."""

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.ok, "ms": self.ms}
        if self.reason is not None:
            out["reason"] = self.reason
        return out


@dataclass(frozen=True, slots=True)
class Probed:
    """One round of dependency probes."""

    checks: dict[str, Check]
    at: float
    """``time.monotonic()`` when it finished (for the cache)."""
    wall: datetime

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks.values())


@dataclass(frozen=True, slots=True)
class Readiness:
    status: Status
    probed: Probed
    live: int
    max_sessions: int
    providers: dict[str, list[dict[str, object]]] | None = None
    """Each fallback chain's breakers, now (not cached)."""

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    def as_json(self) -> dict[str, Any]:
        checks = {name: c.as_json() for name, c in self.probed.checks.items()}
        checks["capacity"] = {
            "ok": self.live < self.max_sessions,
            "live": self.live,
            "max": self.max_sessions,
        }
        out: dict[str, Any] = {
            "status": self.status,
            "checks": checks,
            "probed_at": self.probed.wall.isoformat(),
        }
        if self.providers:
            out["providers"] = self.providers
        return out


class ReadinessProbe:
    """Runs the dependency ``probes`` (each under ``timeout_secs``), keeps their result
    ``cache_secs``, and adds the room ``admission`` reports. Any text of ``secrets``
    is masked in failure reasons."""

    def __init__(
        self,
        probes: dict[str, Probe],
        admission: Admission,
        *,
        cache_secs: float,
        timeout_secs: float,
        secrets: Sequence[str] = (),
    ) -> None:
        self.probes = probes
        self.admission = admission
        self.cache_secs = cache_secs
        self.timeout_secs = timeout_secs
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)
        self._latest: Probed | None = None
        self._round: asyncio.Future[Probed] | None = None
        self._last_status: Status | None = None
        self.chains: dict[str, ProviderChain[Any]] = {}
        """The stages that are fallback chains: their breakers are shown."""

    @classmethod
    def for_app(cls, state: Any) -> ReadinessProbe:
        """The probe of an app whose lifespan has set up ``store``, ``engines`` and
        ``admission`` on its ``state``."""
        settings: Settings = state.settings
        store: Store = state.store
        timeout = settings.server.readiness_timeout_secs
        probes: dict[str, Probe] = {"database": store.db.ping}
        if state.engines is not None:  # a control plane has none
            probes.update(engine_probes(state.engines, timeout))
        registry = getattr(state, "registry", None)
        if registry is not None:  # a control plane: Redis answers (the fleet may be full)
            probes["worker_registry"] = registry.workers
        secrets = list(_secret_values(settings))
        password = make_url(store.db.url).password
        if password:
            secrets.append(str(password))
        probe = cls(
            probes,
            state.admission,
            cache_secs=settings.server.readiness_cache_secs,
            timeout_secs=timeout,
            secrets=secrets,
        )
        probe.chains = provider_chains(state.engines)
        return probe

    async def check(self) -> Readiness:
        probed = await self.dependencies()
        live = self.admission.live
        status: Status = "not_ready" if not probed.ok else "ready"
        if probed.ok and live >= self.admission.max_sessions:
            status = "full"
        if self.admission.draining:
            status = "draining"  # whatever else holds: nobody new should be sent here
        self._log_change(status, probed)
        providers = {stage: chain.status() for stage, chain in self.chains.items()}
        return Readiness(status, probed, live, self.admission.max_sessions, providers)

    async def dependencies(self) -> Probed:
        """The latest round of probes if younger than ``cache_secs``, else a new one
        (shared with every request that arrives while it runs)."""
        latest = self._latest
        if latest is not None and time.monotonic() - latest.at < self.cache_secs:
            return latest
        if self._round is None or self._round.done():
            self._round = asyncio.ensure_future(self._probe_all())
        # Shielded: one impatient client must not cancel the round others wait for.
        return await asyncio.shield(self._round)

    async def _probe_all(self) -> Probed:
        names = list(self.probes)
        results = await asyncio.gather(*(self._probe(self.probes[name]) for name in names))
        self._latest = Probed(dict(zip(names, results, strict=True)), time.monotonic(), _now())
        return self._latest

    async def _probe(self, probe: Probe) -> Check:
        started = time.perf_counter()
        reason: str | None = None
        try:
            async with asyncio.timeout(self.timeout_secs):
                await probe()
        except TimeoutError:
            reason = f"no answer within {self.timeout_secs:g} s"
        except Exception as exc:
            reason = self._reason(exc)
        ms = round((time.perf_counter() - started) * 1000, 1)
        return Check(reason is None, ms, reason)

    def _reason(self, exc: Exception) -> str:
        if isinstance(exc, ProviderError | AllProvidersFailed):
            # A provider's own words (its error body) stay in the log: /ready is open.
            log.info("readiness probe failed", error=repr(exc))
            return provider_reason(exc)
        text = (str(exc).strip().splitlines() or [""])[0]
        if not isinstance(exc, ProbeFailed | EngineError):  # those already say what failed
            text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return _URL_CREDENTIALS.sub("***@", text)[:MAX_REASON_CHARS]

    def _log_change(self, status: Status, probed: Probed) -> None:
        if status == self._last_status:
            return
        self._last_status = status
        failing = {name: c.reason for name, c in probed.checks.items() if not c.ok}
        if status == "not_ready":
            log.warning("not ready", failing=failing)
        else:
            log.info("readiness", status=status)


def provider_reason(exc: ProviderError | AllProvidersFailed) -> str:
    """A remote provider's failure as ``/ready`` says it: the kind of failure only."""
    if isinstance(exc, AllProvidersFailed):
        tried = ", ".join(f"{name} {kind}" for name, kind in exc.failures) or "none available"
        return f"every provider failed: {tried}"
    return f"the provider failed: {exc.kind}"


def engine_probes(engines: Engines, timeout_secs: float) -> dict[str, Probe]:
    """One tiny real call per configured engine, through its own async API."""
    probes: dict[str, Probe] = {
        "vad": lambda: _probe_vad(engines.vad),
        "stt": lambda: engines.stt.transcribe(_silence()),
        "end_of_turn": lambda: engines.eou.completion_probability(_silence()),
        "llm": lambda: _probe_llm(engines.llm, timeout_secs),
        "tts": lambda: _probe_tts(engines.tts),
    }
    words: TextEndOfTurnModel | None = getattr(engines, "eou_text", None)  # optional
    if words is not None:
        probes["end_of_turn_text"] = lambda: words.completion_probability("Hello")
    return probes


def _silence() -> np.ndarray:
    return np.zeros(PROBE_SAMPLES, dtype=np.float32)


async def _probe_vad(vad: VoiceActivityDetector) -> None:
    stream = vad.stream()  # its own state: no session's stream is touched
    await stream.probability(np.zeros(stream.window_samples, dtype=np.float32))


async def _probe_llm(llm: LanguageModel, timeout_secs: float) -> None:
    reachable = getattr(llm, "check_reachable", None)
    if reachable is not None:
        # A remote provider: is its server there. A completion would spend tokens (and
        # money) at every probe.
        await reachable(timeout_secs)
        return
    await first_item(llm.stream_chat([ChatMessage("user", "Hi")]))  # one token is an answer


async def _probe_tts(tts: TextToSpeech) -> None:
    running, wanted = getattr(tts, "running", None), getattr(tts, "workers", None)
    if isinstance(running, int) and isinstance(wanted, int) and running < wanted:
        raise ProbeFailed(
            f"{running} of {wanted} TTS worker processes running (replacements are starting)"
        )
    samples = 0
    async for chunk in tts.synthesize("Hi."):
        samples += chunk.size
    if not samples:
        raise ProbeFailed("synthesized no audio")


def _secret_values(model: BaseModel) -> Iterator[str]:
    """Every secret the settings hold (API keys, token and LiveKit secrets, TURN
    credentials…), wherever they are nested."""
    for name in type(model).model_fields:
        yield from _secrets_in(getattr(model, name))


def _secrets_in(value: object) -> Iterator[str]:
    if isinstance(value, SecretStr):
        yield value.get_secret_value()
    elif isinstance(value, BaseModel):
        yield from _secret_values(value)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _secrets_in(item)


def _now() -> datetime:
    return datetime.now(UTC)


@router.get(
    "/ready",
    responses={
        200: {"description": "ready: every dependency answered and there is room"},
        503: {
            "description": "not_ready (a dependency failed; see checks), full (no room "
            "for another session) or draining (stopping: takes no new session); "
            "Retry-After says when to ask again"
        },
    },
)
async def ready(request: Request) -> JSONResponse:
    """Whether this process can serve a call now, and each dependency's check."""
    probe: ReadinessProbe = request.app.state.readiness
    readiness = await probe.check()
    headers = {} if readiness.ready else {"Retry-After": str(probe.admission.retry_after_secs)}
    return JSONResponse(
        readiness.as_json(), status_code=200 if readiness.ready else 503, headers=headers
    )
