"""Where a voice connection's telemetry starts: one observer per connection, shown every
event the session sends and every record it writes, fanning out to the metrics and the
traces. Telemetry must never break a call: an observer that raises is logged and the
call goes on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from parley.telemetry.costs import CallCost
from parley.telemetry.logs import get_logger
from parley.telemetry.metrics import VoiceMetrics
from parley.telemetry.tracing import TurnTracer

log = get_logger(__name__)


class SessionObserver(Protocol):
    def opened(self) -> None: ...

    def closed(self, reason: str) -> None: ...

    def event(self, ev: dict[str, Any]) -> None: ...

    def turn_finished(self, turn_id: int, state: str) -> None: ...

    def timeline(self, stage: str, turn_id: int | None, data: dict[str, Any]) -> None: ...

    def usage(self, call: CallCost) -> None: ...


class ObserverGroup:
    """Several observers as one."""

    def __init__(self, observers: list[SessionObserver]) -> None:
        self.observers = observers

    def _each(self, method: str, *args: Any) -> None:
        for observer in self.observers:
            try:
                getattr(observer, method)(*args)
            except Exception as exc:
                log.error(
                    "telemetry observer failed",
                    observer=type(observer).__name__,
                    method=method,
                    error=repr(exc),
                    exc_info=exc,
                )

    def opened(self) -> None:
        self._each("opened")

    def closed(self, reason: str) -> None:
        self._each("closed", reason)

    def event(self, ev: dict[str, Any]) -> None:
        self._each("event", ev)

    def turn_finished(self, turn_id: int, state: str) -> None:
        self._each("turn_finished", turn_id, state)

    def timeline(self, stage: str, turn_id: int | None, data: dict[str, Any]) -> None:
        self._each("timeline", stage, turn_id, data)

    def usage(self, call: CallCost) -> None:
        self._each("usage", call)


class Telemetry:
    """A process's metrics and tracer; ``enabled`` false observes nothing (what the
    benchmark compares against)."""

    def __init__(self, metrics: VoiceMetrics, tracer: TurnTracer, enabled: bool = True) -> None:
        self.metrics = metrics
        self.tracer = tracer
        self.enabled = enabled

    def observer(
        self, transport: str, session_id: str, words: Callable[[str], str] | None = None
    ) -> ObserverGroup:
        """``words``: the session's consent to its words in traces (see TurnTracer)."""
        if not self.enabled:
            return ObserverGroup([])
        observers: list[SessionObserver] = [self.metrics.observer(transport)]
        if self.tracer.enabled:
            observers.append(self.tracer.observer(session_id, transport, words))
        return ObserverGroup(observers)
