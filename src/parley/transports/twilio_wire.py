"""Twilio Media Streams on the wire: its JSON messages, G.711 μ-law and 8 kHz ↔ 16 kHz.

One module per telephony wire format (Telnyx, Plivo or Vonage would each get their own
of this shape), so the transport that drives a call never sees JSON or μ-law. No I/O
here: parsing, building, encoding and resampling only.

Message shapes: https://www.twilio.com/docs/voice/media-streams/websocket-messages
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import soxr

from parley.audio.pcm import SAMPLE_RATE

TWILIO_RATE = 8_000
TWILIO_ENCODING = "audio/x-mulaw"
TWILIO_CHANNELS = 1
FRAME_BYTES = TWILIO_RATE * 20 // 1000  # 160: one 20 ms μ-law frame, one byte a sample
MULAW_SILENCE = 0xFF  # μ-law for a zero sample
MAX_PAYLOAD_BYTES = TWILIO_RATE * 1  # 1 s; Twilio sends 20 ms, so anything larger is abuse
# Base64 length of MAX_PAYLOAD_BYTES: longer text is refused before it is decoded.
_MAX_PAYLOAD_TEXT = 4 * -(-MAX_PAYLOAD_BYTES // 3)


class WireError(ValueError):
    """A message that is not Twilio's protocol; ``code`` is short and stable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# ---- inbound messages -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connected:
    protocol: str
    version: str


@dataclass(frozen=True, slots=True)
class Start:
    stream_sid: str
    call_sid: str
    account_sid: str
    tracks: tuple[str, ...]
    encoding: str
    sample_rate: int
    channels: int
    custom_parameters: dict[str, str]


@dataclass(frozen=True, slots=True)
class Media:
    track: str
    chunk: int
    timestamp_ms: int
    payload: bytes  # μ-law, base64-decoded


@dataclass(frozen=True, slots=True)
class Mark:
    name: str


@dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str


@dataclass(frozen=True, slots=True)
class Stop:
    call_sid: str


TwilioEvent = Connected | Start | Media | Mark | Dtmf | Stop


def _invalid(message: str) -> WireError:
    return WireError("invalid_message", message)


def _object(parent: dict[str, Any], key: str) -> dict[str, Any]:
    value = parent.get(key)
    if not isinstance(value, dict):
        raise _invalid(f"{key} must be an object")
    return value


def _text(parent: dict[str, Any], key: str) -> str:
    value = parent.get(key)
    if not isinstance(value, str) or not value:
        raise _invalid(f"{key} must be a non-empty string")
    return value


def _count(parent: dict[str, Any], key: str) -> int:
    """A non-negative integer; Twilio sends counters as decimal strings ("chunk": "1")."""
    value = parent.get(key)
    # bool is an int subclass: true must not pass for 1.
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    raise _invalid(f"{key} must be a non-negative integer")


def _connected(msg: dict[str, Any]) -> Connected:
    return Connected(protocol=_text(msg, "protocol"), version=_text(msg, "version"))


def _start(msg: dict[str, Any]) -> Start:
    start = _object(msg, "start")
    stream_sid = _text(start, "streamSid")
    outer_sid = msg.get("streamSid")
    if outer_sid is not None and outer_sid != stream_sid:
        raise _invalid("streamSid differs from start.streamSid")
    tracks = start.get("tracks")
    if not isinstance(tracks, list) or not all(isinstance(t, str) for t in tracks):
        raise _invalid("tracks must be a list of strings")
    # Twilio always sends customParameters (empty without <Parameter>s); absent is tolerated.
    params = start.get("customParameters", {})
    if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
        raise _invalid("customParameters must map names to strings")
    fmt = _object(start, "mediaFormat")
    encoding, rate, channels = fmt.get("encoding"), fmt.get("sampleRate"), fmt.get("channels")
    if (encoding, rate, channels) != (TWILIO_ENCODING, TWILIO_RATE, TWILIO_CHANNELS):
        raise _invalid(f"mediaFormat must be {TWILIO_ENCODING}, {TWILIO_RATE} Hz, mono")
    return Start(
        stream_sid=stream_sid,
        call_sid=_text(start, "callSid"),
        account_sid=_text(start, "accountSid"),
        tracks=tuple(tracks),
        encoding=TWILIO_ENCODING,
        sample_rate=TWILIO_RATE,
        channels=TWILIO_CHANNELS,
        custom_parameters=dict(params),
    )


