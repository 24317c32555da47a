"""A WebRTC caller for Parley (aiortc): the same bookkeeping as the WebSocket
:class:`~parley.client.CallClient` — every event and agent audio frame with its arrival
time — but audio travels as Opus over RTP and events over the ``parley`` data channel,
as from a browser. Used by the benchmark and the tests."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import av
import httpx
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from parley.audio.pcm import FRAME_SAMPLES, SAMPLE_RATE
from parley.client import CallClient, ReceivedAudio, create_session, http_base
from parley.transports.webrtc.jitter import use_audio_jitter_buffer
from parley.transports.webrtc.tracks import (
    OPUS_FRAME_SAMPLES,
    OPUS_RATE,
    OPUS_SILENCE,
    OpusRateFrames,
    pcm_frame,
    pcm_from,
)


class _MicrophoneTrack(MediaStreamTrack):
    """The caller's microphone: 20 ms frames in real time from the client's queue, at
    48 kHz as a browser captures them. Each 16 kHz frame is taken from the queue one frame
    ahead of its send time, so a whole 48 kHz frame is ready when Opus asks (see
    :class:`~parley.transports.webrtc.tracks.OpusRateFrames`); the client is told the
    time it is actually sent at."""

    kind = "audio"

    def __init__(self, client: CallClient) -> None:
        super().__init__()
        self._client = client
        self._frames = OpusRateFrames()
        self._start: float | None = None
        self._pts = 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
            self._frames.push(self._client.next_mic_frame(self._start))
        else:
            self._pts += OPUS_FRAME_SAMPLES
            await asyncio.sleep(max(0.0, self._start + self._pts / OPUS_RATE - loop.time()))
        sent_at = self._start + self._pts / OPUS_RATE
        self._frames.push(self._client.next_mic_frame(sent_at + FRAME_SAMPLES / SAMPLE_RATE))
        return pcm_frame(self._frames.pop() or OPUS_SILENCE, self._pts, OPUS_RATE)


@dataclass
class WebRTCCallClient(CallClient):
    """``url`` is the server's base URL (``http://host:port``); a session is created."""

    _pc: RTCPeerConnection | None = None
    _channel: RTCDataChannel | None = None

    async def __aenter__(self) -> WebRTCCallClient:
        base = http_base(self.url.replace("http://", "ws://").replace("https://", "wss://"))
        self.session = await create_session(f"{base}/v1/ws")
        self._pc = pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTrack(_MicrophoneTrack(self))
        self._channel = channel = pc.createDataChannel("parley")
        opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_open() -> None:
            if not opened.done():
                opened.set_result(None)

        channel.on("open", on_open)
        channel.on("message", self._on_message)
        channel.on("close", self._on_close)
        pc.on("track", self._on_track)
        await pc.setLocalDescription(await pc.createOffer())
        assert pc.localDescription is not None
        async with httpx.AsyncClient(base_url=base, timeout=20) as http:
            # A path on this server, or (a control plane's answer) absolute on a worker.
            response = await http.post(
                self.session["webrtc_offer_url"],
                json={"sdp": pc.localDescription.sdp, "type": "offer"},
                headers={"Authorization": f"Bearer {self.session['token']}"},
            )
            response.raise_for_status()
            answer = response.json()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        await asyncio.wait_for(opened, 20)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stop_tasks()
        if self._pc is not None:
            await self._pc.close()

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            # Like the WebSocket client, record audio as it arrives: no playout cushion.
            assert self._pc is not None
            use_audio_jitter_buffer(self._pc, track, lost_after=2)
            self._tasks.append(asyncio.ensure_future(self._read_audio(track)))

    async def _read_audio(self, track: MediaStreamTrack) -> None:
        loop = asyncio.get_running_loop()
        async for pcm in pcm_from(track):
            self.audio.append(ReceivedAudio(loop.time(), pcm))

    def _on_message(self, message: str | bytes) -> None:
        if isinstance(message, str):
            self.events.append((asyncio.get_running_loop().time(), json.loads(message)))
            self._notify()

    def _on_close(self) -> None:
        self.closed.set()
        self._notify()

    def _notify(self) -> None:
        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        self._tasks.append(asyncio.ensure_future(notify()))

    async def send_json(self, obj: Any) -> None:
        assert self._channel is not None
        self._channel.send(json.dumps(obj))
