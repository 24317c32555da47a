"""A protocol-exact fake of Twilio for end-to-end tests of the Twilio transport.

:func:`place_call` is the incoming-call webhook (form-encoded, signed with
``X-Twilio-Signature`` as Twilio signs it) and reads the ``<Connect><Stream>`` TwiML of
the answer. :class:`FakeTwilioCall` is the Media Stream Twilio then opens: ``connected``,
``start``, then μ-law 8 kHz ``media`` every 20 ms in real time (silence when the caller
says nothing, as a phone line does). What Parley sends back is played on a play clock
the way Twilio plays it, so ``mark`` echoes come back when the audio before them has
played, and a ``clear`` drops unplayed audio and returns every pending mark at once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import secrets
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import numpy as np
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from parley.audio.pcm import FRAME_SAMPLES, dbfs, resample
from parley.client import SPEECH_SAMPLE_LEVEL
from parley.transports.twilio_wire import (
    FRAME_BYTES,
    MULAW_SILENCE,
    TWILIO_CHANNELS,
    TWILIO_ENCODING,
    TWILIO_RATE,
    InboundAudio,
    mulaw_encode,
)

VOICE_PATH = "/v1/telephony/twilio/voice"
DEFAULT_ACCOUNT_SID = "AC" + "5ca1ab1e" * 4
FRAME_SECS = FRAME_BYTES / TWILIO_RATE  # 0.02
SILENT_FRAME = bytes([MULAW_SILENCE]) * FRAME_BYTES
Json = dict[str, Any]


def new_sid(prefix: str) -> str:
    """A Twilio SID: two letters and 32 hex digits (CA… a call, MZ… a stream)."""
    return prefix + secrets.token_hex(16)


# ---- the incoming-call webhook ----------------------------------------------------------------


@dataclass(frozen=True)
class TwimlStream:
    """The ``<Connect><Stream>`` of Parley's TwiML answer, and the call it answers."""

    url: str
    parameters: dict[str, str]
    call_sid: str
    account_sid: str = DEFAULT_ACCOUNT_SID


class WebhookRefused(Exception):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"voice webhook answered {response.status_code}: {response.text[:200]}")
        self.response = response


def incoming_call_params(
    *,
    call_sid: str | None = None,
    account_sid: str = DEFAULT_ACCOUNT_SID,
    from_number: str = "+15551230000",
    to_number: str = "+15559870000",
) -> dict[str, str]:
    """The form fields Twilio POSTs when a call comes in."""
    return {
        "AccountSid": account_sid,
        "ApiVersion": "2010-04-01",
        "CallSid": call_sid or new_sid("CA"),
        "CallStatus": "ringing",
        "Called": to_number,
        "Caller": from_number,
        "Direction": "inbound",
        "From": from_number,
        "To": to_number,
    }


def sign(auth_token: str, url: str, params: dict[str, str]) -> str:
    return str(RequestValidator(auth_token).compute_signature(url, params))


async def send_voice_webhook(
    base_http: str, params: dict[str, str], *, signature: str | None
) -> httpx.Response:
    """POST the webhook as it is (``signature=None``: no header), for refusal tests."""
    headers = {} if signature is None else {"X-Twilio-Signature": signature}
    async with httpx.AsyncClient(timeout=10) as http:
        # httpx form-encodes ``data`` as application/x-www-form-urlencoded, as Twilio does.
        return await http.post(base_http + VOICE_PATH, data=params, headers=headers)


def parse_twiml(text: str, *, call_sid: str, account_sid: str) -> TwimlStream:
    root = ET.fromstring(text)
    stream = root.find("./Connect/Stream")
    if root.tag != "Response" or stream is None or not stream.get("url"):
        raise ValueError(f"no <Response><Connect><Stream url=…> in TwiML: {text[:200]}")
    parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    return TwimlStream(str(stream.get("url")), parameters, call_sid, account_sid)


async def place_call(
    base_http: str,
    auth_token: str,
    *,
    from_number: str = "+15551230000",
    to_number: str = "+15559870000",
    call_sid: str | None = None,
    public_url: str | None = None,
    account_sid: str = DEFAULT_ACCOUNT_SID,
) -> TwimlStream:
    """Ring Parley: the signed webhook, and the stream its TwiML answer asks for.

    Twilio signs the URL it requested, which behind a proxy is the public one
    (``public_url``), not the address the request finally reaches."""
    params = incoming_call_params(
        call_sid=call_sid, account_sid=account_sid, from_number=from_number, to_number=to_number
    )
    signature = sign(auth_token, (public_url or base_http) + VOICE_PATH, params)
    response = await send_voice_webhook(base_http, params, signature=signature)
    if response.status_code != 200:
        raise WebhookRefused(response)
    if "xml" not in response.headers.get("content-type", ""):
        raise WebhookRefused(response)
    return parse_twiml(response.text, call_sid=params["CallSid"], account_sid=account_sid)


