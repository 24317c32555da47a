"""Twilio Media Streams wire format: parsing, building, μ-law and resampling."""

from __future__ import annotations

import base64
import itertools
import json
from typing import Any

import numpy as np
import pytest

from parley.transports.twilio_wire import (
    FRAME_BYTES,
    MAX_PAYLOAD_BYTES,
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
    mulaw_decode,
    mulaw_encode,
    parse_message,
)

STREAM = "MZ18ad3ab5a668481ce02b83e7395059f0"
CALL = "CA" + "ab" * 16
ACCOUNT = "AC" + "cd" * 16


def start_msg(**fmt: Any) -> dict[str, Any]:
    return {
        "event": "start",
        "sequenceNumber": "1",
        "start": {
            "accountSid": ACCOUNT,
            "streamSid": STREAM,
            "callSid": CALL,
            "tracks": ["inbound"],
            "customParameters": {"session": "s-1", "lang": "en"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1} | fmt,
        },
        "streamSid": STREAM,
    }


def media_msg(payload: str | None = None, **media: Any) -> dict[str, Any]:
    body = {
        "track": "inbound",
        "chunk": "1",
        "timestamp": "5",
        "payload": base64.b64encode(bytes(range(160))).decode() if payload is None else payload,
    } | media
    return {"event": "media", "sequenceNumber": "3", "media": body, "streamSid": STREAM}


def parse(obj: dict[str, Any]) -> Any:
    return parse_message(json.dumps(obj))


def code_of(text: str) -> str:
    with pytest.raises(WireError) as info:
        parse_message(text)
    assert isinstance(info.value, ValueError)
    return info.value.code


# ---- parsing --------------------------------------------------------------------------------


def test_parses_connected() -> None:
    msg = {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    assert parse(msg) == Connected(protocol="Call", version="1.0.0")


def test_parses_start() -> None:
    assert parse(start_msg()) == Start(
        stream_sid=STREAM,
        call_sid=CALL,
        account_sid=ACCOUNT,
        tracks=("inbound",),
        encoding="audio/x-mulaw",
        sample_rate=8000,
        channels=1,
        custom_parameters={"session": "s-1", "lang": "en"},
    )


def test_parses_media_and_decodes_its_payload() -> None:
    assert parse(media_msg()) == Media(
        track="inbound", chunk=1, timestamp_ms=5, payload=bytes(range(160))
    )


def test_parses_mark_dtmf_and_stop() -> None:
    mark = {"event": "mark", "sequenceNumber": "4", "streamSid": STREAM, "mark": {"name": "r1"}}
    dtmf = {
        "event": "dtmf",
        "streamSid": STREAM,
        "sequenceNumber": "5",
        "dtmf": {"track": "inbound_track", "digit": "1"},
    }
    stop = {
        "event": "stop",
        "sequenceNumber": "5",
        "streamSid": STREAM,
        "stop": {"accountSid": ACCOUNT, "callSid": CALL},
    }
    assert parse(mark) == Mark(name="r1")
    assert parse(dtmf) == Dtmf(digit="1")
    assert parse(stop) == Stop(call_sid=CALL)


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("not json", "invalid_json"),
        ("{", "invalid_json"),
        ("[1, 2]", "invalid_message"),
        ('{"protocol": "Call"}', "invalid_message"),
        ('{"event": 7}', "invalid_message"),
        ('{"event": "hello"}', "unknown_event"),
        ('{"event": "clear", "streamSid": "MZ1"}', "unknown_event"),
        ('{"event": "connected", "protocol": "Call"}', "invalid_message"),
        ('{"event": "mark", "mark": {}}', "invalid_message"),
        ('{"event": "mark", "mark": "r1"}', "invalid_message"),
        ('{"event": "dtmf", "dtmf": {"digit": 1}}', "invalid_message"),
        ('{"event": "stop", "stop": {"accountSid": "AC1"}}', "invalid_message"),
    ],
)
def test_refuses_malformed_messages(text: str, code: str) -> None:
    assert code_of(text) == code


