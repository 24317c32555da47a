"""Builds the FastAPI app: engines are loaded once at start-up and shared by every session."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from parley import __version__
from parley.config import Settings, load_settings
from parley.engines import Engines, load_engines
from parley.engines.capacity import session_capacity
from parley.knowledge import load_agent_knowledge
from parley.orchestration import Orchestrator
from parley.orchestration.agent_actions import AgentActions
from parley.orchestration.ledger import ToolLedger
from parley.orchestration.tools import load_registry
from parley.server.access import CreationRateLimiter
from parley.server.admin_api import router as admin_router
from parley.server.drain import Drain
from parley.server.fleet_worker import WorkerIdentity, start_heartbeat
from parley.server.inspection import router as inspection_router
from parley.server.metrics_api import build_telemetry
from parley.server.metrics_api import router as metrics_router
from parley.server.readiness import ReadinessProbe
from parley.server.readiness import router as readiness_router
from parley.server.sessions_api import router as sessions_router
from parley.server.sessions_api import server_full_response
from parley.server.supervisor_api import router as supervisor_router
from parley.server.telephony_api import router as telephony_router
from parley.server.tokens import TokenIssuer
from parley.server.turns_api import router as turns_router
from parley.server.webrtc_api import router as webrtc_router
from parley.store import Database, Store
from parley.telemetry import Redactor, get_logger
from parley.transports.admission import Admission, ServerFull
from parley.transports.supervision import SupervisionHub
from parley.transports.supervision_bus import RedisSupervisionBus
from parley.transports.twilio_media import router as twilio_media_router
from parley.transports.websocket import router as websocket_router
from parley.transports.worker_registry import FleetFull, RegistryUnavailable, WorkerRegistry
from parley.voice.phrases import CannedPhrases

log = get_logger(__name__)


RETENTION_PERIOD_SECS = 3600
WEB_ROOT = Path(__file__).resolve().parent.parent / "web"


async def _enforce_retention(store: Store, settings: Settings) -> None:
    """Purge transcripts older than the retention setting, at start-up and then hourly."""
    days = settings.server.transcript_retention_days
    if days is None:
        return
    while True:
        cutoff = datetime.now(UTC) - timedelta(days=days)
        try:
            purged = await store.purge_transcripts_before(cutoff)
            if purged:
                log.info("retention purge", transcripts=purged, days=days)
        except Exception as exc:  # a failed purge is retried next period
            log.warning("retention purge failed", error=repr(exc))
        await asyncio.sleep(RETENTION_PERIOD_SECS)


def create_app(
    settings: Settings | None = None,
    engines: Engines | None = None,
    worker: WorkerIdentity | None = None,
    control: bool = False,
) -> FastAPI:
    """The app. Pass ``engines`` to share already-loaded models (tests, embedding);
    ``worker``: announce this process in the worker registry (``parley worker``);
    ``control``: the control plane of a fleet (``parley control``): no engines and no
    voice endpoints, sessions dispatched to the workers of the registry."""
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # First: a knowledge file that cannot be used fails start-up at once, not after
        # the models load. A control plane answers nobody: it needs none.
        app.state.knowledge = None if control else load_agent_knowledge(settings)
        if app.state.knowledge is not None:
            log.info(
                "knowledge",
                facts=len(app.state.knowledge.base.facts),
                answers=app.state.knowledge.mode,
            )
        database = Database(settings.server.database_url)
        await database.migrate()
        redact = (
            Redactor(settings.log_redact) if settings.server.redact_stored_transcripts else None
        )
        app.state.store = Store(database, redact=redact)
        retention = asyncio.create_task(_enforce_retention(app.state.store, settings))
        owned = engines is None and not control
        if control:
            app.state.engines = None  # the workers talk; the control plane dispatches
        else:
            app.state.engines = engines if engines is not None else await load_engines(settings)
            capacity = app.state.capacity
            log.info("capacity", max_sessions=capacity.sessions, basis=capacity.basis)
        app.state.readiness = ReadinessProbe.for_app(app.state)
        tts = getattr(app.state.engines, "tts", None)  # absent for an HTTP-only app
        app.state.phrases = (
            await CannedPhrases.prepare(tts, settings.agent) if tts is not None else None
        )
        # The orchestration endpoint needs an LLM that can give structured (JSON) replies.
        llm = getattr(app.state.engines, "llm", None)
        structured = llm if hasattr(llm, "complete_json") else None
        tools = load_registry(settings.agent.tools_module, settings.tools)
        app.state.ledger = ToolLedger(app.state.store, tools)
        app.state.orchestrator = (
            Orchestrator(
                structured,
                settings.agent.system_prompt,
                list(tools),
                state_updates=settings.llm.provider != "llama",
            )
            if structured
            else None
        )
        app.state.telemetry = build_telemetry(app.state.engines, settings, app.state.orchestrator)
        # With tools, the voice loop speaks envelopes and acts through the ledger too.
        app.state.agent_actions = (
            AgentActions(app.state.orchestrator, app.state.ledger)
            if app.state.orchestrator is not None and len(tools)
            else None
        )
        bus = None
        if settings.handoff.redis_url is not None:
            # Supervision across processes: a console here sees and takes over sessions
            # living on the other processes that share this Redis.
            hub = app.state.supervision
            url = settings.handoff.redis_url.get_secret_value()  # may hold a password
            bus = await RedisSupervisionBus.connect(url, hub)
        # Announced once its engines are loaded: a worker is chosen only when it can talk.
        heartbeat = start_heartbeat(app.state, settings, worker) if worker is not None else None
        try:
            yield
        finally:
            retention.cancel()
            if heartbeat is not None:
                await heartbeat.stop()  # out of the fleet at once
            await app.state.drain.close()
            for listener in list(app.state.listen_peers.values()):
                await listener.close()
            if bus is not None:
                await bus.close()
            await app.state.supervision.close()
            # WebRTC peers are not HTTP connections the server waits for: close them so
            # clients see their data channel close at once and reconnect elsewhere.
            for peer in list(app.state.webrtc_peers.values()):
                await peer.close("server shutting down", end="server_shutdown")
            if owned:
                await app.state.engines.close()
            if app.state.registry is not None:
                await app.state.registry.close()
            await database.close()
            # Sends the traces still batched (a turn that ended just before shutdown).
            await asyncio.to_thread(app.state.telemetry.tracer.shutdown)

    app = FastAPI(title="Parley", version=__version__, lifespan=lifespan)
    if settings.fleet.allowed_origins:
        # A page served by the control plane posts its WebRTC offer to this worker.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.fleet.allowed_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.state.settings = settings
    app.state.prices = settings.costs.table()
    app.state.sessions = {}
    app.state.webrtc_peers = {}
    app.state.listen_peers = {}
    app.state.supervision = SupervisionHub()
    app.state.capacity = session_capacity(settings)
    app.state.admission = Admission(
        app.state, settings.server, capacity=app.state.capacity.sessions
    )
    app.state.drain = Drain(app, settings.server.drain_deadline_secs)
    app.state.creation_limiter = CreationRateLimiter(
        settings.server.session_create_rate, settings.server.session_create_burst
    )
    # Names this process in turn leases, so a turn it left behind can be told apart.
    app.state.instance_id = f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    secret = settings.server.token_secret
    app.state.tokens = TokenIssuer(
        secret.get_secret_value() if secret else None,
        settings.server.token_ttl_secs,
        worker_id=worker.worker_id if worker is not None else None,
    )
    app.state.registry = None
    if control:
        fleet = settings.fleet
        assert fleet.redis_url is not None, "parley control needs fleet.redis_url"
        app.state.registry = WorkerRegistry.from_url(
            fleet.redis_url.get_secret_value(), expiry_secs=fleet.expiry_secs
        )
    app.include_router(sessions_router)
    app.include_router(turns_router)
    # Twilio's incoming-call webhook: on a control plane it dispatches the call to a
    # worker (server/fleet_telephony.py), whose media stream then carries it.
    app.include_router(telephony_router)
    if not control:
        app.include_router(websocket_router)
        app.include_router(twilio_media_router)
        app.include_router(webrtc_router)
    app.include_router(readiness_router)
    for unavailable in (ServerFull, FleetFull, RegistryUnavailable):
        app.add_exception_handler(unavailable, server_full_response)
    app.include_router(metrics_router)
    app.include_router(admin_router)
    app.include_router(inspection_router)
    app.include_router(supervisor_router)

    @app.get("/supervisor", include_in_schema=False)
    async def supervisor_console() -> FileResponse:
        return FileResponse(WEB_ROOT / "supervisor.html")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "sessions": len(app.state.sessions)}

    @app.get("/v1")
    async def about() -> dict[str, Any]:
        return {
            "name": "Parley",
            "version": __version__,
            "websocket": "/v1/ws",
            "webrtc": "/v1/sessions/{session_id}/webrtc",
            "protocol": "PCM16LE mono 16 kHz binary audio both ways; JSON text events",
        }

    # The browser client: static files inside the package, nothing fetched from outside.
    app.mount("/", StaticFiles(directory=WEB_ROOT, html=True), name="web")

    return app
