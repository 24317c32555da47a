"""The handoff webhook: when a conversation goes to a person, Parley POSTs what that
person needs to know (the transcript and a short summary) to ``handoff.webhook_url``,
before the person answers.

Signing (``handoff.webhook_secret``), as in Stripe's and Slack's webhooks:

- ``X-Parley-Timestamp``: Unix seconds, when the request was signed;
- ``X-Parley-Signature``: ``sha256=<hex HMAC-SHA256>`` keyed by the secret, over the
  bytes ``f"{timestamp}.".encode() + body`` — the timestamp, a dot, then the exact
  body bytes as sent (verify before parsing the JSON: re-serialising changes bytes).

The timestamp is inside the signed bytes so that a captured request cannot be replayed
later: :func:`verify_signature` refuses one older than ``max_age_secs`` (5 minutes).
Without a secret the request goes unsigned (and a warning is logged): receivers should
refuse it.

The body (JSON)::

    {"session_id": "…", "call_sid": "CA…" | null, "reason": "the caller pressed 0",
     "by": "caller", "transfer_to": "+1555…" | null,
     "transcript": [{"role": "caller" | "agent" | "human", "text": "…"}, …],
     "summary": "…"}

A failed post (refused, unreachable, too slow) is logged and returns False: the handoff
itself goes on.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import httpx

from parley.config import HandoffSettings
from parley.engines import ChatMessage
from parley.telemetry import get_logger

log = get_logger(__name__)

SIGNATURE_HEADER = "X-Parley-Signature"
TIMESTAMP_HEADER = "X-Parley-Timestamp"
MAX_AGE_SECS = 300.0
"""How old a signed request :func:`verify_signature` still accepts (replays past it are
refused); also how far in the future, for a receiver whose clock is behind."""
LAST_WORDS_CHARS = 160

# What a person who took over said is kept as the agent's side, marked as theirs
# (voice/history.py ``add_human``): "[a human colleague said:] …".
_HUMAN = re.compile(r"^\[(?P<label>[^\]]{1,60}) said:\]\s*")


def transcript(messages: Iterable[ChatMessage]) -> list[dict[str, str]]:
    """The conversation as the webhook shows it: who (``caller``, ``agent`` or ``human``,
    a person who took over) said what, oldest first."""
    lines: list[dict[str, str]] = []
    for message in messages:
        if message.role == "user":
            lines.append({"role": "caller", "text": message.content})
        elif message.role == "assistant":
            human = _HUMAN.match(message.content)
            if human is not None:
                lines.append({"role": "human", "text": message.content[human.end() :]})
            else:
                lines.append({"role": "agent", "text": message.content})
    return lines


def summary(reason: str, lines: list[dict[str, str]]) -> str:
    """A few words for the person taking over. Built from the facts, not by an LLM: it
    must be there at once (the caller is on hold), cost nothing, and never invent what
    the caller did not say."""
    said = [line["text"] for line in lines if line["role"] == "caller"]
    turns = f"{len(said)} caller turn{'' if len(said) == 1 else 's'}"
    if not said:
        return f"Handoff: {reason}. The caller has not spoken yet."
    last = said[-1].strip()
    if len(last) > LAST_WORDS_CHARS:
        last = last[: LAST_WORDS_CHARS - 1].rstrip() + "…"
    return f"Handoff: {reason}. {turns}; the caller's last words: {last!r}."


def handoff_payload(
    *,
    session_id: str,
    reason: str,
    by: str,
    messages: Iterable[ChatMessage],
    call_sid: str | None = None,
    transfer_to: str | None = None,
) -> dict[str, Any]:
    """The webhook's JSON body (see the module docstring)."""
    lines = transcript(messages)
    return {
        "session_id": session_id,
        "call_sid": call_sid,
        "reason": reason,
        "by": by,
        "transfer_to": transfer_to,
        "transcript": lines,
        "summary": summary(reason, lines),
    }


def _key(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def sign(secret: str | bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Parley-Signature`` value for ``body`` sent at ``timestamp``."""
    signed = timestamp.encode() + b"." + body
    return "sha256=" + hmac.new(_key(secret), signed, hashlib.sha256).hexdigest()


def verify_signature(
    secret: str | bytes,
    timestamp: str,
    body: bytes | str,
    header: str,
    *,
    max_age_secs: float | None = MAX_AGE_SECS,
    now: float | None = None,
) -> bool:
    """True when ``header`` (``X-Parley-Signature``) is the secret's signature of the
    exact ``body`` at ``timestamp`` (``X-Parley-Timestamp``), and the timestamp is within
    ``max_age_secs`` of ``now`` (None: any age). Compared in constant time."""
    if not timestamp.isascii() or not timestamp.isdigit():
        return False
    if max_age_secs is not None:
        current = time.time() if now is None else now
        if abs(current - int(timestamp)) > max_age_secs:
            return False
    raw = body.encode() if isinstance(body, str) else body
    return hmac.compare_digest(sign(secret, timestamp, raw), header.strip())


async def post_handoff(settings: HandoffSettings, payload: dict[str, Any]) -> bool:
    """POST ``payload`` to ``handoff.webhook_url``, signed; True when it answered 2xx.
    Never raises: a handoff does not wait on, or fail with, the receiver."""
    url = settings.webhook_url
    if not url:
        return False
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    timestamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: timestamp}
    if settings.webhook_secret is not None:
        headers[SIGNATURE_HEADER] = sign(
            settings.webhook_secret.get_secret_value(), timestamp, body
        )
    else:
        log.warning("handoff webhook sent unsigned: handoff.webhook_secret is not set")
    # The host only: a webhook URL may carry a token in its path or query.
    host = urlsplit(url).hostname
    try:
        async with httpx.AsyncClient(timeout=settings.webhook_timeout_secs) as http:
            response = await http.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        log.error("handoff webhook failed", host=host, error=type(exc).__name__)
        return False
    if not response.is_success:
        log.error("handoff webhook refused", host=host, status=response.status_code)
        return False
    log.info("handoff webhook sent", host=host, status=response.status_code)
    return True
