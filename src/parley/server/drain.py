"""Draining a process before it stops: no new session, the live ones go on for a while.

A drain starts on ``SIGTERM`` (``parley serve``; Kubernetes sends it before killing a
pod) or ``POST /v1/admin/drain``. From then on:

* new sessions and connections for sessions not live here are refused like a full
  server (503 + ``Retry-After``, close 4503), with the code ``server_draining``;
* ``/ready`` answers 503 ``draining``, so a load balancer sends nobody new;
* live sessions go on — a reconnect of one is still admitted — until they end or the
  deadline (``server.drain_deadline_secs``) passes; then each is closed with
  ``server_restarting`` (WebSocket close 1012), which clients answer by reconnecting,
  through the balancer, to another process, where the session resumes from the database;
* once nothing is live, the drain is over (``drained``); ``parley serve`` then exits.

A drain is one-way: a process that drained is restarted, not resumed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from parley.telemetry import get_logger
from parley.transports.admission import Admission
from parley.transports.voice_runtime import live_session_ids, restart_live_session

log = get_logger(__name__)

POLL_SECS = 0.2
"""How often a drain looks whether its sessions have all gone (a few set lookups)."""
CLOSE_WAIT_SECS = 10.0
"""How long closed sessions are given to write their records after the deadline."""


class Drain:
    """One app's drain. ``app`` is the FastAPI app (its ``state`` holds the admission,
    the voice sessions and the WebRTC peers)."""

    def __init__(self, app: Any, deadline_secs: float) -> None:
        self._app = app
        self.deadline_secs = deadline_secs
        self.started_at: float | None = None
        self.deadline: float | None = None
        self.drained = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._on_drained: list[Callable[[], None]] = []

    @property
    def started(self) -> bool:
        return self.started_at is not None

    def on_drained(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the drain is over (at once if it is)."""
        if self.drained.is_set():
            callback()
        else:
            self._on_drained.append(callback)

    def start(self, deadline_secs: float | None = None, *, by: str = "admin") -> None:
        """Begin draining (a second call changes nothing but may shorten the deadline)."""
        now = time.monotonic()
        wanted = now + (self.deadline_secs if deadline_secs is None else deadline_secs)
        if self.started:
            if self.deadline is not None and wanted < self.deadline:
                self.deadline = wanted
            return
        admission: Admission = self._app.state.admission
        admission.draining = True
        self.started_at, self.deadline = now, wanted
        log.warning(
            "draining: no new sessions",
            by=by,
            live=admission.live,
            deadline_secs=round(wanted - now, 1),
        )
        self._task = asyncio.create_task(self._run(), name="drain")

    def status(self) -> dict[str, Any]:
        left = None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
        return {
            "draining": self.started,
            "drained": self.drained.is_set(),
            "live": len(live_session_ids(self._app)),
            "deadline_in_secs": None if left is None else round(left, 1),
        }

    def _live(self) -> bool:
        state = self._app.state
        return bool(live_session_ids(self._app) or state.webrtc_peers or state.sessions)

    async def _run(self) -> None:
        assert self.deadline is not None
        try:
            await self._until_gone(lambda: self.deadline)
            if self._live():
                await self._close_the_rest()
        finally:
            log.warning("drained")
            self.drained.set()
            for callback in self._on_drained:
                callback()

    async def _close_the_rest(self) -> None:
        """The deadline passed: every live connection is closed for a restart."""
        app = self._app
        closed = [sid for sid in live_session_ids(app) if restart_live_session(app, sid)]
        # WebRTC peers whose voice session had not started yet (no data channel).
        for peer in list(self._app.state.webrtc_peers.values()):
            if peer.live is None:
                await peer.close("server draining", end="server_shutdown")
        log.warning("drain deadline: sessions closed for a restart", sessions=len(closed))
        until = time.monotonic() + CLOSE_WAIT_SECS
        await self._until_gone(lambda: until)

    async def _until_gone(self, deadline: Callable[[], float | None]) -> None:
        """Until nothing is live or ``deadline()`` (read anew: it may be shortened)."""
        # Polled: sessions leave by many paths (hang-up, drop, limits, takeover); a few
        # set lookups every POLL_SECS is simpler and safer than a hook on each of them.
        while self._live() and time.monotonic() < (deadline() or 0.0):  # noqa: ASYNC110
            await asyncio.sleep(POLL_SECS)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
