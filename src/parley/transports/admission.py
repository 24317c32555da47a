"""Admission control: how many live voice sessions this process takes on.

One process serves sessions up to its capacity (``server.max_sessions``); past it, new
work is refused at once with a time to come back (503 + ``Retry-After`` over HTTP, close
4503 on the WebSocket) instead of making every call slower.

A session counts once, by its id, whatever holds it: a running voice session, a WebRTC
peer whose data channel has not opened yet (the voice session starts only then), a
WebSocket connection that is opening one, or a session whose connection dropped less
than ``server.reconnect_hold_secs`` ago. A connection for a session that already counts
is always admitted: a reconnecting caller takes its own place back (the takeover rule of
:mod:`parley.transports.voice_runtime`), it is never locked out by newcomers.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from parley.config import ServerSettings

SERVER_FULL = "server_full"
"""The error code of every refusal for lack of room (HTTP body and WebSocket event)."""
SERVER_DRAINING = "server_draining"
"""The error code of a refusal because this process is draining (restarting, scaling in)."""


class ServerFull(Exception):
    """No room for another live session; ``retry_after_secs`` says when to try again."""

    code = SERVER_FULL

    def __init__(self, live: int, max_sessions: int, retry_after_secs: int) -> None:
        self.live = live
        self.max_sessions = max_sessions
        self.retry_after_secs = retry_after_secs
        super().__init__(self._message())

    def _message(self) -> str:
        return (
            f"the server is at its capacity of {self.max_sessions} live sessions; "
            f"try again in {self.retry_after_secs} s"
        )


class ServerDraining(ServerFull):
    """This process takes no new session: it is draining before a restart or a scale-in.
    Answered like :class:`ServerFull` (503 + ``Retry-After``, close 4503), with its own
    code: a load balancer or a client retries — elsewhere."""

    code = SERVER_DRAINING

    def _message(self) -> str:
        return (
            "this server is draining (restarting or scaling in) and takes no new session; "
            f"try again in {self.retry_after_secs} s"
        )


DEFAULT_CAPACITY = 8
"""Without a figure from the app (a unit test's Admission): the old fixed default."""


class Admission:
    """Counts the live sessions of one app (``state`` is its ``app.state``: the voice
    sessions in ``sessions``, the WebRTC peers in ``webrtc_peers``) and says who may come
    in. Everything runs on the event loop, so a check and the registration that follows
    it without an ``await`` in between cannot be raced."""

    def __init__(
        self,
        state: Any,
        settings: ServerSettings,
        clock: Callable[[], float] = time.monotonic,
        *,
        capacity: int | None = None,
    ) -> None:
        self._state = state
        # ``capacity``: the app's figure (parley.engines.capacity), which is
        # ``server.max_sessions`` when that is set.
        self.max_sessions = capacity or settings.max_sessions or DEFAULT_CAPACITY
        self.retry_after_secs = settings.retry_after_secs
        self.hold_secs = settings.reconnect_hold_secs
        self._clock = clock
        self.draining = False
        """Set by :class:`parley.server.drain.Drain`: no new session is admitted, a live
        one's reconnect still is (it keeps its place until the drain's deadline)."""
        self._opening: Counter[str] = Counter()
        self._held: dict[str, float] = {}  # session id -> until when its place is kept

    def live_ids(self) -> set[str]:
        """The session ids that hold a place now."""
        now = self._clock()
        for session_id, until in list(self._held.items()):
            if until <= now:
                del self._held[session_id]
        ids = {str(s.session_id) for s in self._state.sessions.values()}
        ids.update(self._state.webrtc_peers)
        ids.update(self._opening)
        ids.update(self._held)
        return ids

    @property
    def live(self) -> int:
        return len(self.live_ids())

    @property
    def full(self) -> bool:
        return self.live >= self.max_sessions

    def check_new_session(self) -> None:
        """Raise :class:`ServerFull` unless a brand-new session would fit."""
        live = self.live
        if self.draining:
            raise ServerDraining(live, self.max_sessions, self.retry_after_secs)
        if live >= self.max_sessions:
            raise ServerFull(live, self.max_sessions, self.retry_after_secs)

    def check_connection(self, session_id: str) -> None:
        """Raise :class:`ServerFull` unless a connection for ``session_id`` may open: it
        already holds a place (a reconnect), or there is room for one more."""
        ids = self.live_ids()
        if session_id not in ids and self.draining:
            raise ServerDraining(len(ids), self.max_sessions, self.retry_after_secs)
        if session_id not in ids and len(ids) >= self.max_sessions:
            raise ServerFull(len(ids), self.max_sessions, self.retry_after_secs)

    @contextmanager
    def opening(self, session_id: str) -> Iterator[None]:
        """Admit a connection for ``session_id`` (or raise :class:`ServerFull`) and keep
        its place while its voice session is being opened: opening awaits the database,
        and connections arriving meanwhile must see the place as taken. Once open, the
        voice session itself holds the place."""
        self.check_connection(session_id)
        self._opening[session_id] += 1
        try:
            yield
        finally:
            self._opening[session_id] -= 1
            if self._opening[session_id] <= 0:
                del self._opening[session_id]

    def left(self, session_id: str, *, dropped: bool) -> None:
        """A connection of ``session_id`` ended. One that ``dropped`` (the network, a
        server failure: not an ``end`` nor a clean close by the client) keeps its place
        ``reconnect_hold_secs``, so its caller's reconnect finds room; otherwise the
        place is free at once."""
        if dropped and self.hold_secs > 0:
            self._held[session_id] = self._clock() + self.hold_secs
        else:
            self._held.pop(session_id, None)
