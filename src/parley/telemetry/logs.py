"""JSON logs keyed by session and turn id, with sensitive fields redacted."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import Any

from parley.telemetry.redact import Redactor, redact_secrets, scrub_query_strings
from parley.telemetry.trace_ids import turn_trace_ids

_session_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("session_id", default=None)
_turn_id: contextvars.ContextVar[int | None] = contextvars.ContextVar("turn_id", default=None)

# Fields whose values are user speech or model text: always passed through the redactor.
SENSITIVE_FIELDS = frozenset({"text", "transcript", "content", "prompt"})
# uvicorn's loggers of requests and WebSocket handshakes: their paths lose the query.
ACCESS_LOGGERS = frozenset({"uvicorn.access", "uvicorn.error"})


def bind_session(session_id: str | None) -> None:
    _session_id.set(session_id)


def bind_turn(turn_id: int | None) -> None:
    _turn_id.set(turn_id)


class JsonFormatter(logging.Formatter):
    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redact = redactor

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": self._redact(redact_secrets(record.getMessage())),
        }
        if record.name in ACCESS_LOGGERS:
            entry["msg"] = scrub_query_strings(entry["msg"])
        session_id = getattr(record, "session_id", None) or _session_id.get()
        turn_id = getattr(record, "turn_id", None) or _turn_id.get()
        if session_id:
            entry["session_id"] = session_id
        if turn_id is not None:
            entry["turn_id"] = turn_id
            if session_id:
                # The turn's trace (see telemetry.tracing): a log line finds its spans.
                trace_id, span_id = turn_trace_ids(session_id, turn_id)
                entry["trace_id"] = f"{trace_id:032x}"
                entry["span_id"] = f"{span_id:016x}"
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                if isinstance(value, str):
                    value = redact_secrets(value)
                    if key in SENSITIVE_FIELDS:
                        value = self._redact(value)
                elif isinstance(value, list | tuple | dict):
                    value = _redact_nested(value)
                entry[key] = value
        if record.exc_info:
            entry["exc"] = redact_secrets(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


def _redact_nested(value: Any) -> Any:
    """Secrets masked in every string inside lists and dicts (a field's value may be one)."""
    if isinstance(value, str):
        return redact_secrets(value)
    if isinstance(value, list | tuple):
        return [_redact_nested(v) for v in value]
    if isinstance(value, dict):
        return {k: _redact_nested(v) for k, v in value.items()}
    return value


class StructuredLogger(logging.LoggerAdapter[logging.Logger]):
    """``log.info("msg", key=value)``: keyword fields become JSON fields."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        reserved = {"exc_info", "stack_info", "stacklevel", "extra"}
        fields = {k: kwargs.pop(k) for k in list(kwargs) if k not in reserved}
        extra = dict(kwargs.pop("extra", None) or {})
        if fields:
            extra["fields"] = fields
        kwargs["extra"] = extra
        return msg, kwargs


def get_logger(name: str) -> StructuredLogger:
    return StructuredLogger(logging.getLogger(name), {})


def configure_logging(
    level: str = "INFO", redact: Iterable[str] = ("email", "phone", "card")
) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(Redactor(redact)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.Formatter.converter = time.gmtime