def _payload(text: Any) -> bytes:
    if not isinstance(text, str):
        raise WireError("bad_payload", "payload must be a base64 string")
    if len(text) > _MAX_PAYLOAD_TEXT:
        raise WireError("bad_payload", f"payload over {MAX_PAYLOAD_BYTES} bytes")
    try:
        payload = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WireError("bad_payload", "payload is not base64") from exc
    # μ-law is one byte a sample, so every non-empty payload is a whole number of samples.
    if not 1 <= len(payload) <= MAX_PAYLOAD_BYTES:
        raise WireError("bad_payload", f"payload must hold 1..{MAX_PAYLOAD_BYTES} bytes")
    return payload


def _media(msg: dict[str, Any]) -> Media:
    media = _object(msg, "media")
    return Media(
        track=_text(media, "track"),
        chunk=_count(media, "chunk"),
        timestamp_ms=_count(media, "timestamp"),
        payload=_payload(media.get("payload")),
    )


def _mark(msg: dict[str, Any]) -> Mark:
    return Mark(name=_text(_object(msg, "mark"), "name"))


def _dtmf(msg: dict[str, Any]) -> Dtmf:
    return Dtmf(digit=_text(_object(msg, "dtmf"), "digit"))


def _stop(msg: dict[str, Any]) -> Stop:
    return Stop(call_sid=_text(_object(msg, "stop"), "callSid"))


_PARSERS: dict[str, Callable[[dict[str, Any]], TwilioEvent]] = {
    "connected": _connected,
    "start": _start,
    "media": _media,
    "mark": _mark,
    "dtmf": _dtmf,
    "stop": _stop,
}


def parse_message(text: str) -> TwilioEvent:
    """One text message from Twilio as its event; :class:`WireError` if it is not one."""
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise WireError("invalid_json", "message is not JSON") from exc
    if not isinstance(msg, dict):
        raise _invalid("message must be a JSON object")
    event = msg.get("event")
    if not isinstance(event, str):
        raise _invalid("event must be a string")
    parser = _PARSERS.get(event)
    if parser is None:
        # Not echoed in full: the text is the peer's, and could be anything.
        raise WireError("unknown_event", f"unknown event {event[:40]!r}")
    return parser(msg)


# ---- outbound messages ----------------------------------------------------------------------


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


def media_message(stream_sid: str, mulaw: bytes) -> str:
    """Audio for Twilio to play to the caller (queued behind what it already holds)."""
    payload = base64.b64encode(mulaw).decode("ascii")
    return _dumps({"event": "media", "streamSid": stream_sid, "media": {"payload": payload}})


def mark_message(stream_sid: str, name: str) -> str:
    """A mark Twilio echoes back once the audio sent before it has played (or is cleared)."""
    return _dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


def clear_message(stream_sid: str) -> str:
    """Drop every queued, unplayed frame at Twilio (barge-in); pending marks come back."""
    return _dumps({"event": "clear", "streamSid": stream_sid})


# ---- G.711 μ-law ----------------------------------------------------------------------------

_BIAS = 0x84
_CLIP = 32635


def _decode_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF  # μ-law bytes travel inverted
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return np.where(u & 0x80, -magnitude, magnitude).astype(np.int16)


_DECODE = _decode_table()
# Segment (exponent) of a biased magnitude, indexed by magnitude >> 7 (1..255): the
# position of its highest set bit.
_EXPONENT = np.floor(np.log2(np.maximum(np.arange(256), 1))).astype(np.int32)


