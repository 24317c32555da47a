"""Redaction of sensitive substrings (e-mail, phone and card numbers) before they are logged."""

from __future__ import annotations

import re
from collections.abc import Iterable

PATTERNS: dict[str, re.Pattern[str]] = {
    "email": re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"),
    # Card before phone: a 13-19 digit run would otherwise read as a phone number.
    "card": re.compile(r"\b(?:\d[ -]?){12,18}\d\b"),
    # No "." among the separators: dotted runs are IP addresses and versions, not phones.
    "phone": re.compile(r"(?<![\w.])\+?\(?\d[\d ()-]{5,}\d(?![\w.])"),
}


# Secrets are never logged, whatever the configuration: a session token in a WebSocket
# URL's query (uvicorn logs the path of every connection), a bearer token, a key.
_SECRETS = (
    (
        re.compile(
            r"(?i)\b((?:access_|refresh_|stream_)?token|api_?key|key|secret|password)=[^&\s\"']+"
        ),
        r"\1=[REDACTED:secret]",
    ),
    (re.compile(r"(?i)\bBearer\s+[\w.~+/=-]+"), "Bearer [REDACTED:secret]"),
    (re.compile(r"\beyJ[\w-]*\.[\w-]+\.[\w-]*"), "[REDACTED:jwt]"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), "[REDACTED:secret]"),
)


# The query string of a request path in an access line ("GET /v1/ws?token=… HTTP/1.1"):
# it is where clients put what they should not, so access lines never keep it.
_QUERY = re.compile(r"(\s/[^\s\"?]*)\?[^\s\"]+")


def scrub_query_strings(text: str) -> str:
    """``text`` with the query string of every request path replaced."""
    return _QUERY.sub(r"\1?[REDACTED:query]", text)


def redact_secrets(text: str) -> str:
    """``text`` with tokens, keys and passwords replaced: applied to every log line."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class Redactor:
    """Replaces every match of the configured patterns with ``[REDACTED:<kind>]``."""

    def __init__(self, kinds: Iterable[str] = ("email", "card", "phone")) -> None:
        order = [k for k in PATTERNS if k in set(kinds)]
        unknown = set(kinds) - set(PATTERNS)
        if unknown:
            raise ValueError(f"unknown redaction kinds: {sorted(unknown)}")
        self._patterns = [(k, PATTERNS[k]) for k in order]

    def __call__(self, text: str) -> str:
        for kind, pattern in self._patterns:
            text = pattern.sub(f"[REDACTED:{kind}]", text)
        return text
