"""A WebRTC caller for Parley (aiortc): the same bookkeeping as the WebSocket
:class:`~parley.client.CallClient` — every event and agent audio frame with its arrival
time — but audio travels as Opus over RTP and events over the ``parley`` data channel,
as from a browser. Used by the benchmark and the tests.

With ``reconnect=True`` it follows its session through a drop as the browser page does:
the data channel or the connection closing, a "disconnected" state that lasts, or (a
killed server sends no goodbye, and aiortc reports a dead peer only after ~30 s) no
agent audio for :data:`DROP_AFTER_SECS` — the server's track sends silence between
replies. It then refreshes its token through the control plane and posts a new offer to
the ``webrtc_offer_url`` that answers (see :mod:`parley.client_reconnect`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
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
from parley.client_reconnect import (
    ReconnectFailed,
    RetryLater,
    SessionRefused,
    absolute,
    check_response,
    ended_for_good,
    refresh_token,
    retry,
)
from parley.transports.webrtc.jitter import use_audio_jitter_buffer
from parley.transports.webrtc.tracks import (
    OPUS_FRAME_SAMPLES,
    OPUS_RATE,
    OPUS_SILENCE,
    OpusRateFrames,
    pcm_frame,
    pcm_from,
)

DROP_AFTER_SECS = 4.0
"""A connection that stays "disconnected", or brings no agent audio, this long is a drop
(the page waits as long)."""


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
    """``url`` is the server's base URL (``http://host:port``): a session is created
    there, unless ``session`` is given (a token answer from it), and with ``reconnect``
    its token is refreshed there."""

    _pc: RTCPeerConnection | None = None
    _channel: RTCDataChannel | None = None
    _dropped: asyncio.Event = field(default_factory=asyncio.Event)
    _drop_reason: str = ""
    _last_audio_at: float = 0.0
    _since: int = 0
    """Index in ``events`` of the current connection's first event."""

    @property
    def base(self) -> str:
        return http_base(self.url.replace("http://", "ws://").replace("https://", "wss://"))

    @property
    def refresh_url(self) -> str:
        return self.control_url or self.base

    async def __aenter__(self) -> WebRTCCallClient:
        if self.session is None:
            self.session = await create_session(f"{self.base}/v1/ws")
        await self._open(self.session)
        if self.reconnect:
            self._tasks.append(asyncio.ensure_future(self._follow()))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stop_tasks()
        if self._pc is not None:
            await self._pc.close()

    async def _open(self, answer: dict[str, Any]) -> None:
        """A peer connection for the token ``answer``: the offer posted to its
        ``webrtc_offer_url`` (a path on this server, or absolute on a worker), until the
        data channel opens."""
        self._pc = pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._dropped.clear()
        self._since = len(self.events)
        self._last_audio_at = asyncio.get_running_loop().time()
        pc.addTrack(_MicrophoneTrack(self))
        self._channel = channel = pc.createDataChannel("parley")
        opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_open() -> None:
            if not opened.done():
                opened.set_result(None)

        channel.on("open", on_open)
        channel.on("message", self._on_message)
        channel.on("close", lambda: self._drop(pc, "data channel closed"))
        pc.on("track", lambda track: self._on_track(pc, track))
        pc.on("connectionstatechange", lambda: self._on_state(pc))
        try:
            await pc.setLocalDescription(await pc.createOffer())
            assert pc.localDescription is not None
            async with httpx.AsyncClient(timeout=20) as http:
                response = await http.post(
                    absolute(answer["webrtc_offer_url"], self.refresh_url),
                    json={"sdp": pc.localDescription.sdp, "type": "offer"},
                    headers={"Authorization": f"Bearer {answer['token']}"},
                )
            check_response(response, "posting the offer")
            remote = response.json()
            await pc.setRemoteDescription(RTCSessionDescription(sdp=remote["sdp"], type="answer"))
            await asyncio.wait_for(opened, 20)
        except BaseException:
            await pc.close()
            raise

    def _on_track(self, pc: RTCPeerConnection, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            # Like the WebSocket client, record audio as it arrives: no playout cushion.
            use_audio_jitter_buffer(pc, track, lost_after=2)
            self._tasks.append(asyncio.ensure_future(self._read_audio(track)))

    async def _read_audio(self, track: MediaStreamTrack) -> None:
        loop = asyncio.get_running_loop()
        async for pcm in pcm_from(track):
            self._last_audio_at = loop.time()
            self.audio.append(ReceivedAudio(self._last_audio_at, pcm))

    def _on_message(self, message: str | bytes) -> None:
        if isinstance(message, str):
            self.events.append((asyncio.get_running_loop().time(), json.loads(message)))
            self._notify_soon()

    def _on_state(self, pc: RTCPeerConnection) -> None:
        if pc.connectionState in ("failed", "closed"):
            self._drop(pc, f"connection {pc.connectionState}")
        elif pc.connectionState == "disconnected":

            async def lasting() -> None:
                await asyncio.sleep(DROP_AFTER_SECS)
                if pc.connectionState == "disconnected":
                    self._drop(pc, "connection lost")

            self._tasks.append(asyncio.ensure_future(lasting()))

    def _drop(self, pc: RTCPeerConnection, reason: str) -> None:
        """The connection ``pc`` is gone (ignored for one already replaced)."""
        if pc is not self._pc or self._dropped.is_set():
            return
        self._drop_reason = reason
        self._dropped.set()
        if not self.reconnect:
            self.finish()
        self._notify_soon()

    async def _silent_for(self, secs: float) -> None:
        """Returns once no agent audio has come for ``secs``."""
        loop = asyncio.get_running_loop()
        while True:
            left = self._last_audio_at + secs - loop.time()
            if left <= 0:
                return
            await asyncio.sleep(left)

    async def _follow(self) -> None:
        """Reconnect after every drop, until the session ends or the client gives up."""
        try:
            while True:
                silence = asyncio.ensure_future(self._silent_for(DROP_AFTER_SECS))
                dropped = asyncio.ensure_future(self._dropped.wait())
                try:
                    await asyncio.wait({silence, dropped}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    silence.cancel()
                    dropped.cancel()
                reason = self._drop_reason if self._dropped.is_set() else "no agent audio"
                if ended_for_good([ev for _, ev in self.events[self._since :]]):
                    return
                old, self._pc = self._pc, None
                if old is not None:
                    await old.close()
                if not await self._reconnect_rtc(reason):
                    return
        finally:
            self.finish()

    async def _reconnect_rtc(self, reason: str) -> bool:
        self.note("client.reconnecting", reason=reason)
        sid = self.session_id()
        assert sid is not None and self.session is not None
        try:
            _, attempts = await retry(
                lambda: self._connect_again_rtc(sid),
                self.policy,
                f"reconnecting session {sid}",
            )
        except ReconnectFailed as exc:
            self.reconnect_error = exc
            self.note("client.reconnect_failed", error=str(exc))
            return False
        self.reconnects += 1
        self.note("client.reconnected", attempts=attempts, worker_id=self.session.get("worker_id"))
        return True

    async def _connect_again_rtc(self, sid: str) -> None:
        assert self.session is not None
        answer = await refresh_token(self.refresh_url, sid, str(self.session["token"]))
        self.session = {**self.session, **answer}
        try:
            await self._open(answer)
        except TimeoutError as exc:
            raise RetryLater("the data channel did not open") from exc
        except (SessionRefused, RetryLater, OSError, httpx.TransportError):
            raise
        except Exception as exc:  # an SDP or ICE failure on a half-dead server
            raise RetryLater(f"opening the connection: {exc!r}") from exc

    async def send_json(self, obj: Any) -> None:
        assert self._channel is not None
        if not self.reconnect:
            self._channel.send(json.dumps(obj))
            return
        with contextlib.suppress(Exception):  # between connections: lost, like the audio
            self._channel.send(json.dumps(obj))