def mulaw_decode(mulaw: bytes) -> np.ndarray:
    """G.711 μ-law bytes → int16 samples."""
    return _DECODE[np.frombuffer(mulaw, dtype=np.uint8)]


def mulaw_encode(pcm: np.ndarray) -> bytes:
    """int16 samples → G.711 μ-law bytes (bias 0x84, clip 32635)."""
    x = np.asarray(pcm).astype(np.int32)  # int32: |-32768| does not fit int16
    sign = np.where(x < 0, 0x80, 0)
    magnitude = np.minimum(np.abs(x), _CLIP) + _BIAS
    exponent = _EXPONENT[magnitude >> 7]
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


# ---- resampling -----------------------------------------------------------------------------


def _stream(in_rate: int, out_rate: int) -> soxr.ResampleStream:
    # vr=True: soxr's fixed-rate streams hold ~100 ms of input and release it in bursts
    # (measured with soxr 1.1: nothing for four 20 ms chunks, then five chunks' worth),
    # adding latency and jitter to a phone call. The variable-rate engine returns every
    # 20 ms chunk at once (~10 ms of filter delay) with >100 dB alias rejection.
    return soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", vr=True)


class InboundAudio:
    """The caller's μ-law 8 kHz → Parley's PCM16 16 kHz, one stream per call: the resampler
    keeps its filter state across messages, so chunk boundaries add no clicks."""

    def __init__(self) -> None:
        self._resampler = _stream(TWILIO_RATE, SAMPLE_RATE)

    def convert(self, mulaw: bytes) -> bytes:
        """PCM16LE for one payload (a few ms less at first: the filter's delay)."""
        return self._out(self._resampler.resample_chunk(mulaw_decode(mulaw)))

    def flush(self) -> bytes:
        """The filter's tail at the end of the stream."""
        tail = self._resampler.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
        self._resampler.clear()
        return self._out(tail)

    def reset(self) -> None:
        self._resampler.clear()

    @staticmethod
    def _out(samples: np.ndarray) -> bytes:
        return samples.astype("<i2", copy=False).tobytes()


class OutboundAudio:
    """Parley's PCM16 16 kHz → exact 20 ms μ-law frames for Twilio.

    Input may come in pieces of any length (an odd byte included); what does not yet
    fill a frame waits for the next call.
    """

    def __init__(self) -> None:
        self._resampler = _stream(SAMPLE_RATE, TWILIO_RATE)
        self._odd_byte = b""
        self._pending = b""  # μ-law not yet a whole frame

    def frames(self, pcm16k: bytes) -> list[bytes]:
        """Every whole 20 ms μ-law frame the audio so far makes."""
        data = self._odd_byte + pcm16k
        whole = len(data) - len(data) % 2
        self._odd_byte = data[whole:]
        samples = np.frombuffer(data[:whole], dtype="<i2")
        return self._split(self._resampler.resample_chunk(samples))

    def flush(self) -> list[bytes]:
        """The rest, the last frame padded with μ-law silence; ready for a new stream."""
        tail = self._resampler.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
        self._resampler.clear()
        self._odd_byte = b""  # half a sample cannot be played
        frames = self._split(tail)
        if self._pending:
            padding = bytes([MULAW_SILENCE]) * (FRAME_BYTES - len(self._pending))
            frames.append(self._pending + padding)
            self._pending = b""
        return frames

    def reset(self) -> None:
        """Forget everything not yet returned (barge-in: Twilio was told to ``clear``)."""
        self._resampler.clear()
        self._odd_byte = b""
        self._pending = b""

    def _split(self, samples: np.ndarray) -> list[bytes]:
        data = self._pending + mulaw_encode(samples)
        cut = len(data) - len(data) % FRAME_BYTES
        self._pending = data[cut:]
        return [data[i : i + FRAME_BYTES] for i in range(0, cut, FRAME_BYTES)]
