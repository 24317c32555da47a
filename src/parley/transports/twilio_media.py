"""The Twilio Media Streams transport: ``/v1/telephony/twilio/media``.

Twilio opens this WebSocket for a call answered by ``POST /v1/telephony/twilio/voice``
(``server/telephony_api.py``) and speaks its own JSON protocol (``twilio_wire.py``):
``connected``, ``start`` (with the stream token Parley put in the TwiML), then 20 ms
μ-law 8 kHz ``media`` frames, ``mark`` echoes, ``dtmf`` and ``stop``. The stream is
trusted only once ``start`` carries a valid token for a session made for this very
call (its CallSid).

Outbound, the session's 16 kHz audio leaves as 20 ms μ-law ``media`` frames, paced in
real time by the session's playout; after each sentence a ``mark`` follows, which
Twilio echoes once the caller has heard everything before it — so what the caller
heard of an interrupted reply is known from the marks, not guessed. A barge-in sends
``clear``: Twilio drops the audio it holds at once. A phone line has no event channel:
the session's events go to its timeline and metrics only.

How a stream ends: ``stop`` or a closed socket is the caller hanging up (the session
ends; a turn in progress is ``cancelled``); a bad ``start`` (no or a forged token, an
unknown session, another call's token, the wrong media format) is closed with 4401 /
4403 / 4404 / 1003 before any session opens; a malformed message mid-call is logged and
skipped (Twilio cannot be told), and many of them close the stream (1008), as does
audio sent faster than real time. The agent ending the call or transferring it to a
person goes through Twilio's REST API (``twilio_call_control.py``); a hang-up that API
cannot do closes the stream from here (``session_ended``). A phone call never resumes:
however the stream ends (but a takeover or a server shutdown), its session ends and its
tokens with it.

The stream's duration, from its ``start`` to its end, is the call's telephony usage
(provider ``twilio``, model ``inbound``: the leg Twilio connected to Parley), priced by
the table's ``telephony_per_minute`` like any other call (docs/costs.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from typing import Literal

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from parley.telemetry import get_logger
from parley.telemetry.usage import Usage
from parley.transports.admission import Admission, ServerFull
from parley.transports.control import apply_control
from parley.transports.session_limits import refusal
from parley.transports.twilio_call_control import PhoneCallControl
from parley.transports.twilio_wire import (
    Connected,
    Dtmf,
    InboundAudio,
    Mark,
    Media,
    OutboundAudio,
    Start,
    Stop,
    WireError,
    clear_message,
    mark_message,
    media_message,
    parse_message,
)
from parley.transports.voice_runtime import LiveSession, open_voice_session
from parley.voice.events import Event, event
from parley.voice.session import AudioTooFast, SessionOverloaded, VoiceSession

log = get_logger(__name__)

router = APIRouter()

TELEPHONY_PROVIDER = "twilio"
CALL_LEG = "inbound"
START_TIMEOUT_SECS = 10.0
"""Twilio sends ``connected`` and ``start`` as soon as the call is connected."""
MAX_BAD_MESSAGES = 50
"""Malformed messages tolerated in one call before the stream is closed."""
MAX_MESSAGE_BYTES = 65_536
CLOSE_BAD_START = 1003
CLOSE_POLICY = 1008
CLOSE_CODES = {
    "client_ended": 1000,
    "taken_over": 1000,
    "disconnected": 1000,
    "session_ended": 1000,
}
"""How the stream is closed, by why the call ended (else 1008: a policy close)."""
RESUMABLE = ("taken_over", "server_shutdown")
"""Ends of a stream that leave its session open (another connection has it, or a server
going down); any other end ends the session."""

Item = tuple[Literal["audio"], bytes] | tuple[Literal["mark"], str] | tuple[Literal["clear"], None]


class TwilioOutbound:
    """The call's :class:`~parley.voice.events.SessionSink`: audio and sentence marks in
    the order they must reach Twilio, drained by the sender task. It also keeps which
    marks Twilio echoed (and when): the playout reads what the caller heard from them."""

    def __init__(self, max_items: int) -> None:
        self._items: deque[Item] = deque()
        self._ready = asyncio.Event()
        self._max = max_items
        self.overflowed = False
        self._marks = 0
        self._pending: set[str] = set()
        self._cleared: set[str] = set()
        self._echoed: dict[str, float] = {}
        self._waiters: dict[str, asyncio.Future[None]] = {}

    def _put(self, item: Item) -> None:
        if len(self._items) >= self._max:
            self.overflowed = True
        else:
            self._items.append(item)
        self._ready.set()

    def send_event(self, ev: Event) -> None:
        """A phone line carries no events (the session's observer has seen it)."""

    def send_audio(self, pcm: bytes) -> None:
        self._put(("audio", pcm))

    def clear_audio(self) -> None:
        """Barge-in: drop what is queued here and tell Twilio to drop what it holds. The
        marks of dropped audio never count as heard (Twilio echoes them at once)."""
        self._items.clear()
        self._cleared |= self._pending
        self._pending.clear()
        self._put(("clear", None))

    def mark(self) -> str:
        """Queue a mark after the audio queued so far; its name."""
        self._marks += 1
        name = f"s{self._marks}"
        self._pending.add(name)
        self._put(("mark", name))
        return name

    def mark_echoed(self, name: str, at: float) -> None:
        waiter = self._waiters.pop(name, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if name in self._cleared:
            self._cleared.discard(name)
            return
        self._pending.discard(name)
        self._echoed[name] = at

    def played_at(self, name: str) -> float | None:
        """When Twilio said the audio before mark ``name`` had been played (None: not yet)."""
        return self._echoed.get(name)

    async def wait_heard(self, timeout: float) -> bool:
        """Until the caller has heard everything queued so far (a mark after it came back,
        or its audio was cleared); False when ``timeout`` passed first."""
        name = self.mark()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[name] = waiter
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            return False
        finally:
            self._waiters.pop(name, None)
        return True

    async def get(self) -> Item:
        while not self._items:
            if self.overflowed:
                raise OverflowError("the call's outbound audio is not draining")
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()


@router.websocket("/v1/telephony/twilio/media")
async def twilio_media(websocket: WebSocket) -> None:
    app = websocket.app
    await websocket.accept()
    start = await _await_start(websocket)
    if start is None:
        return
    session_id = await _authorize(websocket, start)
    if session_id is None:
        return
    streaming_since = asyncio.get_running_loop().time()
    outbound = TwilioOutbound(app.state.settings.server.max_outbound_queue)
    hung_up = asyncio.Event()
    agent_ended = asyncio.Event()  # the agent ended the call, and Twilio could not
    admission: Admission = app.state.admission
    try:
        with admission.opening(session_id):
            live = await open_voice_session(app, session_id, outbound, hung_up.set, "phone")
    except ServerFull:
        log.warning("call refused: server full")
        await _close(websocket, CLOSE_POLICY, "server full")
        return
    live.on_expired = lambda code, close_code: hung_up.set()
    settings = app.state.settings
    control = PhoneCallControl(live.session, outbound, start.call_sid, settings, agent_ended.set)
    control.install()
    log.info("phone call connected", call_sid=start.call_sid)
    sender = asyncio.create_task(_send_loop(websocket, outbound, start.stream_sid), name="tw-send")
    receiver: asyncio.Task[str] | None = None
    reason = "disconnected"
    try:
        await live.session.start()
        receiver = asyncio.create_task(_receive_loop(websocket, live, outbound), name="tw-receive")
        ended = asyncio.create_task(hung_up.wait(), name="tw-ended")
        by_agent = asyncio.create_task(agent_ended.wait(), name="tw-agent-ended")
        await asyncio.wait({sender, receiver, ended, by_agent}, return_when=asyncio.FIRST_COMPLETED)
        reason = "session_ended" if agent_ended.is_set() else _end_reason(live, receiver, sender)
        ended.cancel()
        by_agent.cancel()
    except Exception as exc:
        log.error("phone call failed", error=repr(exc), exc_info=exc)
        reason = "error"
    finally:
        admission.left(session_id, dropped=False)  # a phone call does not come back
        control.stop()
        if receiver is not None:
            receiver.cancel()
        secs = asyncio.get_running_loop().time() - streaming_since
        live.session.count_usage(Usage("telephony", TELEPHONY_PROVIDER, CALL_LEG, seconds=secs))
        await live.close(reason, ends_session=reason not in RESUMABLE)
        control.close()  # after the session's close, which lets a transfer record its answer
        sender.cancel()
        with contextlib.suppress(BaseException):
            await sender
        await _close(websocket, CLOSE_CODES.get(reason, CLOSE_POLICY), reason)
        log.info("phone call ended", reason=reason)


def _end_reason(live: LiveSession, receiver: asyncio.Task[str], sender: asyncio.Task[None]) -> str:
    if live.expired is not None:
        return live.expired[0]
    if receiver.done() and not receiver.cancelled():
        failure = receiver.exception()
        if failure is None:
            return receiver.result()
        if not isinstance(failure, WebSocketDisconnect):
            log.error("phone call receive failed", error=repr(failure), exc_info=failure)
            return "error"
        return "client_ended"  # Twilio closed the socket: the call is over
    if sender.done() and not sender.cancelled() and sender.exception() is not None:
        log.error("phone call send failed", error=repr(sender.exception()))
        return "error"
    return "taken_over"


async def _await_start(websocket: WebSocket) -> Start | None:
    """The stream's ``start`` (after ``connected``), or None once the socket is closed."""
    try:
        async with asyncio.timeout(START_TIMEOUT_SECS):
            while True:
                text = await websocket.receive_text()
                message = parse_message(text)
                if isinstance(message, Start):
                    return message
                if not isinstance(message, Connected):
                    raise WireError(
                        "invalid_message", f"expected start, got {type(message).__name__}"
                    )
    except WireError as exc:
        log.warning("twilio stream refused", code=exc.code, error=str(exc))
        await _close(websocket, CLOSE_BAD_START, exc.code)
    except TimeoutError:
        log.warning("twilio stream refused: no start")
        await _close(websocket, CLOSE_POLICY, "no start")
    except (WebSocketDisconnect, RuntimeError):
        pass
    return None


async def _authorize(websocket: WebSocket, start: Start) -> str | None:
    """The session the stream's token grants, if it was made for this call."""
    app = websocket.app
    token = start.custom_parameters.get("token")
    try:
        granted = app.state.tokens.verify(token, None)
    except Exception as exc:  # TokenError
        status = int(getattr(exc, "status", 401))
        log.warning("twilio stream refused: token", status=status)
        await _close(websocket, 4000 + status, "unauthorized")
        return None
    record = await app.state.store.get_session(granted.session_id)
    if record is None:
        await _close(websocket, 4404, "unknown session")
        return None
    if record.call_sid != start.call_sid:
        log.warning("twilio stream refused: the token is another call's", call_sid=start.call_sid)
        await _close(websocket, 4403, "not this call's stream")
        return None
    if refusal(record, app.state.settings.server) is not None:
        await _close(websocket, 4410, "session ended")
        return None
    return str(granted.session_id)


async def _send_loop(websocket: WebSocket, outbound: TwilioOutbound, stream_sid: str) -> None:
    """Audio to 20 ms μ-law frames, marks after the audio before them, clears at once."""
    audio = OutboundAudio()
    while True:
        kind, payload = await outbound.get()
        if kind == "audio":
            assert isinstance(payload, bytes)
            for frame in audio.frames(payload):
                await websocket.send_text(media_message(stream_sid, frame))
        elif kind == "mark":
            assert isinstance(payload, str)
            for frame in audio.flush():  # the sentence's last partial frame first
                await websocket.send_text(media_message(stream_sid, frame))
            await websocket.send_text(mark_message(stream_sid, payload))
        else:
            audio.reset()
            await websocket.send_text(clear_message(stream_sid))


async def _receive_loop(websocket: WebSocket, live: LiveSession, outbound: TwilioOutbound) -> str:
    """Feed the call to the session until Twilio stops the stream (``client_ended``) or
    sends too much that is malformed (``error``)."""
    session = live.session
    inbound = InboundAudio()
    loop = asyncio.get_running_loop()
    bad = 0
    while True:
        text = await websocket.receive_text()
        try:
            if len(text) > MAX_MESSAGE_BYTES:
                raise WireError("invalid_message", f"message of {len(text)} bytes")
            message = parse_message(text)
        except WireError as exc:
            bad += 1
            if bad == 1 or bad % 10 == 0:
                log.warning("twilio message skipped", code=exc.code, error=str(exc), count=bad)
            if bad >= MAX_BAD_MESSAGES:
                return "error"
            continue
        if isinstance(message, Media):
            try:
                session.push_audio(inbound.convert(message.payload))
            except AudioTooFast as exc:
                if exc.persistent:
                    return "audio_too_fast"
            except SessionOverloaded as exc:
                log.warning("phone audio dropped", error=str(exc))
        elif isinstance(message, Mark):
            outbound.mark_echoed(message.name, loop.time())
        elif isinstance(message, Dtmf):
            _on_dtmf(session, message.digit)
        elif isinstance(message, Stop):
            return "client_ended"


def _on_dtmf(session: VoiceSession, digit: str) -> None:
    """A key the caller pressed: a ``dtmf`` event (timeline, metrics); the handoff key
    (``telephony.dtmf_handoff_digit``) asks for a person."""
    session.note_activity()
    session.sink.send_event(event("dtmf", digit=digit))
    if session.recorder is not None:
        session.recorder.event("dtmf", None, {"digit": digit})
    if digit == session.settings.telephony.dtmf_handoff_digit:
        apply_control(session, _handoff_request(digit), 1_024)


def _handoff_request(digit: str) -> str:
    return json.dumps({"type": "handoff", "reason": f"the caller pressed {digit}"})


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):
        await websocket.close(code, reason[:120])
