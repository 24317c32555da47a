"""Builds the FastAPI app: engines are loaded once at start-up and shared by every session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from parley import __version__
from parley.config import Settings, load_settings
from parley.engines import Engines, load_engines
from parley.server.sessions_api import router as sessions_router
from parley.server.tokens import TokenIssuer
from parley.store import Database, Store
from parley.transports.websocket import router as websocket_router


def create_app(settings: Settings | None = None, engines: Engines | None = None) -> FastAPI:
    """The app. Pass ``engines`` to share already-loaded models (tests, embedding)."""
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database = Database(settings.server.database_url)
        await database.migrate()
        app.state.store = Store(database)
        owned = engines is None
        app.state.engines = engines if engines is not None else await load_engines(settings)
        try:
            yield
        finally:
            if owned:
                await app.state.engines.close()
            await database.close()

    app = FastAPI(title="Parley", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.sessions = {}
    secret = settings.server.token_secret
    app.state.tokens = TokenIssuer(
        secret.get_secret_value() if secret else None, settings.server.token_ttl_secs
    )
    app.include_router(sessions_router)
    app.include_router(websocket_router)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "sessions": len(app.state.sessions)}

    @app.get("/")
    async def index() -> dict[str, Any]:
        return {
            "name": "Parley",
            "version": __version__,
            "websocket": "/v1/ws",
            "protocol": "PCM16LE mono 16 kHz binary audio both ways; JSON text events",
        }

    return app
