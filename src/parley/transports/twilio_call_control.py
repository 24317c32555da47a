"""What a phone call does when the agent ends it or hands it to a person (Twilio).

The voice session knows nothing of phones; it offers two hooks
(``voice/handoff.py``), which this module fills for one call:

- ``on_end_call`` — the agent said its goodbye (envelope ``end_call``). Once the caller
  has *heard* it (a mark after the audio came back: hanging up on sent-but-unplayed
  audio would cut the goodbye off), the call is hung up through Twilio's REST API.
  Twilio then stops the media stream, which ends the session. If the REST API cannot be
  used (no credentials, an error), Parley closes the media stream itself: the TwiML that
  answered the call has nothing after ``<Connect><Stream>``, so Twilio ends the call.
- ``handoff_transfer`` — someone asked for a person and ``telephony.twilio.
  transfer_number`` is set: the agent says ``handoff.transfer_line``; while Twilio plays
  it out, the handoff webhook gets the transcript; once the line was heard and the
  webhook answered (the person has the transcript before their phone rings), the call
  is transferred with ``<Dial>`` through the REST API and ``handoff.accepted`` (by
  ``phone_transfer``) is recorded. If the transfer fails, the failure is logged and the
  call stays with the agent (the handoff stays *requested*: a supervisor can still take
  it).

Every wait is bounded; nothing here raises into the session.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from parley.config import Settings
from parley.telemetry import get_logger
from parley.transports.handoff_webhook import handoff_payload, post_handoff
from parley.transports.twilio_calls import TwilioCallError, TwilioCalls, last_digits
from parley.voice.session import VoiceSession

log = get_logger(__name__)

HEARD_TIMEOUT_SECS = 15.0
"""The longest wait for the caller to hear the last words before hanging up or
transferring (a line is a few seconds; past this the marks are not coming back)."""
ANSWER_AFTER_STOP_SECS = 3.0
"""How long a transfer whose stream Twilio stopped still waits for Twilio's answer to it
(to record it): within the session's own close timeout."""
STREAM_END_GRACE_SECS = 10.0
"""After a hang-up Twilio accepted, how long Twilio has to stop the media stream before
Parley closes it itself."""


class HeardOutbound(Protocol):
    """The call's outbound audio (``TwilioOutbound``): waits until the caller heard it."""

    async def wait_heard(self, timeout: float) -> bool: ...


