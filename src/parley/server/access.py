"""Who may create sessions, and how fast: ``server.api_keys`` and a per-client rate limit.

Left at its defaults (no keys) Parley is open to whoever reaches it, which is right on
127.0.0.1 and wrong anywhere else (README: "Before exposing Parley"). With keys set,
``POST /v1/sessions`` needs ``Authorization: Bearer <key>``. Whether or not keys are set,
each client (remote address) may create ``server.session_create_burst`` sessions at once
and ``server.session_create_rate`` per second after that; past it, 429 + Retry-After.
"""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Callable

from fastapi import HTTPException, Request

from parley.config import ServerSettings

MAX_TRACKED_CLIENTS = 10_000
"""Buckets kept at most; past it the full ones (clients at rest) are forgotten."""


def require_api_key(settings: ServerSettings, authorization: str | None) -> None:
    """401 unless ``server.api_keys`` is empty or the request carries one of them."""
    if not settings.api_keys:
        return
    presented = ""
    if authorization and authorization.lower().startswith("bearer "):
        presented = authorization[7:].strip()
    # Compared in constant time, every key each time: how long a refusal takes tells
    # nothing about which key came close.
    matched = False
    for key in settings.api_keys:
        matched |= hmac.compare_digest(presented.encode(), key.get_secret_value().encode())
    if not matched:
        raise HTTPException(
            401,
            "creating a session needs an API key (Authorization: Bearer <key>)",
            headers={"WWW-Authenticate": "Bearer"},
        )


class CreationRateLimiter:
    """A token bucket per client address: ``burst`` sessions at once, refilled at ``rate``
    per second. ``rate`` 0 turns the limit off."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, at)

    def take(self, client: str) -> float:
        """0 when ``client`` may create a session now (one is taken), else the seconds
        until it may."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        tokens, at = self._buckets.get(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            self._buckets[client] = (tokens - 1.0, now)
            self._forget_idle(now)
            return 0.0
        self._buckets[client] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def _forget_idle(self, now: float) -> None:
        if len(self._buckets) <= MAX_TRACKED_CLIENTS:
            return
        for client, (tokens, at) in list(self._buckets.items()):
            if tokens + (now - at) * self.rate >= self.burst:
                del self._buckets[client]


def limit_creation(request: Request) -> None:
    """429 with ``Retry-After`` when this client created sessions too fast."""
    limiter: CreationRateLimiter = request.app.state.creation_limiter
    client = request.client.host if request.client is not None else "unknown"
    wait = limiter.take(client)
    if wait > 0:
        retry_after = max(1, math.ceil(wait))
        raise HTTPException(
            429,
            f"too many sessions created from this address; try again in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )
