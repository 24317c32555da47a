"""Failover over the real WebSocket with real speech: every stage's primary provider is a
real local HTTP server speaking the OpenAI-compatible API (``parley.engine_server`` over
the embedded models, with fault injection in front), its fallback the embedded engine.
Each failure mode on a primary still gets the caller an answer, once; breakers open
(no more requests reach the failed primary: the server counts them) and close again;
the filler is heard while a primary hangs; all providers down is a spoken apology and an
error, and the session goes on when a provider is back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from inprocess_server import SECRET, serve_app
from parley.client import CallClient
from parley.config import Settings
from parley.engine_settings import BreakerSettings
from parley.engines import Engines
from parley.engines.breaker import CircuitBreaker
from parley.engines.fallback import FallbackSTT, Provider, ProviderChain
from parley.engines.fallback_llm import FallbackLLM
from parley.engines.fallback_tts import FallbackTTS
from parley.engines.llm_openai import OpenAICompatibleLLM
from parley.engines.stt_openai import OpenAICompatibleSTT
from parley.engines.tts_openai import OpenAICompatibleTTS
from parley.server import create_app
from parley.testing import EngineAppServer, serve_engine_app
from voice_helpers import wait_reply_done

pytestmark = pytest.mark.e2e

served = contextlib.asynccontextmanager(serve_app)
QUESTION = "What is the capital city of France"
ADMIN_KEY = "failover-admin-key-0123456789"


def remote(kind: str, url: str, **fields: Any) -> Any:
    settings = Settings(**{kind: {"provider": "openai", "base_url": url, **fields}})
    if kind == "stt":
        return OpenAICompatibleSTT(settings.stt)
    if kind == "llm":
        return OpenAICompatibleLLM(settings.llm)
    return OpenAICompatibleTTS(settings.tts)


def chain(
    kind: type[ProviderChain[Any]],
    stage: str,
    engines: list[tuple[str, Any]],
    timeout: float,
    breaker: BreakerSettings,
) -> Any:
    providers = []
    for name, engine in engines:
        probe = getattr(engine, "probe", None) or _never
        providers.append(
            Provider(name, engine, CircuitBreaker(stage, name, breaker, probe), timeout)
        )
    return kind(stage, providers)


async def _never() -> None:  # the embedded engine is never probed here
    return None


@contextlib.asynccontextmanager
async def failover_server(
    embedded: Engines,
    tmp_path: Path,
    *,
    breaker: BreakerSettings,
    llm_fallback: Any = None,
) -> AsyncIterator[tuple[Any, dict[str, EngineAppServer], Engines]]:
    """Parley whose STT, LLM and TTS each try a remote primary first (one engine server
    per stage, so each stage's faults are its own), then the embedded engine."""
    async with contextlib.AsyncExitStack() as stack:
        primaries = {
            stage: await stack.enter_async_context(serve_engine_app(embedded, stage))
            for stage in ("stt", "llm", "tts")
        }
        engines = Engines(
            stt=chain(
                FallbackSTT,
                "stt",
                [("primary", remote("stt", primaries["stt"].url)), ("whisper", embedded.stt)],
                2.0,
                breaker,
            ),
            llm=chain(
                FallbackLLM,
                "llm",
                [
                    ("primary", remote("llm", primaries["llm"].url)),
                    ("fallback", llm_fallback or embedded.llm),
                ],
                3.0,
                breaker,
            ),
            tts=chain(
                FallbackTTS,
                "tts",
                [("primary", remote("tts", primaries["tts"].url)), ("piper", embedded.tts)],
                3.0,
                breaker,
            ),
            vad=embedded.vad,
            eou=embedded.eou,
            eou_text=embedded.eou_text,
        )
        settings = Settings(
            server={"database_url": f"sqlite:///{tmp_path / 'parley.db'}", "token_secret": SECRET},
            telemetry={"admin_key": ADMIN_KEY},
        )
        app = create_app(settings, engines=engines)
        try:
            async with served(app) as server:
                yield server, primaries, engines
        finally:
            for stage_chain in (engines.stt, engines.llm, engines.tts):
                for provider in stage_chain.providers:  # type: ignore[attr-defined]
                    await provider.breaker.aclose()
                    if getattr(provider.engine, "device", None) == "remote":
                        closer = getattr(provider.engine, "aclose", None) or provider.engine.close
                        await closer()


async def ask(call: CallClient, speech: np.ndarray) -> tuple[int, list[str], float]:
    """Say ``speech``; the turn's id, the sentences the agent said for it, and when it
    finished."""
    start = asyncio.get_running_loop().time()
    await call.say(speech)
    ended_at, ended = await call.wait_for("turn.ended", after=start, timeout=60)
    _, done_at = await wait_reply_done(call, after=ended_at, timeout=60)
    turn_id = ended["turn_id"]
    said = [e["text"] for e in call.of_type("agent.text") if e.get("turn_id") == turn_id]
    return turn_id, said, done_at


async def timeline(server: Any, call: CallClient) -> list[dict[str, Any]]:
    assert call.session is not None
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
        r = await http.get(
            f"/v1/sessions/{call.session['session_id']}/timeline",
            headers={"Authorization": f"Bearer {call.session['token']}"},
        )
    return list(r.json()["events"])


FAILURES: list[tuple[str, dict[str, Any]]] = [
    ("llm", {"mode": "status", "status": 500}),
    ("llm", {"mode": "drop_after", "chunks": 3}),
    ("llm", {"mode": "malformed"}),
    ("llm", {"mode": "stopped"}),
    ("tts", {"mode": "status", "status": 503}),
    ("tts", {"mode": "drop_after", "chunks": 3}),
    ("tts", {"mode": "malformed"}),
    ("tts", {"mode": "stopped"}),
    ("stt", {"mode": "status", "status": 500}),
    ("stt", {"mode": "malformed"}),
    ("stt", {"mode": "hang"}),
]


async def test_each_failure_of_a_primary_is_answered_by_the_fallback_once(
    embedded_engines: Engines, caller: Callable[..., np.ndarray], tmp_path: Path
) -> None:
    # A breaker that never opens here: each turn must reach the failing primary.
    never_opens = BreakerSettings(failures=1_000)
    speech = caller(QUESTION)
    async with failover_server(embedded_engines, tmp_path, breaker=never_opens) as (
        server,
        primaries,
        _,
    ):
        async with CallClient(server.ws_url) as call:
            await call.wait_for("session.started")
            for stage, fault in FAILURES:
                primary = primaries[stage]
                if fault["mode"] == "stopped":
                    await primary.stop()  # connections refused
                else:
                    primary.set_faults(**fault)
                turn_id, said, _ = await ask(call, speech)
                assert said, (stage, fault)
                assert len(said) == len(set(said)), (stage, fault, said)  # none said twice
                errors = [e for e in call.of_type("error") if e.get("turn_id") == turn_id]
                assert not errors, (stage, fault, errors)
                ended = [e for e in call.of_type("turn.ended") if e["turn_id"] == turn_id]
                assert "capital" in ended[-1]["text"].lower(), (stage, fault)
                events = await timeline(server, call)
                failovers = [
                    e["data"]
                    for e in events
                    if e["stage"] == "provider.failover" and e["data"]["stage"] == stage
                ]
                assert failovers and failovers[-1]["from"] == "primary", (stage, fault, events)
                if fault["mode"] == "stopped":
                    await primary.start()
                else:
                    primary.set_faults(mode="none")
            counts = primaries["llm"].faults()
            assert counts["requests"].get("/v1/chat/completions", 0) >= 4


async def test_a_breaker_opens_stops_traffic_to_the_primary_and_closes_when_it_recovers(
    embedded_engines: Engines, caller: Callable[..., np.ndarray], tmp_path: Path
) -> None:
    breaker = BreakerSettings(failures=2, window_secs=60, open_secs=0.5)
    speech = caller(QUESTION)
    async with failover_server(embedded_engines, tmp_path, breaker=breaker) as (
        server,
        primaries,
        engines,
    ):
        llm = primaries["llm"]
        llm.set_faults(mode="status", status=500)
        async with (
            CallClient(server.ws_url) as call,
            httpx.AsyncClient(base_url=server.http, timeout=30) as http,
        ):
            await call.wait_for("session.started")
            for _ in range(2):
                _, said, _ = await ask(call, speech)
                assert said
            assert llm.faults()["requests"]["/v1/chat/completions"] == 2
            ready = (await http.get("/ready")).json()
            states = {p["provider"]: p["state"] for p in ready["providers"]["llm"]}
            assert states["primary"] in ("open", "half_open") and states["fallback"] == "closed"
            metrics = (await http.get("/metrics")).text
            assert 'parley_provider_breaker_opened_total{provider="primary",stage="llm"} 1.0' in (
                metrics
            )
            # Open: the next turn is answered without a request to the primary (its probes
            # are marked, and counted apart).
            _, said, _ = await ask(call, speech)
            assert said and llm.faults()["requests"]["/v1/chat/completions"] == 2
            assert llm.faults()["probes"].get("/v1/chat/completions", 0) >= 1
            # It recovers: a probe closes the breaker and the primary answers again.
            llm.set_faults(mode="none")
            async with asyncio.timeout(15):
                while not engines.llm.providers[0].breaker.allows:  # type: ignore[attr-defined]  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
            _, said, _ = await ask(call, speech)
            assert said and llm.faults()["requests"]["/v1/chat/completions"] >= 3
            # The inspector shows where each turn failed over.
            auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
            admin = (await http.post("/v1/admin/tokens", headers=auth)).json()["token"]
            assert call.session is not None
            inspected = await http.get(
                f"/v1/sessions/{call.session['session_id']}/inspection",
                headers={"Authorization": f"Bearer {admin}"},
            )
            first = inspected.json()["turns"][0]
            assert {"stage": "llm", "from": "primary", "to": "fallback", "kind": "http_500"} in (
                first["failovers"]
            )


async def test_a_rate_limit_opens_the_breaker_for_its_retry_after(
    embedded_engines: Engines, caller: Callable[..., np.ndarray], tmp_path: Path
) -> None:
    async with failover_server(embedded_engines, tmp_path, breaker=BreakerSettings(failures=5)) as (
        server,
        primaries,
        _,
    ):
        tts = primaries["tts"]
        tts.reset_faults()  # the filler and apology were synthesized there at start-up
        tts.set_faults(mode="status", status=429, retry_after=30)
        async with (
            CallClient(server.ws_url) as call,
            httpx.AsyncClient(base_url=server.http, timeout=30) as http,
        ):
            await call.wait_for("session.started")
            _, said, _ = await ask(call, caller(QUESTION))
            assert said and not call.of_type("error")
            # One 429 opened it (failures=5 does not matter): no second request.
            assert tts.faults()["requests"]["/v1/audio/speech"] == 1
            ready = (await http.get("/ready")).json()
            (primary,) = [p for p in ready["providers"]["tts"] if p["provider"] == "primary"]
            # Open for the Retry-After (30 s), not the breaker's own 10 s.
            assert primary["state"] == "open" and 10 < primary["retry_in_secs"] <= 30


async def test_the_filler_is_heard_while_a_hung_primary_is_waited_for(
    embedded_engines: Engines, caller: Callable[..., np.ndarray], tmp_path: Path
) -> None:
    async with failover_server(
        embedded_engines, tmp_path, breaker=BreakerSettings(failures=1_000)
    ) as (server, primaries, _):
        primaries["llm"].set_faults(mode="hang")
        async with CallClient(server.ws_url) as call:
            await call.wait_for("session.started")
            turn_id, said, _ = await ask(call, caller(QUESTION))
            fillers = [e for e in call.of_type("agent.filler") if e["turn_id"] == turn_id]
            assert [f["text"] for f in fillers] == ["One moment."]
            assert said and "One moment." not in said
            (metrics,) = [e for e in call.of_type("turn.metrics") if e["turn_id"] == turn_id]
            # Said ~1.2 s after the turn was confirmed; the answer came after the 3 s
            # first-token timeout, and its first audio is what voice-to-voice measures.
            assert metrics["filler_ms"] < metrics["voice_to_voice_ms"]
            assert metrics["voice_to_voice_ms"] > 3_000


async def test_all_providers_down_is_a_spoken_apology_and_the_session_goes_on(
    embedded_engines: Engines, caller: Callable[..., np.ndarray], tmp_path: Path
) -> None:
    speech = caller(QUESTION)
    async with contextlib.AsyncExitStack() as stack:
        backup = await stack.enter_async_context(serve_engine_app(embedded_engines, "llm"))
        second = remote("llm", backup.url)
        stack.push_async_callback(second.aclose)
        server, primaries, _ = await stack.enter_async_context(
            failover_server(
                embedded_engines, tmp_path, breaker=BreakerSettings(), llm_fallback=second
            )
        )
        primaries["llm"].set_faults(mode="status", status=500)
        backup.set_faults(mode="status", status=503)
        async with CallClient(server.ws_url) as call:
            await call.wait_for("session.started")
            turn_id, said, _ = await ask(call, speech)
            (error,) = [e for e in call.of_type("error") if e["turn_id"] == turn_id]
            assert error["code"] == "engine_error" and error["stage"] == "llm"
            assert said == ["Sorry, I can't answer right now. Please try again in a moment."]
            error_at = next(t for t, e in call.events if e is error)
            assert call.first_loud_audio_after(error_at) is not None  # it was heard
            # Both come back: the same session answers the next question.
            primaries["llm"].set_faults(mode="none")
            backup.set_faults(mode="none")
            turn_id, said, _ = await ask(call, speech)
            assert said and not [e for e in call.of_type("error") if e["turn_id"] == turn_id]
