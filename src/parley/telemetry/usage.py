"""What each call to a provider used: seconds of audio transcribed, tokens in and out,
characters synthesized, minutes of a phone call — measured where the call happens (the
engines, the phone transport) and told to whoever does the accounting for the work
that made the call.

The engines are shared by every session, so they cannot know whose call it is: like
the failover listener (``engines/fallback.py``), the listener lives in a context
variable set by the session (or the HTTP turn) for the tasks it starts. A call made
outside any of them (a breaker's probe, the start-up phrases) is told to nobody.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

from parley.telemetry.logs import get_logger

log = get_logger(__name__)

Stage = Literal["stt", "llm", "tts", "telephony"]
STAGES: tuple[Stage, ...] = ("stt", "llm", "tts", "telephony")

CHARS_PER_TOKEN = 4
"""The usual rule of thumb for English text, where the provider did not say (a stream
closed before its usage came): the count is then marked ``estimated``."""


@dataclass(frozen=True, slots=True)
class Usage:
    """One call to a provider and what it used."""

    stage: Stage
    provider: str
    """The provider as metrics and logs name it (``name``, else ``openai@host``,
    ``whisper``, ``llama``, ``piper``; ``twilio`` for a phone call)."""
    model: str
    embedded: bool = False
    """Served by a model in this process (free unless the price table says otherwise)."""
    seconds: float = 0.0
    """STT: seconds of audio sent; telephony: the call's duration."""
    input_tokens: int = 0
    output_tokens: int = 0
    characters: int = 0
    """TTS: characters of text sent to be spoken."""
    estimated: bool = False
    """Some count was estimated (``CHARS_PER_TOKEN``), not reported by the provider."""


UsageListener = Callable[[Usage], None]
usage_listener: ContextVar[UsageListener | None] = ContextVar("parley_usage_listener", default=None)


def report_usage(usage: Usage) -> None:
    """Tell the work in progress (if any) what a call used. Never raises: accounting
    must not break the call it accounts for."""
    listener = usage_listener.get()
    if listener is None:
        return
    try:
        listener(usage)
    except Exception as exc:
        log.error("usage listener failed", error=repr(exc), exc_info=exc)


@contextmanager
def listening_for_usage(listener: UsageListener) -> Iterator[None]:
    """Within the block (and the tasks it starts), calls are told to ``listener``."""
    token = usage_listener.set(listener)
    try:
        yield
    finally:
        usage_listener.reset(token)


def estimated_tokens(text: str) -> int:
    """Tokens of ``text`` by the rule of thumb (at least one for any text)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN) if text else 0