# ---- the media stream -------------------------------------------------------------------------


def local_stream_url(url: str, ws_base: str | None) -> str:
    """The TwiML's ``wss://public-host/path?query`` → ``ws_base`` + path and query."""
    if ws_base is None:
        return url
    twiml, base = urlsplit(url), urlsplit(ws_base)
    return urlunsplit(
        (base.scheme, base.netloc, base.path.rstrip("/") + twiml.path, twiml.query, "")
    )


@dataclass
class ReceivedMedia:
    at: float  # loop time it arrived
    mulaw: bytes
    pcm: bytes  # PCM16 16 kHz (the resampler's delay shortens the first one)
    plays_at: float  # loop time the play clock starts it
    cleared: bool = False  # dropped by a clear before it started playing

    @property
    def duration(self) -> float:
        return len(self.mulaw) / TWILIO_RATE

    def level_dbfs(self) -> float:
        return dbfs(np.frombuffer(self.pcm, dtype="<i2"))


@dataclass
class _Utterance:
    frames: list[bytes]
    first_speech_frame: int
    last_speech_frame: int
    started: asyncio.Future[float]
    sent: asyncio.Future[float]


def _mulaw_frames(pcm16k: np.ndarray) -> tuple[list[bytes], int, int]:
    """16 kHz int16 speech → 20 ms μ-law frames, and the frames of its first and last loud
    samples (the 20 ms grid is the same at both rates)."""
    n = max(1, -(-pcm16k.size // FRAME_SAMPLES))
    padded = np.zeros(n * FRAME_SAMPLES, dtype=np.int16)
    padded[: pcm16k.size] = pcm16k
    mulaw = mulaw_encode(resample(padded, 16_000, TWILIO_RATE))
    mulaw = mulaw[: n * FRAME_BYTES].ljust(n * FRAME_BYTES, bytes([MULAW_SILENCE]))
    frames = [mulaw[i * FRAME_BYTES : (i + 1) * FRAME_BYTES] for i in range(n)]
    loud = np.flatnonzero(np.abs(pcm16k.astype(np.int32)) > SPEECH_SAMPLE_LEVEL)
    first = int(loud[0]) // FRAME_SAMPLES if loud.size else 0
    last = int(loud[-1]) // FRAME_SAMPLES if loud.size else n - 1
    return frames, first, last


@dataclass
class FakeTwilioCall:
    """One call's Media Stream, as Twilio runs it. ``async with`` connects and starts it."""

    stream: TwimlStream
    ws_base: str | None = None
    auth_token: str | None = None  # signs the WebSocket handshake, as Twilio does
    send_start: bool = True  # False: only ``connected``; call :meth:`start` (or send_raw)
    stream_sid: str = field(default_factory=lambda: new_sid("MZ"))

    received: list[tuple[float, str | bytes]] = field(default_factory=list)
    messages: list[tuple[float, Json]] = field(default_factory=list)  # parsed ``received``
    sent: list[tuple[float, Json]] = field(default_factory=list)
    audio: list[ReceivedMedia] = field(default_factory=list)
    marks: list[tuple[float, str]] = field(default_factory=list)  # marks Parley sent
    echoed: list[tuple[float, str]] = field(default_factory=list)  # marks sent back
    clears: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # what Twilio would reject
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    close_code: int | None = None

    _ws: ClientConnection | None = None
    _sequence: int = 0
    _chunk: int = 0
    _send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _queue: list[_Utterance] = field(default_factory=list)
    _index: int = 0
    _play_end: float = 0.0
    _pending_marks: list[tuple[float, str]] = field(default_factory=list)
    _marks_changed: asyncio.Event = field(default_factory=asyncio.Event)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _inbound: InboundAudio = field(default_factory=InboundAudio)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _mic: asyncio.Task[None] | None = None

    async def __aenter__(self) -> FakeTwilioCall:
        headers = {}
        if self.auth_token is not None:
            # Twilio signs the stream URL exactly as the TwiML gave it, with no parameters.
            headers["X-Twilio-Signature"] = sign(self.auth_token, self.stream.url, {})
        url = local_stream_url(self.stream.url, self.ws_base)
        self._ws = await connect(url, additional_headers=headers, max_size=2**20)
        self._tasks = [
            asyncio.create_task(self._read_loop()),
            asyncio.create_task(self._player()),
        ]
        connected = {"event": "connected", "protocol": "Call", "version": "1.0.0"}
        await self._send(connected, numbered=False)  # the one message without a number
        if self.send_start:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stop_tasks()
        if self._ws is not None:
            await self._ws.close()

    async def _stop_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task

    @property
    def ws(self) -> ClientConnection:
        assert self._ws is not None, "not connected"
        return self._ws

    async def _send(self, msg: Json, *, numbered: bool = True) -> None:
        # One lock: sequence numbers go out in the order they are given.
        async with self._send_lock:
            if numbered:
                self._sequence += 1
                msg = {"event": msg["event"], "sequenceNumber": str(self._sequence)} | msg
            self.sent.append((asyncio.get_running_loop().time(), msg))
            await self.ws.send(json.dumps(msg))

    # ---- what the caller does -------------------------------------------------------------

    async def start(self) -> None:
        """``start`` with the TwiML's parameters, then 20 ms of audio every 20 ms."""
        start = {
            "accountSid": self.stream.account_sid,
            "streamSid": self.stream_sid,
            "callSid": self.stream.call_sid,
            "tracks": ["inbound"],
            "customParameters": dict(self.stream.parameters),
            "mediaFormat": {
                "encoding": TWILIO_ENCODING,
                "sampleRate": TWILIO_RATE,
                "channels": TWILIO_CHANNELS,
            },
        }
        await self._send({"event": "start", "start": start, "streamSid": self.stream_sid})
        self._mic = asyncio.create_task(self._mic_loop())
        self._tasks.append(self._mic)

    def say(self, pcm16k: np.ndarray) -> asyncio.Future[float]:
        """Queue int16 16 kHz speech; resolves to the loop time the frame holding its last
        loud sample was sent."""
        return self.say_timed(pcm16k)[1]

    def say_timed(self, pcm16k: np.ndarray) -> tuple[asyncio.Future[float], asyncio.Future[float]]:
        """:meth:`say`, also resolving when the frame of the first loud sample was sent."""
        frames, first, last = _mulaw_frames(pcm16k)
        loop = asyncio.get_running_loop()
        utterance = _Utterance(frames, first, last, loop.create_future(), loop.create_future())
        self._queue.append(utterance)
        return utterance.started, utterance.sent

    def _next_frame(self, now: float) -> bytes:
        if not self._queue:
            return SILENT_FRAME
        utt = self._queue[0]
        if self._index == utt.first_speech_frame and not utt.started.done():
            utt.started.set_result(now)
        if self._index == utt.last_speech_frame and not utt.sent.done():
            utt.sent.set_result(now)
        frame = utt.frames[self._index]
        self._index += 1
        if self._index == len(utt.frames):
            self._queue.pop(0)
            self._index = 0
        return frame

    async def _mic_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        try:
            while True:
                self._chunk += 1
                media = {
                    "track": "inbound",
                    "chunk": str(self._chunk),
                    # Milliseconds of stream time: the 20 ms grid, as Twilio stamps it.
                    "timestamp": str((self._chunk - 1) * 20),
                    "payload": base64.b64encode(self._next_frame(loop.time())).decode(),
                }
                await self._send({"event": "media", "media": media, "streamSid": self.stream_sid})
                next_at += FRAME_SECS
                await asyncio.sleep(max(0.0, next_at - loop.time()))
        except ConnectionClosed:
            pass
        finally:
            for utt in self._queue:
                for future in (utt.started, utt.sent):
                    if not future.done():
                        future.set_exception(ConnectionError("the call ended"))
            self._queue.clear()

    async def send_dtmf(self, digit: str) -> None:
        dtmf = {"track": "inbound_track", "digit": digit}
        await self._send({"event": "dtmf", "streamSid": self.stream_sid, "dtmf": dtmf})

    async def send_raw(self, text: str | bytes) -> None:
        """Anything at all, unnumbered (bad-input tests)."""
        await self.ws.send(text)

    async def hang_up(self) -> None:
        """``stop``, then the socket closes, as when the caller hangs up."""
        if self._mic is not None:  # nothing follows ``stop``
            self._mic.cancel()
            with contextlib.suppress(BaseException):
                await self._mic
        stop = {"accountSid": self.stream.account_sid, "callSid": self.stream.call_sid}
        await self._send({"event": "stop", "streamSid": self.stream_sid, "stop": stop})
        await self.ws.close()

    # ---- what Parley sends ----------------------------------------------------------------

    async def _read_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for message in self.ws:
                now = loop.time()
                self.received.append((now, message))
                msg = self._check(message)
                if msg is not None:
                    self.messages.append((now, msg))
                    await self._handle(now, msg)
                async with self._changed:
                    self._changed.notify_all()
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.closed.set()
            async with self._changed:
                self._changed.notify_all()

    def _check(self, message: str | bytes) -> Json | None:
        """The message if Twilio would accept it; else the reason joins ``errors``."""
        if isinstance(message, bytes):
            self.errors.append("binary message")
            return None
        try:
            msg = json.loads(message)
        except ValueError:
            self.errors.append(f"not JSON: {message[:80]!r}")
            return None
        if not isinstance(msg, dict) or msg.get("event") not in ("media", "mark", "clear"):
            self.errors.append(f"not a media, mark or clear message: {message[:80]!r}")
            return None
        if msg.get("streamSid") != self.stream_sid:
            self.errors.append(f"wrong streamSid in {msg['event']}: {msg.get('streamSid')!r}")
            return None
        if msg["event"] == "media":
            payload = (msg.get("media") or {}).get("payload")
            try:
                if not isinstance(payload, str) or not base64.b64decode(payload, validate=True):
                    raise ValueError("empty")
            except (binascii.Error, ValueError):
                self.errors.append("media without a base64 μ-law payload")
                return None
        if msg["event"] == "mark" and not isinstance((msg.get("mark") or {}).get("name"), str):
            self.errors.append("mark without a name")
            return None
        return msg

    async def _handle(self, now: float, msg: Json) -> None:
        if msg["event"] == "media":
            mulaw = base64.b64decode(msg["media"]["payload"])
            # Twilio plays each frame after the one before it, or at once when idle.
            plays_at = max(now, self._play_end)
            media = ReceivedMedia(now, mulaw, self._inbound.convert(mulaw), plays_at)
            self._play_end = plays_at + media.duration
            self.audio.append(media)
        elif msg["event"] == "mark":
            name = msg["mark"]["name"]
            self.marks.append((now, name))
            self._pending_marks.append((max(now, self._play_end), name))
            self._marks_changed.set()
        else:
            self.clears.append(now)
            for media in self.audio:
                if media.plays_at >= now:
                    media.cleared = True
            self._play_end = min(self._play_end, now)
            # Twilio returns the marks of cleared audio at once.
            pending, self._pending_marks = self._pending_marks, []
            for _, name in pending:
                await self._echo(name)

    async def _echo(self, name: str) -> None:
        self.echoed.append((asyncio.get_running_loop().time(), name))
        await self._send({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})

    async def _player(self) -> None:
        """Echoes each mark when the play clock reaches the audio queued before it."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ConnectionClosed):
            while True:
                self._marks_changed.clear()
                if not self._pending_marks:
                    await self._marks_changed.wait()
                    continue
                due, name = self._pending_marks[0]
                if due > loop.time():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._marks_changed.wait(), due - loop.time())
                    continue
                self._pending_marks.pop(0)
                await self._echo(name)

    # ---- looking at it --------------------------------------------------------------------

    async def wait_for(
        self,
        kind: str,
        predicate: Callable[[Json], bool] | None = None,
        *,
        timeout: float = 10.0,
        after: float = 0.0,
    ) -> tuple[float, Json]:
        """The first ``media``/``mark``/``clear`` from Parley after loop time ``after`` that
        matches ``predicate``: its arrival time and the message."""

        def found() -> tuple[float, Json] | None:
            for at, msg in self.messages:
                if at >= after and msg["event"] == kind and (predicate is None or predicate(msg)):
                    return at, msg
            return None

        async with asyncio.timeout(timeout), self._changed:
            while (hit := found()) is None:
                if self.closed.is_set():
                    raise ConnectionError(f"the stream closed while waiting for {kind}")
                await self._changed.wait()
        return hit

    def first_loud_audio_after(self, at: float, threshold_dbfs: float = -40.0) -> float | None:
        """Arrival time of the first received frame after ``at`` louder than the threshold."""
        for media in self.audio:
            if media.at >= at and media.level_dbfs() > threshold_dbfs:
                return media.at
        return None

    def heard_audio(self) -> np.ndarray:
        """PCM16 16 kHz of every received frame that played (not dropped by a clear)."""
        chunks = [np.frombuffer(m.pcm, dtype="<i2") for m in self.audio if not m.cleared]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype="<i2")
