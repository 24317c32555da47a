"""The TwiML Parley answers Twilio's incoming-call webhook with. No I/O here.

Two answers: ``<Connect><Stream>`` (the call's audio to Parley's media WebSocket, with
the stream token as a ``<Parameter>``: Twilio hands it back in the stream's ``start``),
and, when nobody can take the call (a full fleet, the worker registry unreachable), a
short spoken apology followed by ``<Hangup/>``.

Why an apology and not ``<Reject>`` or an HTTP 503: Twilio plays its own "an application
error has occurred" for any non-2xx answer (or calls the number's fallback URL), which
tells the caller nothing; ``<Reject reason="busy">`` gives a busy tone without answering,
which callers take for a wrong number or a line fault. A sentence saying to call back is
what a person would do; it answers the call (a few seconds are billed).
"""

from __future__ import annotations

from urllib.parse import urlsplit
from xml.sax.saxutils import escape, quoteattr

MEDIA_PATH = "/v1/telephony/twilio/media"
"""The media-stream WebSocket's path (``transports/twilio_media.py``)."""

SORRY_LINE = "Sorry, we cannot take your call right now. Please call again in a few minutes."
"""What a caller hears when no worker can take the call."""

_HEADER = '<?xml version="1.0" encoding="UTF-8"?>'


def media_stream_url(base_url: str) -> str:
    """The media WebSocket of the server at ``base_url`` (``https://host/prefix``): wss
    for https, ws otherwise (Twilio itself accepts only wss; ws is for tests and local
    tunnels that terminate TLS in front)."""
    parts = urlsplit(base_url)
    scheme = "wss" if parts.scheme in ("https", "wss") else "ws"
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}{MEDIA_PATH}"


def connect_stream(url: str, token: str) -> str:
    """``<Connect><Stream url=…>`` with the stream token as its one ``<Parameter>``.

    ``<Stream>`` takes no query string (Twilio error 31920): the token travels as a
    custom parameter and comes back in ``start.customParameters``. Nothing follows
    ``<Connect>``: when the stream ends, Twilio ends the call."""
    return (
        f"{_HEADER}<Response><Connect><Stream url={quoteattr(url)}>"
        f'<Parameter name="token" value={quoteattr(token)}/>'
        "</Stream></Connect></Response>"
    )


def say_sorry_and_hang_up(line: str = SORRY_LINE) -> str:
    """``<Say>`` the apology, then ``<Hangup/>``."""
    return f"{_HEADER}<Response><Say>{escape(line)}</Say><Hangup/></Response>"