class PhoneCallControl:
    """The end-of-call and transfer hooks of one call's session. ``end_stream`` closes
    the media stream from Parley's side (the call ends with it)."""

    def __init__(
        self,
        session: VoiceSession,
        outbound: HeardOutbound,
        call_sid: str,
        settings: Settings,
        end_stream: Callable[[], None],
    ) -> None:
        self._session = session
        self._outbound = outbound
        self._call_sid = call_sid
        self._settings = settings
        self._end_stream = end_stream
        self._calls = TwilioCalls.from_settings(settings.telephony.twilio)
        self._tasks: set[asyncio.Task[None]] = set()

    def install(self) -> None:
        """Set the session's hooks (before it starts)."""
        self._session.on_end_call = self._on_end_call
        number = self._settings.telephony.twilio.transfer_number
        if number is None:
            return
        if self._calls is None:
            # Loud, once per call: a transfer number that can never work is a setup
            # mistake. The handoff then stays a request a supervisor can take.
            log.error(
                "phone transfer impossible: telephony.twilio.account_sid and auth_token "
                "must be set; handoffs on this call wait for a supervisor",
                call_sid=self._call_sid,
            )
            return
        self._session.handoff_transfer = self._transfer

    def stop(self) -> None:
        """The stream is over: a hang-up still waiting has nothing left to hang up."""
        for task in self._tasks:
            task.cancel()

    def close(self) -> None:
        """After the session's close (a transfer in flight may still need the client)."""
        self.stop()
        if self._calls is not None:
            self._calls.close()

    # ---- the agent ends the call -----------------------------------------------------------

    def _on_end_call(self) -> None:
        task = asyncio.create_task(self._hang_up(), name="tw-hang-up")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _hang_up(self) -> None:
        try:
            heard = await self._outbound.wait_heard(HEARD_TIMEOUT_SECS)
            if not heard:
                log.warning("goodbye not confirmed heard; hanging up", call_sid=self._call_sid)
            if self._calls is None:
                log.warning(
                    "hanging up by closing the media stream: telephony.twilio.account_sid "
                    "and auth_token are not set",
                    call_sid=self._call_sid,
                )
                self._end_stream()
                return
            try:
                await self._calls.hang_up(self._call_sid)
            except TwilioCallError as exc:
                log.error(
                    "twilio hang-up failed; closing the media stream instead",
                    call_sid=self._call_sid,
                    error=str(exc),
                    status=exc.status,
                    code=exc.code,
                )
                self._end_stream()
                return
            log.info("call hung up by the agent", call_sid=self._call_sid)
            # Twilio stops the stream when the call ends; should it not, do it here.
            await asyncio.sleep(STREAM_END_GRACE_SECS)
            log.warning("twilio kept the stream after the hang-up; closing it")
            self._end_stream()
        except Exception as exc:  # never a crash of the session: end the call all the same
            log.error("hang-up failed", error=repr(exc), exc_info=exc)
            self._end_stream()

    # ---- a person is asked for -------------------------------------------------------------

    async def _transfer(self, by: str, reason: str) -> None:
        """The session's ``handoff_transfer``: say the line, post the webhook, dial."""
        try:
            transferred = await self._transfer_steps(by, reason)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the call stays with the agent
            log.error("phone transfer failed", error=repr(exc), exc_info=exc)
            transferred = False
        if not transferred and self._session.handoff_state == "requested":
            # The caller heard "connecting you" and must not be left in silence: say so,
            # and let them ask again (the key or their words start a new attempt).
            await self._session.say(self._settings.handoff.transfer_failed_line)
            self._session.withdraw_handoff("phone_transfer", "transfer failed")

    async def _transfer_steps(self, by: str, reason: str) -> bool:
        """True once Twilio took the call to the number (or the call ended meanwhile)."""
        number = self._settings.telephony.twilio.transfer_number
        calls = self._calls
        assert number is not None and calls is not None  # install() set us only then
        session = self._session
        await session.say(self._settings.handoff.transfer_line)
        payload = handoff_payload(
            session_id=session.session_id,
            call_sid=self._call_sid,
            reason=reason,
            by=by,
            transfer_to=number,
            messages=session.history.messages,
        )
        # The webhook goes out while the line plays out at Twilio; both finish before
        # the dial, so the person has the transcript before they answer.
        heard, _ = await asyncio.gather(
            self._outbound.wait_heard(HEARD_TIMEOUT_SECS),
            post_handoff(self._settings.handoff, payload),
        )
        if not heard:
            log.warning("transfer line not confirmed heard; transferring", call_sid=self._call_sid)
        request = asyncio.ensure_future(calls.transfer(self._call_sid, number))
        cancelled = False
        try:
            await asyncio.wait({request})  # never cancels the request, nor raises its error
        except asyncio.CancelledError:
            # Twilio stops the media stream as it redirects the call, which may be
            # before its answer reaches us: the session is closing. Wait a moment for
            # the answer, so that the transfer is still recorded.
            cancelled = True
            await asyncio.wait({request}, timeout=ANSWER_AFTER_STOP_SECS)
        transferred = True
        if not request.done():
            request.cancel()
            log.warning("transfer sent; the call ended before twilio answered")
        elif isinstance(failure := request.exception(), TwilioCallError):
            transferred = False
            log.error(
                "phone transfer failed: the call stays with the agent",
                call_sid=self._call_sid,
                to=last_digits(number),
                error=str(failure),
                status=failure.status,
                code=failure.code,
            )
        elif failure is not None:
            raise failure
        else:
            # The person has the call now (Twilio stops our stream): the agent must not
            # answer what it still hears before that.
            session.handoff_state = "human"
            reason = f"transferred to {last_digits(number)}"
            session._handoff_event("handoff.accepted", by="phone_transfer", reason=reason)
            log.info("call transferred", call_sid=self._call_sid, to=last_digits(number), by=by)
        if cancelled:
            raise asyncio.CancelledError
        return transferred
