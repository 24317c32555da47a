"""A Parley app served by uvicorn inside the test's own event loop, on test-double engines:
the real transports (WebSocket, WebRTC signalling and peers) and store, no models. The
test can reach into the server (its app state, monkeypatched classes) while talking to
it over real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI

from parley.config import Settings
from parley.engines import ChatMessage, Engines, Transcript
from parley.server import create_app
from parley.testing import free_port

SECRET = "in-process-secret-0123456789abcdef0123456789"


class LoudnessVAD:
    """Speech = loud window. Deterministic, so the test controls the turn exactly."""

    window_samples = 512

    def stream(self) -> LoudnessVAD:
        return self

    async def probability(self, window: np.ndarray) -> float:
        return 1.0 if float(np.abs(window).mean()) > 0.05 else 0.0


class FixedSTT:
    busy = False

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        return Transcript("What time is it?", 1.0)


class SureEOU:
    async def completion_probability(self, audio: np.ndarray) -> float:
        return 1.0


class ToneTTS:
    async def synthesize(self, text: str) -> AsyncIterator[np.ndarray]:
        yield np.full(1600, 5000, dtype="<i2")


class NoonLLM:
    async def stream_chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[str]:
        yield "It is noon."

    async def prefill(self, messages: Sequence[ChatMessage]) -> None:
        return None


def one_turn_of_speech() -> np.ndarray:
    """A second of loud tone, then a second of silence: one turn for LoudnessVAD."""
    speech = (np.sin(np.arange(16_000) / 5) * 20_000).astype("<i2")
    return np.concatenate([speech, np.zeros(16_000, dtype="<i2")])


@dataclass
class InProcessServer:
    app: FastAPI
    port: int

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    @property
    def voice_sessions(self) -> int:
        """Voice sessions open in the server (what /health counts)."""
        return len(self.app.state.sessions)

    async def wait_until(self, predicate: Any, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():  # noqa: ASYNC110 - the server has no hook for this
                await asyncio.sleep(0.02)


async def serve(directory: Path, database: str = "sqlite") -> AsyncIterator[InProcessServer]:
    """The server, on a fresh SQLite file in ``directory`` or (``"postgresql"``) a
    throwaway PostgreSQL database."""
    from conftest import _create_postgres_database, _drop_postgres_database

    url = (
        await _create_postgres_database()
        if database == "postgresql"
        else f"sqlite:///{directory / 'parley.db'}"
    )
    try:
        async for server in _serve(url):
            yield server
    finally:
        if database == "postgresql":
            await _drop_postgres_database(url)


async def _serve(database_url: str) -> AsyncIterator[InProcessServer]:
    async for server in serve_doubles(database_url):
        yield server


async def serve_doubles(
    database_url: str, llm_engine: Any = None, **sections: Any
) -> AsyncIterator[InProcessServer]:
    """The app on the test-double engines (``llm_engine`` replaces NoonLLM), with settings
    ``sections`` (e.g. ``telemetry={...}``) over the in-process defaults."""
    settings = Settings(
        server={"database_url": database_url, "token_secret": SECRET},
        turn={"preemptive_generation": False},
        **sections,
    )
    engines = Engines(
        stt=FixedSTT(), llm=llm_engine or NoonLLM(), tts=ToneTTS(), vad=LoudnessVAD(), eou=SureEOU()
    )  # type: ignore[arg-type]
    async for server in serve_app(create_app(settings, engines=engines)):
        yield server


async def serve_app(app: FastAPI) -> AsyncIterator[InProcessServer]:
    """``app`` served by uvicorn on a free port of 127.0.0.1, lifespan included."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(30):
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
    try:
        yield InProcessServer(app, port)
    finally:
        server.should_exit = True
        await task
