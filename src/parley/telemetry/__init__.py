"""Structured logs and timing helpers, used by every layer and using none of them."""

from parley.telemetry.logs import bind_session, bind_turn, configure_logging, get_logger
from parley.telemetry.redact import Redactor

__all__ = ["Redactor", "bind_session", "bind_turn", "configure_logging", "get_logger"]
