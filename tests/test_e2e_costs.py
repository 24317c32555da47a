"""Cost figures on real sessions, spoken over the real WebSocket.

Remote: every stage is a real OpenAI-compatible HTTP provider (``parley.engine_server``
over the embedded models, which reports llama.cpp's token counts as ``usage``), built
from the settings as a deployment builds them, each priced by the table. A turn's cost
is on its record, the session's adds up across a reconnect, ``/metrics`` counts the
same usage and money, and the inspector shows both.

Embedded (the defaults, the shared server): every call costs 0, and its usage is
counted all the same."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from conftest import ADMIN_KEY
from inprocess_server import SECRET, InProcessServer, serve_app
from parley.client import CallClient
from parley.config import Settings
from parley.engines import Engines
from parley.engines.chains import build_llm, build_stt, build_tts
from parley.inspect_report import format_inspection
from parley.server import create_app
from parley.testing import serve_engine_app
from test_metrics import parse, value
from voice_helpers import wait_reply_done

pytestmark = pytest.mark.e2e

served = contextlib.asynccontextmanager(serve_app)
PRICES = {
    "currency": "EUR",
    "prices": [
        {"provider": "asr", "model": "asr-model", "stt_per_minute": 0.5},
        {
            "provider": "brain",
            "model": "chat-model",
            "llm_input_per_million_tokens": 2.0,
            "llm_output_per_million_tokens": 8.0,
        },
        {"provider": "voice", "model": "speech-model", "tts_per_million_characters": 30.0},
    ],
}
GREETING = "Hello, how can I help you today?"


def expected(item: dict[str, Any]) -> float:
    """What an item's usage costs at PRICES, worked out here from the usage alone."""
    if item["stage"] == "stt":
        return item["seconds"] / 60 * 0.5
    if item["stage"] == "llm":
        return (item["input_tokens"] * 2.0 + item["output_tokens"] * 8.0) / 1e6
    return item["characters"] * 30.0 / 1e6


