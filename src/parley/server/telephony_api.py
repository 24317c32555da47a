"""Twilio's incoming-call webhook: ``POST /v1/telephony/twilio/voice``.

Every request must carry a valid ``X-Twilio-Signature`` (HMAC-SHA1 of the URL Twilio
called and its form fields, keyed by the account's auth token; checked with the
``twilio`` package's ``RequestValidator``): a missing or wrong one is 403 and nothing is
created. A call becomes a session (the caller's number as ``user_id``, the CallSid kept
on it) and the answer is TwiML connecting the call to the media stream
(``transports/twilio_media.py``), with a short-lived stream token as a custom
``<Parameter>``: Twilio hands it back in the stream's ``start`` message, and the stream
is trusted only with it.

On the control plane of a fleet (``parley control``, which has no media endpoint) the
same signed webhook is answered by ``fleet_telephony``: the call is dispatched to the
freest worker of the registry and the TwiML points at that worker's media WebSocket. On
a worker, the stream token names the worker (claim ``wkr``): another one refuses it.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from fastapi import APIRouter, HTTPException, Request, Response
from twilio.request_validator import RequestValidator

from parley.config import TwilioSettings
from parley.server.fleet_telephony import answer_in_fleet, twiml
from parley.store import Store
from parley.telemetry import get_logger
from parley.transports import twilio_twiml
from parley.transports.admission import Admission
from parley.transports.twilio_twiml import connect_stream
from parley.transports.worker_registry import WorkerRegistry

log = get_logger(__name__)

router = APIRouter(prefix="/v1/telephony/twilio", tags=["telephony"])

MAX_FORM_BYTES = 16_384
"""Twilio's webhook forms are a few hundred bytes."""


def signed_url(request: Request, settings: TwilioSettings) -> str:
    """The URL Twilio signed: ``telephony.twilio.public_url`` (behind a proxy or tunnel)
    with the request's path and query, else the request's own URL."""
    if settings.public_url:
        query = f"?{request.url.query}" if request.url.query else ""
        return settings.public_url.rstrip("/") + request.url.path + query
    return str(request.url)


def media_stream_url(request: Request, settings: TwilioSettings) -> str:
    """Where Twilio opens the media WebSocket (wss when the public URL is https)."""
    return twilio_twiml.media_stream_url(settings.public_url or str(request.base_url))


async def signed_form(request: Request) -> dict[str, str]:
    """The webhook's form fields, once its signature is checked (403 otherwise)."""
    settings: TwilioSettings = request.app.state.settings.telephony.twilio
    if settings.auth_token is None:
        log.warning("twilio webhook refused: telephony.twilio.auth_token is not set")
        raise HTTPException(403, "telephony is not configured on this server")
    body = await _bounded_body(request)
    try:
        form = dict(parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=False))
    except UnicodeDecodeError as exc:
        raise HTTPException(400, "the webhook form is not UTF-8") from exc
    signature = request.headers.get("x-twilio-signature", "")
    validator = RequestValidator(settings.auth_token.get_secret_value())
    if not signature or not validator.validate(signed_url(request, settings), form, signature):
        log.warning("twilio webhook refused: bad signature", signed=bool(signature))
        raise HTTPException(403, "invalid or missing X-Twilio-Signature")
    return form


async def _bounded_body(request: Request) -> bytes:
    """The body, refused (413) past ``MAX_FORM_BYTES`` without reading the rest: nobody is
    authenticated yet."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_FORM_BYTES:
        raise HTTPException(413, "the webhook form is too large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise HTTPException(413, "the webhook form is too large")
    return bytes(body)


@router.post("/voice", responses={403: {"description": "missing or invalid signature"}})
async def incoming_call(request: Request) -> Response:
    """Answer a call: a session for it, and TwiML that streams its audio to Parley."""
    form = await signed_form(request)
    call_sid = form.get("CallSid", "")
    if not call_sid.startswith("CA") or len(call_sid) > 64:
        raise HTTPException(400, "the webhook has no valid CallSid")
    registry: WorkerRegistry | None = request.app.state.registry
    if registry is not None:  # a control plane: the call goes to a worker
        return await answer_in_fleet(request, registry, form, call_sid)
    admission: Admission = request.app.state.admission
    admission.check_new_session()  # a full server says so (503) before Twilio connects
    store: Store = request.app.state.store
    caller = form.get("From") or None
    record = await store.create_session(user_id=caller, mode="voice", call_sid=call_sid)
    settings: TwilioSettings = request.app.state.settings.telephony.twilio
    issuer = request.app.state.tokens
    # A worker answering its own webhook binds the stream to itself, as the control
    # plane binds it to the worker it chose (``worker_id`` is None on ``parley serve``).
    token = issuer.mint(
        record.id,
        record.room_id,
        "user",
        ttl_secs=settings.stream_token_ttl_secs,
        worker=issuer.worker_id,
    )
    log.info("incoming call answered", session_id=record.id, call_sid=call_sid)
    return twiml(connect_stream(media_stream_url(request, settings), token.token))
