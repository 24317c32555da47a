"""A supervisor listening in over WebRTC: the caller and the agent mixed on one outbound
track, and the supervisor's microphone inbound, forwarded to the caller only while this
supervisor has taken the conversation over (the hub checks who holds it)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription

from parley.audio.pcm import FRAME_SAMPLES, SAMPLE_RATE
from parley.telemetry import get_logger
from parley.transports.supervision import SupervisionHub, Supervisor
from parley.transports.webrtc.peer import ice_configuration
from parley.transports.webrtc.tracks import AgentAudioTrack, pcm_from

log = get_logger(__name__)

MAX_BUFFER_SECS = 0.5
"""Audio a listener is behind by at most: older audio is dropped (live, not a recording)."""
FRAME_BYTES = FRAME_SAMPLES * 2


class ListenTrack(AgentAudioTrack):
    """The caller's and the agent's audio (16 kHz, pushed as they pass) mixed into one
    real-time track, paced as the agent's own track is. Each side has its own short
    buffer: the caller's audio arrives as it is captured, the agent's a little ahead of
    real time; mixing 20 ms of each per frame keeps both in step."""

    def __init__(self) -> None:
        super().__init__()
        self._sides: dict[str, bytearray] = {"caller": bytearray(), "agent": bytearray()}

    def push_side(self, side: str, pcm: bytes) -> None:
        buffer = self._sides.get(side)
        if buffer is None:
            return
        buffer += pcm
        excess = len(buffer) - int(MAX_BUFFER_SECS * SAMPLE_RATE) * 2
        if excess > 0:
            del buffer[: excess + (excess % 2)]

    def _mixed_frame(self) -> bytes:
        mix = np.zeros(FRAME_SAMPLES, np.int32)
        for buffer in self._sides.values():
            take = bytes(buffer[:FRAME_BYTES])
            del buffer[:FRAME_BYTES]
            if len(take) >= 2:
                samples = np.frombuffer(take[: len(take) // 2 * 2], "<i2")
                mix[: samples.size] += samples
        return np.clip(mix, -32768, 32767).astype("<i2").tobytes()

    async def recv(self) -> av.AudioFrame:
        self.push(self._mixed_frame())
        return await super().recv()


class ListenPeer:
    """One supervisor's WebRTC connection to one session."""

    def __init__(self, app: Any, hub: SupervisionHub, session_id: str, who: Supervisor) -> None:
        self.app = app
        self.hub = hub
        self.session_id = session_id
        self.who = who
        self.pc = RTCPeerConnection(ice_configuration(app.state.settings.webrtc))
        self.track = ListenTrack()
        self._stop_listening: Callable[[], None] | None = None
        self._forget: Callable[[], None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.closed = False
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_connection_state)

    async def answer(self, sdp: str) -> RTCSessionDescription:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        if not any(t.kind == "audio" for t in self.pc.getTransceivers()):
            raise ValueError("the offer has no audio section")
        self.pc.addTrack(self.track)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        stop = self.hub.listen(self.session_id, self.track.push_side)
        if stop is None:
            raise LookupError("the session is not live")
        self._stop_listening = stop
        # The call ends (here or on another process): so does listening to it.
        self._forget = self.hub.on_gone(self.session_id, self._session_gone)
        description = self.pc.localDescription
        assert description is not None
        return description

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            task = asyncio.ensure_future(self._pump_microphone(track))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump_microphone(self, track: MediaStreamTrack) -> None:
        async for pcm in pcm_from(track):
            self.hub.human_audio(self.session_id, self.who.holder, pcm)

    def _session_gone(self) -> None:
        self._forget = None
        task = asyncio.ensure_future(self.close())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_connection_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            task = asyncio.ensure_future(self.close())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._stop_listening is not None:
            self._stop_listening()
        if self._forget is not None:
            self._forget()
        peers: dict[int, ListenPeer] = self.app.state.listen_peers
        peers.pop(id(self), None)
        self.track.stop()
        with contextlib.suppress(Exception):
            await self.pc.close()
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        log.info("supervisor stopped listening", by=self.who.by)
