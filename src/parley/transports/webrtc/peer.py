"""One browser (or other WebRTC client) connected to one Parley session."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from parley.config import WebRTCSettings
from parley.telemetry import get_logger
from parley.transports.control import apply_control
from parley.transports.voice_runtime import (
    END_REASONS,
    LiveSession,
    open_voice_session,
    taken_over_event,
)
from parley.transports.webrtc.jitter import use_audio_jitter_buffer
from parley.transports.webrtc.tracks import AgentAudioTrack, InboundResampler
from parley.voice.events import Event, event
from parley.voice.session import AudioTooFast, SessionOverloaded, VoiceSession

log = get_logger(__name__)

CHANNEL_LABEL = "parley"
OPEN_DEADLINE_SECS = 30.0
MAX_CHANNEL_BUFFER = 4 * 1024 * 1024
"""Bytes of events the client has not taken yet: above it the client is not reading."""
LINGER_SECS = 0.2
"""How long a last event (a goodbye, an error) is given to leave before a close: aiortc
queues data channel messages and would otherwise reset the stream ahead of them."""


def ice_configuration(settings: WebRTCSettings) -> RTCConfiguration:
    # An empty list, not None: aiortc would otherwise reach out to a public STUN server.
    servers = [
        RTCIceServer(
            urls=s.urls,
            username=s.username,
            credential=s.credential.get_secret_value() if s.credential else None,
        )
        for s in settings.ice_servers
    ]
    return RTCConfiguration(iceServers=servers)


class DataChannelSink:
    """The voice session's SessionSink: events over the data channel (held until it
    opens), audio into the outbound track."""

    def __init__(self, track: AgentAudioTrack, on_overflow: Any) -> None:
        self.track = track
        self.channel: RTCDataChannel | None = None
        self._pending: list[str] = []
        self._on_overflow = on_overflow

    def attach(self, channel: RTCDataChannel) -> None:
        self.channel = channel
        for message in self._pending:
            channel.send(message)
        self._pending.clear()

    def send_event(self, event: Event) -> None:
        message = json.dumps(event)
        if self.channel is None or self.channel.readyState != "open":
            self._pending.append(message)
            return
        if self.channel.bufferedAmount > MAX_CHANNEL_BUFFER:
            self._on_overflow()
            return
        self.channel.send(message)

    def send_audio(self, pcm: bytes) -> None:
        self.track.push(pcm)

    def clear_audio(self) -> None:
        self.track.clear()


class WebRTCPeer:
    """An RTCPeerConnection bound to a session: the remote microphone track feeds the
    voice loop, the agent's voice goes out on :class:`AgentAudioTrack`, and the ``parley``
    data channel carries events and control messages. The voice session starts when the
    data channel opens (so the client sees every event, the greeting's included) and ends
    when the channel or the connection closes. A connection has one ``parley`` channel:
    a second one is answered with an ``error`` (``duplicate_channel``) and closed."""

    def __init__(self, app: Any, session_id: str) -> None:
        self.app = app
        self.session_id = session_id
        self.pc = RTCPeerConnection(ice_configuration(app.state.settings.webrtc))
        self.track = AgentAudioTrack()
        self.sink = DataChannelSink(self.track, self._overflowed)
        self.live: LiveSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()
        self.pc.on("track", self._on_track)
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("connectionstatechange", self._on_connection_state)

    async def answer(self, sdp: str) -> RTCSessionDescription:
        """Apply the client's offer; the answer carries every host candidate (aiortc
        gathers them all before answering: no trickle ICE to signal afterwards)."""
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        if not any(t.kind == "audio" for t in self.pc.getTransceivers()):
            raise ValueError("the offer has no audio section")
        self.pc.addTrack(self.track)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        description = self.pc.localDescription
        assert description is not None
        self._spawn(self._expire_if_never_opened(), "webrtc-open-deadline")
        return description

    @property
    def session(self) -> VoiceSession | None:
        """The voice session, while it runs (not before the channel opens, nor once it is
        closing)."""
        if self.live is None or self.live.closing:
            return None
        return self.live.session

    async def _expire_if_never_opened(self) -> None:
        # A client that took the answer and never connected must not hold a slot.
        await asyncio.sleep(OPEN_DEADLINE_SECS)
        if self.live is None:
            await self.close("the data channel never opened")

    # ---- aiortc callbacks ----------------------------------------------------------------

    def _spawn(self, coro: Any, name: str, *, vital: bool = False) -> None:
        """Run ``coro`` for this connection. A failure is logged; a ``vital`` task's (the
        session's start, the microphone) also ends the connection, after an ``error``
        event: a session that cannot hear must not run on deaf."""
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda t: self._task_done(t, vital))

    def _task_done(self, task: asyncio.Task[Any], vital: bool) -> None:
        if task.cancelled() or task.exception() is None:
            return
        failure = task.exception()
        log.error("webrtc task failed", task=task.get_name(), error=repr(failure), exc_info=failure)
        if vital and not self.closed.is_set():
            self.sink.send_event(
                event(
                    "error",
                    code="internal_error",
                    message=f"the server failed ({task.get_name()}: {type(failure).__name__}); "
                    "this connection is closed, reconnect to resume the session",
                )
            )
            self.close_soon(f"{task.get_name()} failed", linger=True, end="error")

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._tune_jitter_buffer(track)
            self._spawn(self._pump_microphone(track), "webrtc-mic", vital=True)

    def _tune_jitter_buffer(self, track: MediaStreamTrack) -> None:
        """Each microphone frame goes to the voice loop as it arrives (aiortc's own
        buffer holds 80 ms: see :mod:`parley.transports.webrtc.jitter`)."""
        lost_after = self.app.state.settings.webrtc.jitter_lost_after_frames
        if not use_audio_jitter_buffer(self.pc, track, lost_after):
            log.warning("cannot tune the jitter buffer of this aiortc version")

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label != CHANNEL_LABEL:
            return
        if self.sink.channel is not None:
            # One connection, one voice session: a second channel would start another
            # session on the same audio (and the first one would be left running).
            log.warning("refused a second parley data channel")
            self._spawn(self._refuse_channel(channel), "webrtc-refuse-channel")
            return
        channel.on("message", self._on_message)
        channel.on("close", lambda: self.close_soon("data channel closed"))
        self.sink.attach(channel)
        self._spawn(self._start_session(), "webrtc-session", vital=True)

    def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        log.info("webrtc connection state", state=state)
        if state in ("failed", "closed"):
            self.close_soon(f"connection {state}")

    def _on_message(self, message: str | bytes) -> None:
        if self.session is None:
            return
        if isinstance(message, bytes):
            self.sink.send_event(
                event("error", code="invalid_message", message="control messages are text")
            )
            return
        limit = self.app.state.settings.server.max_text_message_bytes
        if apply_control(self.session, message, limit) == "end":
            self._spawn(self._end(), "webrtc-end")

    async def _refuse_channel(self, channel: RTCDataChannel) -> None:
        refusal = event(
            "error",
            code="duplicate_channel",
            message=f"this connection already has a {CHANNEL_LABEL!r} data channel; "
            "only one is allowed and this one is closed",
        )
        if channel.readyState != "open":
            opened = asyncio.Event()
            channel.on("open", opened.set)
            await asyncio.wait_for(opened.wait(), OPEN_DEADLINE_SECS)
        channel.send(json.dumps(refusal))
        await asyncio.sleep(LINGER_SECS)
        channel.close()

    # ---- the session -----------------------------------------------------------------------

    async def _start_session(self) -> None:
        live = await open_voice_session(
            self.app, self.session_id, self.sink, self.take_over, "webrtc"
        )
        self.live = live
        # A session limit reached (idle, maximum age, deaf): close the way the peer closes.
        live.on_expired = lambda code, _close_code: self.close_soon(
            code, linger=True, end=code if code in END_REASONS else "error"
        )
        if self.closed.is_set() or self._closing is not None:
            await live.close()
            return
        await live.session.start()
        log.info("webrtc session opened")
        self._spawn(self._report_inbound_stats(), "webrtc-stats")

    async def _report_inbound_stats(self) -> None:
        """The microphone stream's RTP statistics, every ``webrtc.stats_interval_secs``,
        to the timeline (where the metrics observer counts them)."""
        interval = self.app.state.settings.webrtc.stats_interval_secs
        while True:
            await asyncio.sleep(interval)
            session = self.session
            if session is None or session.recorder is None:
                return
            for stats in (await self.pc.getStats()).values():
                if getattr(stats, "type", None) == "inbound-rtp" and stats.kind == "audio":
                    session.recorder.event(
                        "webrtc.inbound_stats",
                        None,
                        {
                            "packets_received": stats.packetsReceived,
                            "packets_lost": stats.packetsLost,
                            # aiortc reports jitter in RTP clock units (Opus: 48 kHz).
                            "jitter_ms": round(stats.jitter / 48, 1),
                        },
                    )

    def take_over(self) -> None:
        """A newer connection takes this session: tell the client, then close."""
        if self._closing is not None or self.closed.is_set():
            return  # already told (a new offer, then its channel opening) or going anyway
        log.info("webrtc connection taken over")
        self.sink.send_event(taken_over_event())
        self.close_soon("taken over by a newer connection", linger=True, end="taken_over")

    async def _pump_microphone(self, track: MediaStreamTrack) -> None:
        resampler = InboundResampler()
        overloaded = False
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if self.session is None:
                continue  # before the data channel opens there is no one to answer
            pcm = resampler.convert(frame)
            if not pcm:
                continue
            try:
                self.session.push_audio(pcm)
                overloaded = False
            except AudioTooFast as exc:
                if exc.first:
                    self.sink.send_event(event("error", code="audio_too_fast", message=str(exc)))
                if exc.persistent:
                    self.close_soon("audio too fast", linger=True, end="audio_too_fast")
                    return
            except SessionOverloaded as exc:
                if not overloaded:  # once per episode, not per 20 ms frame
                    self.sink.send_event(event("error", code="overloaded", message=str(exc)))
                overloaded = True

    async def _end(self) -> None:
        await asyncio.sleep(LINGER_SECS)  # let the goodbye event leave
        await self.close("client ended the session", end="client_ended")

    def _overflowed(self) -> None:
        log.warning("closing: client stopped reading its data channel")
        self.close_soon("client not reading", end="error")

    def close_soon(self, reason: str, *, linger: bool = False, end: str = "disconnected") -> None:
        if self._closing is None and not self.closed.is_set():
            self._closing = asyncio.ensure_future(self._close_after(reason, linger, end))

    async def _close_after(self, reason: str, linger: bool, end: str) -> None:
        if linger:
            await asyncio.sleep(LINGER_SECS)
        await self.close(reason, end)

    async def close(self, reason: str = "closed", end: str = "disconnected") -> None:
        """``reason`` is for the log; ``end`` is one of voice_runtime.END_REASONS."""
        if self.closed.is_set():
            return
        self.closed.set()
        log.info("webrtc session closing", reason=reason)
        peers: dict[str, WebRTCPeer] = self.app.state.webrtc_peers
        if peers.get(self.session_id) is self:
            del peers[self.session_id]
        if self.live is not None:
            # A connection lost (not ended) keeps its place a moment for the caller's
            # reconnect; before the close, which waits on the database.
            self.app.state.admission.left(
                self.session_id, dropped=end == "error" or reason == "connection failed"
            )
            await self.live.close(end)
        self.track.stop()
        with contextlib.suppress(Exception):
            await self.pc.close()
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
