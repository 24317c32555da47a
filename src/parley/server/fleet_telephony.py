"""Twilio's incoming call at the control plane of a fleet (``parley control``).

The control plane has no media endpoint: it answers the webhook (whose signature
``telephony_api.signed_form`` has checked, exactly as on a single server) by sending
the call to a worker of the registry, the freest one, as ``POST /v1/sessions`` sends a
session:

1. the worker is chosen (:meth:`WorkerRegistry.choose`);
2. the call becomes a session record (the caller's number as ``user_id``, the CallSid
   kept on it) and its dispatch is recorded in the registry for the session's lifetime;
3. the answer is ``<Connect><Stream>`` to **that worker's** media WebSocket (wss when its
   public URL is https), with a stream token that names the worker (claim ``wkr``).

The worker trusts the stream only with that token (``twilio_media._authorize``): valid,
short-lived (``telephony.twilio.stream_token_ttl_secs``), for a session made for this
very CallSid, and dispatched to it — any other worker refuses it (close 4403), as it
refuses another worker's WebSocket token (403).

Nobody can take the call — every worker full or draining, or Redis unreachable — and
the caller hears a short apology, then the call is hung up (``twilio_twiml``): 200 with
TwiML, never a 503, which Twilio would turn into its own "application error" message.
No session record is left behind for such a call.
"""

from __future__ import annotations

import time

from fastapi import Request, Response

from parley.config import TwilioSettings
from parley.store import Store
from parley.telemetry import get_logger
from parley.transports.session_limits import session_deadline
from parley.transports.twilio_twiml import connect_stream, media_stream_url, say_sorry_and_hang_up
from parley.transports.worker_registry import RegistryUnavailable, WorkerInfo, WorkerRegistry

log = get_logger(__name__)


def twiml(text: str) -> Response:
    return Response(text, media_type="application/xml")


def sorry(call_sid: str, reason: str) -> Response:
    """The call cannot be taken: an apology and a hang-up (``reason`` is logged)."""
    log.warning("incoming call refused", call_sid=call_sid, reason=reason)
    return twiml(say_sorry_and_hang_up())


async def answer_in_fleet(
    request: Request, registry: WorkerRegistry, form: dict[str, str], call_sid: str
) -> Response:
    """Dispatch the signed incoming call to the freest worker; its TwiML answer."""
    try:
        chosen = await registry.choose()
    except RegistryUnavailable:
        return sorry(call_sid, "registry_unavailable")
    if chosen is None:  # no record when no worker could take the call
        return sorry(call_sid, "fleet_full")
    store: Store = request.app.state.store
    record = await store.create_session(
        user_id=form.get("From") or None, mode="voice", call_sid=call_sid
    )
    deadline = session_deadline(record, request.app.state.settings.server)
    lifetime = max(1, int(deadline - time.time()))
    try:
        await registry.assign(record.id, chosen.worker_id, lifetime)
    except RegistryUnavailable:
        await store.end_session(record.id)  # Redis went away between the two calls
        return sorry(call_sid, "registry_unavailable")
    return _stream_to(request, chosen, record.id, record.room_id, call_sid)


def _stream_to(
    request: Request, worker: WorkerInfo, session_id: str, room_id: str, call_sid: str
) -> Response:
    settings: TwilioSettings = request.app.state.settings.telephony.twilio
    token = request.app.state.tokens.mint(
        session_id,
        room_id,
        "user",
        ttl_secs=settings.stream_token_ttl_secs,
        worker=worker.worker_id,
    )
    log.info(
        "incoming call dispatched",
        session_id=session_id,
        call_sid=call_sid,
        worker_id=worker.worker_id,
    )
    return twiml(connect_stream(media_stream_url(worker.url), token.token))