@pytest.mark.parametrize(
    "media",
    [
        {"chunk": "one"},
        {"chunk": -1},
        {"chunk": True},
        {"timestamp": None},
        {"timestamp": "1.5"},
        {"track": ""},
    ],
)
def test_refuses_ill_typed_media_fields(media: dict[str, Any]) -> None:
    assert code_of(json.dumps(media_msg(**media))) == "invalid_message"


def test_accepts_integer_counters() -> None:
    event = parse(media_msg(chunk=7, timestamp=140))
    assert (event.chunk, event.timestamp_ms) == (7, 140)


@pytest.mark.parametrize(
    "payload",
    [
        "***not base64***",
        "QUJ",  # missing padding
        "",  # empty
        base64.b64encode(bytes(MAX_PAYLOAD_BYTES + 1)).decode(),
        "A" * 20_000,  # refused by its length before decoding
        12,
    ],
)
def test_refuses_bad_payloads(payload: Any) -> None:
    assert code_of(json.dumps(media_msg(payload))) == "bad_payload"


def test_accepts_payloads_up_to_one_second() -> None:
    one_second = base64.b64encode(bytes(MAX_PAYLOAD_BYTES)).decode()
    assert len(parse(media_msg(one_second)).payload) == 8000
    assert len(parse(media_msg(base64.b64encode(b"\xff").decode())).payload) == 1


@pytest.mark.parametrize(
    "fmt",
    [
        {"encoding": "audio/l16"},
        {"sampleRate": 16000},
        {"sampleRate": "8000"},
        {"channels": 2},
    ],
)
def test_refuses_other_media_formats(fmt: dict[str, Any]) -> None:
    assert code_of(json.dumps(start_msg(**fmt))) == "invalid_message"


def test_refuses_start_with_bad_fields() -> None:
    bad_params = start_msg()
    bad_params["start"]["customParameters"] = {"n": 1}
    bad_tracks = start_msg()
    bad_tracks["start"]["tracks"] = "inbound"
    other_sid = start_msg()
    other_sid["streamSid"] = "MZother"
    no_call = start_msg()
    del no_call["start"]["callSid"]
    for msg in (bad_params, bad_tracks, other_sid, no_call):
        assert code_of(json.dumps(msg)) == "invalid_message"


# ---- building -------------------------------------------------------------------------------


def test_outbound_messages_have_twilios_exact_shapes() -> None:
    assert json.loads(media_message(STREAM, b"\x00\xff\x7f")) == {
        "event": "media",
        "streamSid": STREAM,
        "media": {"payload": base64.b64encode(b"\x00\xff\x7f").decode()},
    }
    assert json.loads(mark_message(STREAM, "reply-3")) == {
        "event": "mark",
        "streamSid": STREAM,
        "mark": {"name": "reply-3"},
    }
    assert json.loads(clear_message(STREAM)) == {"event": "clear", "streamSid": STREAM}


# ---- μ-law ----------------------------------------------------------------------------------


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    ref = reference.astype(np.float64)
    noise = ref - test.astype(np.float64)
    return float(10 * np.log10(np.sum(ref * ref) / np.sum(noise * noise)))


def test_mulaw_known_values() -> None:
    assert mulaw_encode(np.array([0], dtype=np.int16)) == b"\xff"
    assert mulaw_decode(b"\xff\x7f").tolist() == [0, 0]
    assert mulaw_decode(b"\x80\x00").tolist() == [32124, -32124]
    assert mulaw_encode(np.array([32767, -32768], dtype=np.int16)) == b"\x80\x00"


def test_mulaw_round_trip_is_exact_on_its_own_levels() -> None:
    levels = mulaw_decode(bytes(range(256)))
    again = mulaw_encode(levels)
    assert mulaw_decode(again).tolist() == levels.tolist()


