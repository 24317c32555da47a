"""How a remote provider failed, in a form a fallback chain can act on: a short ``kind``
for metrics and ``/ready`` (never the provider's own text), and a rate limit's
``Retry-After``."""

from __future__ import annotations

import email.utils
import time

import httpx

from parley.engines.base import EngineError


class ProviderError(EngineError):
    """A remote provider failed. ``kind``: ``timeout``, ``unreachable``, ``http_<status>``,
    ``rate_limited``, ``malformed`` or ``stream_cut``."""

    def __init__(self, message: str, kind: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after


def failure_kind(exc: BaseException) -> str:
    """The short name of any engine failure (what metrics and breakers record)."""
    if isinstance(exc, ProviderError):
        return exc.kind
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "engine_error"


def retry_after_secs(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def http_failure(what: str, response: httpx.Response) -> ProviderError:
    """The error of a non-2xx answer (its body stays in the message, for the log only)."""
    status = response.status_code
    try:
        body = response.text[:200]
    except httpx.ResponseNotRead:  # a stream whose body was not read
        body = ""
    if status == 429:
        return ProviderError(
            f"{what} rate-limited the request (HTTP 429): {body}",
            "rate_limited",
            retry_after_secs(response.headers.get("retry-after")),
        )
    return ProviderError(f"{what} answered HTTP {status}: {body}", f"http_{status}")


def transport_failure(what: str, exc: httpx.HTTPError) -> ProviderError:
    if isinstance(exc, httpx.TimeoutException):
        return ProviderError(f"{what} timed out ({type(exc).__name__})", "timeout")
    if isinstance(exc, httpx.ConnectError):
        return ProviderError(f"{what} is unreachable: {exc!r}", "unreachable")
    return ProviderError(f"{what} failed mid-request: {exc!r}", "stream_cut")
