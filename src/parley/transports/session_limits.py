"""How long a session may live and sit idle, and what its tokens are worth once it ended.

A session ends when its caller ends it (``end``), when it reaches
``server.max_session_secs`` or when its connection sat idle (no speech, no control
message) for ``server.idle_timeout_secs``; ``ended_at`` is then set on its record. An
ended session is closed to its tokens: every endpoint and every connection refuses
them, whatever their ``exp`` (a deleted session's tokens are refused too: its record is
gone). This is the revocation check, read from the store on every use, so it holds
across processes and restarts.

:class:`SessionLimits` watches one live connection and ends it at either limit, after an
``error`` event that says why; the transport closes with :data:`CLOSE_IDLE` or
:data:`CLOSE_EXPIRED`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from parley.config import ServerSettings
from parley.telemetry import get_logger
from parley.voice.events import event

log = get_logger(__name__)

CLOSE_IDLE = 4408
"""Close code of a connection ended for sitting idle (``idle_timeout``)."""
CLOSE_EXPIRED = 4410
"""Close code of a connection whose session reached its maximum duration or had ended
(``session_expired`` / ``session_ended``)."""
IDLE_TIMEOUT = "idle_timeout"
SESSION_EXPIRED = "session_expired"
SESSION_ENDED = "session_ended"
CHECK_EVERY_SECS = 1.0
"""How often a live connection's limits are checked (a few comparisons: cheap), so a
session gone deaf is closed within a second."""


def _epoch(moment: datetime) -> float:
    # SQLite gives back naive datetimes; they were written in UTC.
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def session_deadline(record: Any, settings: ServerSettings) -> float:
    """Epoch seconds at which the session (a ``SessionRecord``) reaches its maximum age."""
    return _epoch(record.started_at) + settings.max_session_secs


def refusal(record: Any, settings: ServerSettings, now: float | None = None) -> str | None:
    """Why the session's tokens are refused now (``SESSION_ENDED`` or
    ``SESSION_EXPIRED``), or None while it may still be used."""
    if record.ended_at is not None:
        return SESSION_ENDED
    if (time.time() if now is None else now) >= session_deadline(record, settings):
        return SESSION_EXPIRED
    return None


REFUSAL_MESSAGES = {
    SESSION_ENDED: "the session has ended; its tokens are revoked (create a new session)",
    SESSION_EXPIRED: "the session has reached its maximum duration; create a new session",
}


CLOSE_INTERNAL_ERROR = 1011
DEAF = "internal_error"


class SessionLimits:
    """Ends one live connection at the session's maximum age, after
    ``idle_timeout_secs`` without activity, or once it went deaf (its audio loop died: a
    session that cannot hear must not stay connected). ``last_activity`` reads the
    event-loop time of the caller's last speech or control message; ``expire(code,
    close_code)`` is called once, after the ``error`` event (if any) was sent with
    ``send_event``."""

    def __init__(
        self,
        settings: ServerSettings,
        deadline: float,
        last_activity: Callable[[], float],
        send_event: Callable[[dict[str, Any]], None],
        expire: Callable[[str, int], None],
        deaf: Callable[[], bool] = lambda: False,
    ) -> None:
        self._settings = settings
        self._deadline = deadline
        self._last_activity = last_activity
        self._send_event = send_event
        self._expire = expire
        self._deaf = deaf

    def verdict(self, loop_now: float, wall_now: float) -> tuple[str, int, str | None] | None:
        """The code, close code and message (None: the client was told already) of an
        exceeded limit, or None."""
        if self._deaf():
            # The session already sent its ``internal_error``; a reconnect resumes it.
            return DEAF, CLOSE_INTERNAL_ERROR, None
        if wall_now >= self._deadline:
            hours = self._settings.max_session_secs / 3600
            return (
                SESSION_EXPIRED,
                CLOSE_EXPIRED,
                f"the session reached its maximum duration ({hours:g} h); create a new one",
            )
        idle = self._settings.idle_timeout_secs
        if idle and loop_now - self._last_activity() >= idle:
            return (
                IDLE_TIMEOUT,
                CLOSE_IDLE,
                f"no speech or message for {idle:g} s; the session is ended",
            )
        return None

    async def run(self) -> None:
        """Check until a limit is reached, then report it and return."""
        loop = asyncio.get_running_loop()
        idle = self._settings.idle_timeout_secs or CHECK_EVERY_SECS
        every = max(0.05, min(CHECK_EVERY_SECS, idle / 4))
        while True:
            verdict = self.verdict(loop.time(), time.time())
            if verdict is not None:
                code, close_code, message = verdict
                log.info("session limit reached; closing", code=code)
                if message is not None:
                    self._send_event(event("error", code=code, message=message))
                self._expire(code, close_code)
                return
            await asyncio.sleep(min(every, max(0.05, self._deadline - time.time())))