def test_mulaw_keeps_a_full_scale_sine_above_30_db() -> None:
    t = np.arange(8000) / 8000
    sine = (np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
    decoded = mulaw_decode(mulaw_encode(sine))
    assert decoded.dtype == np.int16
    assert snr_db(sine, decoded) > 30


def test_mulaw_keeps_a_quiet_sine_above_30_db() -> None:
    t = np.arange(8000) / 8000
    sine = (np.sin(2 * np.pi * 440 * t) * 1000).astype(np.int16)
    assert snr_db(sine, mulaw_decode(mulaw_encode(sine))) > 30


# ---- resampling -----------------------------------------------------------------------------


def tone(rate: int, secs: float, freq: float = 440.0, amplitude: float = 12000) -> np.ndarray:
    t = np.arange(int(rate * secs)) / rate
    return (np.sin(2 * np.pi * freq * t) * amplitude).astype(np.int16)


def test_inbound_audio_is_the_same_in_20_ms_chunks_as_in_one_piece() -> None:
    mulaw = mulaw_encode(tone(8000, 1.0))
    chunked = InboundAudio()
    pieces = [
        chunked.convert(mulaw[i : i + FRAME_BYTES]) for i in range(0, len(mulaw), FRAME_BYTES)
    ]
    a = np.frombuffer(b"".join(pieces) + chunked.flush(), dtype="<i2")
    whole = InboundAudio()
    b = np.frombuffer(whole.convert(mulaw) + whole.flush(), dtype="<i2")
    assert a.size == b.size == 16000
    diff = np.abs(a.astype(np.float64) - b)
    assert float(np.sqrt(np.mean(diff**2)) / np.sqrt(np.mean(b.astype(np.float64) ** 2))) < 0.01
    # After the first frame (filter delay) every 20 ms in gives 20 ms out: no bursts.
    assert [len(p) for p in pieces[2:]] == [640] * (len(pieces) - 2)


def test_inbound_audio_is_16_khz_pcm_at_the_same_pitch() -> None:
    inbound = InboundAudio()
    pcm = np.frombuffer(inbound.convert(mulaw_encode(tone(8000, 1.0))) + inbound.flush(), "<i2")
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64)))
    peak_hz = np.argmax(spectrum) * 16000 / pcm.size
    assert abs(peak_hz - 440) < 2


def test_outbound_audio_makes_50_frames_of_a_second() -> None:
    out = OutboundAudio()
    frames = out.frames(tone(16000, 1.0).tobytes()) + out.flush()
    assert len(frames) == 50
    assert all(len(f) == FRAME_BYTES for f in frames)


def test_outbound_audio_keeps_remainders_across_odd_pieces() -> None:
    pcm = tone(16000, 1.0).tobytes()
    out = OutboundAudio()
    frames: list[bytes] = []
    cuts = [0, 1, 333, 1001, 4096, 4097, 20_000, len(pcm)]  # odd byte counts included
    for lo, hi in itertools.pairwise(cuts):
        frames += out.frames(pcm[lo:hi])
    frames += out.flush()
    assert len(frames) == 50 and all(len(f) == FRAME_BYTES for f in frames)
    whole = OutboundAudio()
    reference = whole.frames(pcm) + whole.flush()
    a = mulaw_decode(b"".join(frames)).astype(np.float64)
    b = mulaw_decode(b"".join(reference)).astype(np.float64)
    assert np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b**2)) < 0.01


def test_outbound_audio_sends_each_20_ms_in_step() -> None:
    out = OutboundAudio()
    pcm = tone(16000, 1.0)
    counts = [len(out.frames(pcm[i : i + 320].tobytes())) for i in range(0, pcm.size, 320)]
    # The filter delays the first frame a little; after that one frame per frame, no bursts.
    assert max(counts) == 1 and sum(counts) >= 48


def test_outbound_flush_pads_with_mulaw_silence() -> None:
    out = OutboundAudio()
    assert out.frames(tone(16000, 0.005).tobytes()) == []  # 40 samples at 8 kHz: no frame
    (last,) = out.flush()
    assert len(last) == FRAME_BYTES
    assert last[60:] == b"\xff" * (FRAME_BYTES - 60)
    assert out.flush() == []


def test_outbound_reset_drops_the_remainder() -> None:
    out = OutboundAudio()
    out.frames(tone(16000, 0.03).tobytes() + b"\x01")
    out.reset()
    assert out.flush() == []
    frames = out.frames(np.zeros(320 * 10, dtype=np.int16).tobytes()) + out.flush()
    assert len(frames) == 10
    assert set(b"".join(frames)) <= {0xFF, 0x7F}  # silence only: nothing from before