def by_stage(cost: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {i["stage"]: i for i in cost["items"]}


@contextlib.asynccontextmanager
async def remote_server(
    embedded: Engines, tmp_path: Path
) -> AsyncIterator[tuple[InProcessServer, Settings]]:
    async with serve_engine_app(embedded, "llm,stt,tts", faults=False) as provider:
        remote = {"provider": "openai", "base_url": provider.url}
        settings = Settings(
            server={"database_url": f"sqlite:///{tmp_path / 'parley.db'}", "token_secret": SECRET},
            telemetry={"admin_key": ADMIN_KEY},
            agent={"greeting": GREETING},
            stt={**remote, "name": "asr", "model": "asr-model"},
            llm={**remote, "name": "brain", "model": "chat-model"},
            tts={**remote, "name": "voice", "model": "speech-model"},
            costs=PRICES,
        )
        engines = Engines(
            stt=await build_stt(settings),
            llm=await build_llm(settings),
            tts=await build_tts(settings),
            vad=embedded.vad,
            eou=embedded.eou,
            eou_text=embedded.eou_text,
        )
        try:
            async with served(create_app(settings, engines=engines)) as server:
                yield server, settings
        finally:
            await engines.stt.aclose()  # type: ignore[attr-defined]
            await engines.llm.aclose()  # type: ignore[attr-defined]
            await engines.tts.close()  # type: ignore[attr-defined]


async def admin(http: httpx.AsyncClient) -> dict[str, str]:
    minted = await http.post("/v1/admin/tokens", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    return {"Authorization": f"Bearer {minted.json()['token']}"}


async def closed_record(
    http: httpx.AsyncClient, sid: str, headers: dict[str, str], token: str
) -> dict[str, Any]:
    """The session's record (read with the admin ``headers``) once its connection is
    closed and the close written: the status, read with the caller's ``token``, turns
    ``disconnected`` only after the voice session's last writes."""
    mine = {"Authorization": f"Bearer {token}"}

    async def status() -> str:
        return str((await http.get(f"/v1/sessions/{sid}", headers=mine)).json()["reconnect_status"])

    async with asyncio.timeout(20):
        while await status() != "disconnected":  # noqa: ASYNC110 - the store has no hook
            await asyncio.sleep(0.1)
    return dict((await http.get(f"/v1/sessions/{sid}/timeline", headers=headers)).json())


async def one_turn(call: CallClient, speech: np.ndarray, after: float) -> float:
    await call.say(speech)
    ended_at, _ = await call.wait_for("turn.ended", after=after, timeout=30)
    _, done_at = await wait_reply_done(call, after=ended_at, timeout=60)
    return done_at


async def test_a_remote_session_costs_per_turn_and_per_session_across_a_reconnect(
    embedded_engines: Engines, caller: Callable[..., np.ndarray], tmp_path: Path
) -> None:
    async with remote_server(embedded_engines, tmp_path) as (server, _):
        async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
            headers = await admin(http)
            first = CallClient(server.ws_url)
            async with first:
                _, greeted_at = await wait_reply_done(first, after=0, timeout=60)
                await one_turn(first, caller("What is the capital city of France"), greeted_at)
            assert first.session is not None
            sid = first.session["session_id"]
            record = await closed_record(http, sid, headers, first.session["token"])

            # -- the first turn: each stage's usage, priced, on the turn's record
            (turn,) = record["turns"]
            cost = turn["result"]["cost"]
            assert cost["currency"] == "EUR" and cost["complete"] is True
            assert "estimated" not in cost  # the provider's own token counts
            items = by_stage(cost)
            assert set(items) == {"stt", "llm", "tts"}
            assert (items["stt"]["provider"], items["stt"]["model"]) == ("asr", "asr-model")
            assert items["stt"]["seconds"] > 1.0  # the question was transcribed
            assert items["llm"]["input_tokens"] > 10 and items["llm"]["output_tokens"] > 0
            spoken = turn["result"]["spoken"]
            assert items["tts"]["characters"] >= len(spoken.replace(" ", ""))
            for item in cost["items"]:
                assert item["cost"] == pytest.approx(expected(item), rel=1e-9), item
            assert cost["total"] == pytest.approx(sum(i["cost"] for i in cost["items"]))
            assert cost["total"] > 0

            # -- the session: the turn, and the greeting (no turn's) besides
            first_total = record["cost"]
            session = by_stage(first_total)
            assert session["llm"] == items["llm"]  # only turns ask the model
            assert session["tts"]["characters"] >= items["tts"]["characters"] + len(GREETING)
            assert first_total["total"] >= cost["total"] + len(GREETING) * 30.0 / 1e6 - 1e-12

            # -- a reconnect: the session's total goes on from the stored one
            refreshed = await http.post(
                f"/v1/sessions/{sid}/tokens",
                json={},
                headers={"Authorization": f"Bearer {first.session['token']}"},
            )
            token = refreshed.json()["token"]
            async with CallClient(f"{server.ws_url}?token={token}") as again:
                _, started = await again.wait_for("session.started")
                assert started["resumed"]
                await one_turn(again, caller("Can you tell me a fun fact about the moon"), 0)
            record = await closed_record(http, sid, headers, token)
            second = record["turns"][1]["result"]["cost"]
            total = record["cost"]
            llm_turns = [by_stage(t["result"]["cost"])["llm"] for t in record["turns"]]
            assert by_stage(total)["llm"]["input_tokens"] == sum(
                i["input_tokens"] for i in llm_turns
            )
            assert by_stage(total)["llm"]["output_tokens"] == sum(
                i["output_tokens"] for i in llm_turns
            )
            assert by_stage(total)["llm"]["requests"] == sum(i["requests"] for i in llm_turns)
            assert total["total"] >= first_total["total"] + second["total"] - 1e-12
            for item in total["items"]:
                assert item["cost"] == pytest.approx(expected(item), rel=1e-9), item

            # -- /metrics: the same usage and money
            samples = parse((await http.get("/metrics")).text)
            money = sum(v for (name, _), v in samples.items() if name == "parley_cost_total")
            assert money == pytest.approx(total["total"], rel=1e-9)
            tokens_in = value(
                samples,
                "parley_usage_tokens_total",
                provider="brain",
                model="chat-model",
                direction="input",
            )
            assert tokens_in == by_stage(total)["llm"]["input_tokens"]
            assert (
                value(
                    samples,
                    "parley_usage_calls_total",
                    stage="stt",
                    provider="asr",
                    model="asr-model",
                )
                == by_stage(total)["stt"]["requests"]
            )

            # -- the inspector: per turn and per session; the caller's own token sees none
            data = (await http.get(f"/v1/sessions/{sid}/inspection", headers=headers)).json()
            assert data["cost"] == total
            assert [t["cost"] for t in data["turns"]] == [
                t["result"]["cost"] for t in record["turns"]
            ]
            report = format_inspection(data)
            assert f"session cost: {total['total']:.6f} EUR" in report
            assert f"cost: {second['total']:.6f} EUR" in report
            mine = {"Authorization": f"Bearer {token}"}
            assert (await http.get(f"/v1/sessions/{sid}", headers=mine)).json()["cost"] is None
            own = (await http.get(f"/v1/sessions/{sid}/timeline", headers=mine)).json()
            assert own["cost"] is None and "cost" not in own["turns"][0]["result"]


async def test_the_embedded_engines_cost_nothing_and_their_usage_is_counted(server, caller):
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
        headers = await admin(http)
        async with CallClient(server.ws_url) as call:
            _, greeted_at = await wait_reply_done(call, after=0)
            await one_turn(
                call, caller("What time does the store open tomorrow morning"), greeted_at
            )
        assert call.session is not None
        sid, token = call.session["session_id"], call.session["token"]
        record = await closed_record(http, sid, headers, token)
        samples = parse((await http.get("/metrics")).text)
    cost = record["turns"][0]["result"]["cost"]
    assert cost["total"] == 0.0 and cost["complete"] is True
    items = by_stage(cost)
    named = [(items[s]["provider"], items[s]["model"]) for s in ("stt", "llm", "tts")]
    assert named == [
        ("whisper", "tiny.en"),
        ("llama", "SmolLM2-135M-Instruct.Q4_1"),
        ("piper", "en_US-joe-medium"),
    ]
    assert items["stt"]["seconds"] > 1.0
    assert items["llm"]["input_tokens"] > 10 and items["llm"]["output_tokens"] > 0
    assert items["tts"]["characters"] > 0
    assert all(i["cost"] == 0.0 for i in cost["items"])
    assert record["cost"]["total"] == 0.0 and record["cost"]["complete"] is True
    llm = items["llm"]
    calls = value(
        samples, "parley_usage_calls_total", stage="llm", provider="llama", model=llm["model"]
    )
    assert calls >= llm["requests"]
    assert (
        value(
            samples,
            "parley_cost_total",
            stage="llm",
            provider="llama",
            model=llm["model"],
            currency="USD",
        )
        == 0.0
    )
