"""Twilio's REST API for one live call: hang it up, or transfer it to a number.

Both are one ``POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json`` (the
``twilio`` package's ``calls(sid).update``): ``Status=completed`` ends the call;
``Twiml=<Response><Dial>number</Dial></Response>`` replaces what the call is doing (our
``<Connect><Stream>``: Twilio stops the media stream) with a dial to that number.

The ``twilio`` client is blocking (``requests``), so each request runs in a worker thread
with a timeout, never on the event loop. Every failure — Twilio's error answer, a
network error, a timeout — is a :class:`TwilioCallError` with a short, safe message:
the caller decides what the call does next; nothing here crashes a session. The auth
token is never logged (nor is the number dialled, only its last digits).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client
from twilio.twiml.voice_response import VoiceResponse

from parley.config import TwilioSettings
from parley.telemetry import get_logger

log = get_logger(__name__)

REQUEST_TIMEOUT_SECS = 10.0
"""Per request (connect and read). Twilio answers a call update in well under a second;
past this the call is better left as it is than held waiting."""

# The twilio client logs every request and response at INFO (URL and headers, never the
# Authorization header): noise in our JSON logs. Its own logger, warnings only.
_http_log = logging.getLogger("parley.transports.twilio_calls.http")
_http_log.setLevel(logging.WARNING)


class TwilioCallError(Exception):
    """A call update Twilio did not do. ``status``: the HTTP status Twilio answered
    (None: no answer — network error or timeout); ``code``: Twilio's error code
    (https://www.twilio.com/docs/api/errors), when it gave one."""

    def __init__(self, message: str, *, status: int | None = None, code: int | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


def dial_twiml(number: str) -> str:
    """``<Response><Dial>number</Dial></Response>``, escaped by the twilio package."""
    response = VoiceResponse()
    response.dial(number)
    return str(response)


def last_digits(number: str) -> str:
    """What a log line or a timeline may show of a phone number."""
    return "…" + number[-4:]


class TwilioCalls:
    """Updates of live calls of one Twilio account (``account_sid`` + ``auth_token``);
    ``api_base_url`` replaces ``https://api.twilio.com`` (a test's local fake)."""

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        api_base_url: str | None = None,
        timeout_secs: float = REQUEST_TIMEOUT_SECS,
    ) -> None:
        self._account_sid = account_sid
        self._auth_token = auth_token
        self._api_base_url = api_base_url
        self._timeout = timeout_secs
        self._http: TwilioHttpClient | None = None
        self._client: Client | None = None

    def _twilio(self) -> Client:
        """The twilio client, made on first use: most calls never need it."""
        if self._client is None:
            self._http = TwilioHttpClient(timeout=self._timeout, logger=_http_log)
            client = Client(self._account_sid, self._auth_token, http_client=self._http)
            if self._api_base_url:
                # twilio>=9 builds each URL as domain.base_url + "/2010-04-01/Accounts/…":
                # the API domain's base_url is the root to replace.
                client.api.base_url = self._api_base_url.rstrip("/")
            self._client = client
        return self._client

    def close(self) -> None:
        """Release the HTTP connections (the call is over)."""
        if self._http is not None and self._http.session is not None:
            self._http.session.close()

    @classmethod
    def from_settings(cls, settings: TwilioSettings) -> TwilioCalls | None:
        """The client for ``telephony.twilio``; None without ``account_sid`` and
        ``auth_token`` (the REST API cannot be used)."""
        if not settings.account_sid or settings.auth_token is None:
            return None
        return cls(
            settings.account_sid,
            settings.auth_token.get_secret_value(),
            api_base_url=settings.api_base_url,
        )

    async def hang_up(self, call_sid: str) -> None:
        """End the call (``Status=completed``)."""
        await self._update(call_sid, "hang up", lambda call: call.update(status="completed"))

    async def transfer(self, call_sid: str, number: str) -> None:
        """Dial ``number`` instead of the media stream: the caller hears it ring, then the
        person who answers."""
        twiml = dial_twiml(number)
        await self._update(call_sid, "transfer", lambda call: call.update(twiml=twiml))

    async def _update(self, call_sid: str, what: str, update: Callable[[Any], Any]) -> None:
        client = self._twilio()

        def blocking() -> None:
            update(client.calls(call_sid))

        try:
            # The requests timeout bounds the thread; this one bounds the wait for it
            # (connect + read, and a margin), so a wedged socket cannot hold the call.
            async with asyncio.timeout(self._timeout * 2 + 1):
                await asyncio.to_thread(blocking)
        except TwilioRestException as exc:
            # msg is Twilio's own text ("The requested resource … was not found"): safe.
            raise TwilioCallError(
                f"twilio refused to {what} the call: {exc.status} {exc.msg}",
                status=exc.status,
                code=exc.code,
            ) from exc
        except TimeoutError as exc:
            raise TwilioCallError(f"twilio did not answer the {what} in time") from exc
        except Exception as exc:  # requests' connection errors, a bad answer…
            raise TwilioCallError(f"could not reach twilio to {what} the call: {exc!r}") from exc
        log.info("twilio call updated", action=what, call_sid=call_sid)
