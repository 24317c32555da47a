"""A circuit breaker per provider: after ``failures`` failures within ``window_secs`` it
opens and the chain sends that provider no traffic; a background probe (a tiny request)
tries it again after ``open_secs`` and closes the breaker when it answers. A rate limit
(HTTP 429 with ``Retry-After``) opens it for exactly that long."""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from parley.engine_settings import BreakerSettings
from parley.engines.provider_errors import failure_kind
from parley.telemetry import get_logger

log = get_logger(__name__)

BreakerState = Literal["closed", "open", "half_open"]


@dataclass
class CircuitBreaker:
    stage: str
    provider: str
    settings: BreakerSettings
    probe: Callable[[], Awaitable[None]]
    """A tiny request to the provider; raises when it is still failing."""
    clock: Callable[[], float] = time.monotonic
    state: BreakerState = "closed"
    opened_at: float | None = None
    reopen_at: float = 0.0
    """While open: when the next probe is sent."""
    last_error: str | None = None
    opened_total: int = 0
    probes_total: int = 0
    _failures: deque[float] = field(default_factory=deque)
    _probing: asyncio.Task[None] | None = None

    @property
    def allows(self) -> bool:
        """May a request be sent to this provider now? (Never while open or probing.)"""
        return self.state == "closed"

    def record_success(self) -> None:
        self._failures.clear()

    def record_failure(self, error: str, retry_after: float | None = None) -> None:
        """One failed request (a 429's ``retry_after`` opens the breaker at once, for that
        long)."""
        now = self.clock()
        self.last_error = error
        if self.state != "closed":
            return
        if retry_after is not None:
            # Bounded: a provider's Retry-After must not switch it off for a day.
            self._open(now, min(retry_after, self.settings.max_retry_after_secs), error)
            return
        self._failures.append(now)
        while self._failures and self._failures[0] < now - self.settings.window_secs:
            self._failures.popleft()
        if len(self._failures) >= self.settings.failures:
            self._open(now, self.settings.open_secs, error)

    def _open(self, now: float, wait: float, error: str) -> None:
        self.state = "open"
        self.opened_at = now
        self.reopen_at = now + wait
        self.opened_total += 1
        self._failures.clear()
        log.warning(
            "provider breaker opened",
            stage=self.stage,
            provider=self.provider,
            retry_in_secs=round(wait, 2),
            error=error,
        )
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a unit test): the next `allows` check stays open
            return
        if self._probing is None or self._probing.done():
            # A context of its own: the probe belongs to no session (its log lines must
            # not carry the session whose request happened to open the breaker).
            self._probing = loop.create_task(
                self._probe_until_closed(), name="breaker-probe", context=contextvars.Context()
            )

    async def _probe_until_closed(self) -> None:
        while self.state != "closed":
            await asyncio.sleep(max(0.0, self.reopen_at - self.clock()))
            self.state = "half_open"
            self.probes_total += 1
            try:
                async with asyncio.timeout(self.settings.probe_timeout_secs):
                    await self.probe()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.state = "open"
                # The kind only: /ready shows it, and a provider's text may name internals.
                self.last_error = failure_kind(exc)
                self.reopen_at = self.clock() + self.settings.open_secs
                log.info(
                    "provider probe failed",
                    stage=self.stage,
                    provider=self.provider,
                    error=repr(exc),
                )
                continue
            self.state = "closed"
            self.opened_at = None
            log.warning("provider breaker closed", stage=self.stage, provider=self.provider)

    async def aclose(self) -> None:
        if self._probing is not None:
            self._probing.cancel()
            # Waited for without raising: the caller's own cancellation still propagates.
            await asyncio.wait([self._probing])

    def status(self) -> dict[str, object]:
        return {
            "provider": self.provider,
            "state": self.state,
            "last_error": self.last_error if self.state != "closed" else None,
            "retry_in_secs": round(max(0.0, self.reopen_at - self.clock()), 2)
            if self.state == "open"
            else None,
        }
