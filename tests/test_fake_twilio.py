"""The fake Twilio itself, against a tiny stand-in for Parley: message shapes and order,
real-time pacing, mark echoes on the play clock, clear, hang-up and webhook signing."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import pytest
from twilio.request_validator import RequestValidator
from websockets.asyncio.server import ServerConnection, serve

from fake_twilio import (
    VOICE_PATH,
    FakeTwilioCall,
    TwimlStream,
    WebhookRefused,
    incoming_call_params,
    place_call,
    send_voice_webhook,
    sign,
)
from parley.transports.twilio_wire import (
    FRAME_BYTES,
    Media,
    Start,
    mark_message,
    media_message,
    mulaw_decode,
    mulaw_encode,
    parse_message,
)

TOKEN = "fake-auth-token-0123456789abcdef"
STREAM_URL = "wss://voice.example.com/v1/telephony/twilio/stream?call=abc"


def tone(secs: float, freq: float = 440.0, rate: int = 16_000) -> np.ndarray:
    t = np.arange(int(rate * secs)) / rate
    return (np.sin(2 * np.pi * freq * t) * 12_000).astype(np.int16)


@dataclass
class StandIn:
    """Parley's side of one stream: what arrived, when, and the connection to answer on."""

    url: str
    inbox: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    conn: asyncio.Future[ServerConnection] = field(default_factory=asyncio.Future)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def next_of(self, event: str, after: int = 0, timeout: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                for _, msg in self.inbox[after:]:
                    if msg["event"] == event:
                        return msg
                await asyncio.sleep(0.01)

    async def time_of_nth(self, event: str, n: int, timeout: float = 2.0) -> float:
        async with asyncio.timeout(timeout):
            while True:
                times = self.times_of(event)
                if len(times) >= n:
                    return times[n - 1]
                await asyncio.sleep(0.005)

    def times_of(self, event: str) -> list[float]:
        return [at for at, msg in self.inbox if msg["event"] == event]


@asynccontextmanager
async def parley_stand_in() -> AsyncIterator[StandIn]:
    stand_in: StandIn | None = None

    async def handler(ws: ServerConnection) -> None:
        assert stand_in is not None
        stand_in.conn.set_result(ws)
        loop = asyncio.get_running_loop()
        async for message in ws:
            stand_in.inbox.append((loop.time(), json.loads(message)))
        stand_in.done.set()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        stand_in = StandIn(f"ws://127.0.0.1:{port}")
        yield stand_in


def twiml_stream(**parameters: str) -> TwimlStream:
    return TwimlStream(STREAM_URL, parameters or {"session": "s-1"}, "CA" + "12" * 16)


async def test_connected_start_then_numbered_media_in_twilios_shapes() -> None:
    async with parley_stand_in() as parley:
        stream = twiml_stream(session="s-9", lang="en")
        async with FakeTwilioCall(stream, ws_base=parley.url, auth_token=TOKEN) as call:
            ws = await parley.conn
            await asyncio.sleep(0.15)
        request = ws.request
        assert request is not None
        assert request.path == "/v1/telephony/twilio/stream?call=abc"
        signature = request.headers["X-Twilio-Signature"]
        assert RequestValidator(TOKEN).validate(STREAM_URL, {}, signature)

        messages = [msg for _, msg in parley.inbox]
        assert messages[0] == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
        start = messages[1]
        assert start == {
            "event": "start",
            "sequenceNumber": "1",
            "start": {
                "accountSid": stream.account_sid,
                "streamSid": call.stream_sid,
                "callSid": stream.call_sid,
                "tracks": ["inbound"],
                "customParameters": {"session": "s-9", "lang": "en"},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
            "streamSid": call.stream_sid,
        }
        assert call.stream_sid.startswith("MZ") and len(call.stream_sid) == 34
        parsed = parse_message(json.dumps(start))
        assert isinstance(parsed, Start) and parsed.custom_parameters["session"] == "s-9"

        media = messages[2:]
        assert len(media) >= 4
        for i, msg in enumerate(media):
            assert set(msg) == {"event", "sequenceNumber", "media", "streamSid"}
            assert msg["sequenceNumber"] == str(i + 2)
            assert msg["streamSid"] == call.stream_sid
            assert set(msg["media"]) == {"track", "chunk", "timestamp", "payload"}
            event = parse_message(json.dumps(msg))
            assert isinstance(event, Media)
            assert (event.track, event.chunk, event.timestamp_ms) == ("inbound", i + 1, 20 * i)
            assert event.payload == b"\xff" * FRAME_BYTES  # a quiet line


async def test_speech_is_paced_in_real_time_and_arrives_intact() -> None:
    async with parley_stand_in() as parley:
        async with FakeTwilioCall(twiml_stream(), ws_base=parley.url) as call:
            await parley.conn
            await asyncio.sleep(0.1)
            loop = asyncio.get_running_loop()
            queued_at = loop.time()
            started, sent = call.say_timed(tone(1.0))
            last_sent = await asyncio.wait_for(sent, 5)
            assert 0.0 <= await started - queued_at < 0.1
            assert 0.9 < last_sent - queued_at < 1.3
            await asyncio.sleep(0.1)
        payloads = [
            base64.b64decode(msg["media"]["payload"])
            for _, msg in parley.inbox
            if msg["event"] == "media"
        ]
    assert all(len(p) == FRAME_BYTES for p in payloads)
    pcm = mulaw_decode(b"".join(payloads)).astype(np.float64)
    loud = [np.sqrt(np.mean(pcm[i : i + 160] ** 2)) > 1000 for i in range(0, pcm.size, 160)]
    assert sum(loud) == 50  # 1 s of tone in 20 ms frames, no more, no less
    spectrum = np.abs(np.fft.rfft(pcm))
    assert abs(np.argmax(spectrum) * 8000 / pcm.size - 440) < 5


async def test_a_mark_comes_back_when_the_audio_before_it_has_played() -> None:
    async with parley_stand_in() as parley:
        async with FakeTwilioCall(twiml_stream(), ws_base=parley.url) as call:
            ws = await parley.conn
            loop = asyncio.get_running_loop()
            mulaw = mulaw_encode(tone(0.5, rate=8000))
            sent_at = loop.time()
            for i in range(0, len(mulaw), FRAME_BYTES):  # half a second, all at once
                await ws.send(media_message(call.stream_sid, mulaw[i : i + FRAME_BYTES]))
            await ws.send(mark_message(call.stream_sid, "reply-1"))
            _, mark = await call.wait_for("mark")
            echo = await parley.next_of("mark", timeout=3)
            echo_at = parley.times_of("mark")[0]
        assert mark == {"event": "mark", "streamSid": call.stream_sid, "mark": {"name": "reply-1"}}
        assert set(echo) == {"event", "sequenceNumber", "streamSid", "mark"}
        assert echo["mark"] == {"name": "reply-1"} and echo["streamSid"] == call.stream_sid
        assert 0.45 < echo_at - sent_at < 0.7
        assert len(call.audio) == 25 and not call.errors
        assert call.first_loud_audio_after(sent_at) is not None
        assert call.heard_audio().size > 7000  # 16 kHz, less the filter's delay


async def test_an_idle_line_echoes_a_mark_at_once() -> None:
    async with parley_stand_in() as parley:
        async with FakeTwilioCall(twiml_stream(), ws_base=parley.url) as call:
            ws = await parley.conn
            sent_at = asyncio.get_running_loop().time()
            await ws.send(mark_message(call.stream_sid, "nothing-queued"))
            await parley.next_of("mark", timeout=2)
        assert parley.times_of("mark")[0] - sent_at < 0.1


async def test_clear_drops_unplayed_audio_and_returns_pending_marks_at_once() -> None:
    async with parley_stand_in() as parley:
        async with FakeTwilioCall(twiml_stream(), ws_base=parley.url) as call:
            ws = await parley.conn
            loop = asyncio.get_running_loop()
            mulaw = mulaw_encode(tone(2.0, rate=8000))
            for i in range(0, len(mulaw), FRAME_BYTES):
                await ws.send(media_message(call.stream_sid, mulaw[i : i + FRAME_BYTES]))
            await ws.send(mark_message(call.stream_sid, "first"))
            await ws.send(media_message(call.stream_sid, mulaw[:FRAME_BYTES]))
            await ws.send(mark_message(call.stream_sid, "second"))
            await asyncio.sleep(0.3)
            assert parley.times_of("mark") == []
            cleared_at = loop.time()
            await ws.send(json.dumps({"event": "clear", "streamSid": call.stream_sid}))
            await call.wait_for("clear")
            await asyncio.sleep(0.1)
            echoes = [msg["mark"]["name"] for _, msg in parley.inbox if msg["event"] == "mark"]
            assert echoes == ["first", "second"]
            assert all(at - cleared_at < 0.1 for at in parley.times_of("mark"))
            played = [m for m in call.audio if not m.cleared]
            assert 10 <= len(played) <= 22  # ~0.3 s of the 2 s played before the clear
            assert len(call.clears) == 1 and [n for _, n in call.echoed] == echoes

            # After a clear the line is idle: new audio plays at once.
            await ws.send(media_message(call.stream_sid, mulaw[:FRAME_BYTES]))
            await ws.send(mark_message(call.stream_sid, "third"))
            sent_at = loop.time()
            await call.wait_for("mark", lambda m: m["mark"]["name"] == "third")
            assert 0.0 < await parley.time_of_nth("mark", 3) - sent_at < 0.1


async def test_dtmf_raw_messages_and_hang_up() -> None:
    async with parley_stand_in() as parley:
        async with FakeTwilioCall(twiml_stream(), ws_base=parley.url, send_start=False) as call:
            ws = await parley.conn
            await call.send_raw('{"event": "nonsense"}')
            await call.start()
            await call.send_dtmf("7")
            await ws.send(b"\x00\x01")  # what Twilio would not accept
            await ws.send(json.dumps({"event": "clear", "streamSid": "MZ-other"}))
            await asyncio.sleep(0.1)
            await call.hang_up()
            await asyncio.wait_for(parley.done.wait(), 2)
            await asyncio.wait_for(call.closed.wait(), 2)
        events = [msg["event"] for _, msg in parley.inbox]
        assert events[:3] == ["connected", "nonsense", "start"]
        assert events[-1] == "stop" and events.count("stop") == 1
        dtmf = await parley.next_of("dtmf")
        assert dtmf["dtmf"] == {"track": "inbound_track", "digit": "7"}
        stop = parley.inbox[-1][1]
        assert stop["stop"] == {
            "accountSid": call.stream.account_sid,
            "callSid": call.stream.call_sid,
        }
        numbers = [int(msg["sequenceNumber"]) for _, msg in parley.inbox if "sequenceNumber" in msg]
        assert numbers == list(range(1, len(numbers) + 1))
        assert len(call.errors) == 2 and call.close_code == 1000


# ---- the webhook ------------------------------------------------------------------------------

TWIML = (
    '<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
    '<Stream url="wss://voice.example.com/v1/telephony/twilio/stream">'
    '<Parameter name="session" value="s-42"/><Parameter name="token" value="t.k"/>'
    "</Stream></Connect></Response>"
)


@contextmanager
def signed_voice_endpoint(public_url: str) -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A stand-in for Parley's voice webhook: 403 unless Twilio's signature holds."""
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            params = dict(parse_qsl(body, keep_blank_values=True))
            valid = self.headers["Content-Type"] == "application/x-www-form-urlencoded"
            valid &= RequestValidator(TOKEN).validate(
                public_url + self.path, params, self.headers.get("X-Twilio-Signature", "")
            )
            seen.append(params)
            payload = TWIML.encode() if valid else b"forbidden"
            self.send_response(200 if valid else 403)
            self.send_header("Content-Type", "text/xml" if valid else "text/plain")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


async def test_place_call_signs_the_webhook_and_reads_the_twiml() -> None:
    public = "https://voice.example.com"
    with signed_voice_endpoint(public) as (base, seen):
        stream = await place_call(base, TOKEN, public_url=public, to_number="+15550001111")
    assert stream.url == "wss://voice.example.com/v1/telephony/twilio/stream"
    assert stream.parameters == {"session": "s-42", "token": "t.k"}
    params = seen[0]
    assert params["CallSid"] == stream.call_sid and len(stream.call_sid) == 34
    assert stream.call_sid.startswith("CA") and int(stream.call_sid[2:], 16) >= 0
    assert params["AccountSid"] == stream.account_sid
    assert (params["CallStatus"], params["Direction"]) == ("ringing", "inbound")
    assert (params["To"], params["ApiVersion"]) == ("+15550001111", "2010-04-01")


async def test_unsigned_or_wrongly_signed_webhooks_are_refused() -> None:
    public = "https://voice.example.com"
    with signed_voice_endpoint(public) as (base, _):
        params = incoming_call_params()
        assert (await send_voice_webhook(base, params, signature=None)).status_code == 403
        bad = sign("another-token", public + VOICE_PATH, params)
        assert (await send_voice_webhook(base, params, signature=bad)).status_code == 403
        # Signed for the address it reached rather than the public URL Twilio called.
        with pytest.raises(WebhookRefused) as info:
            await place_call(base, TOKEN)
        assert info.value.response.status_code == 403
