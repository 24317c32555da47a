"""Where WebRTC audio spends its time, hop by hop, in both directions.

Two aiortc peers in one process, joined over real UDP on 127.0.0.1 and carrying Parley's
real tracks: the agent's voice (``AgentAudioTrack`` fed by the voice loop's own
``AudioPlayout``) towards the client, the client's microphone (``WebRTCCallClient``'s
track, fed by ``CallClient.say``) towards the server. A 100 ms tone is played every
0.6 s each way, and each is stamped at every hop (all on one monotonic clock):

- ``queued``: the playout sends its first frame / the microphone frame's send time;
- ``pulled``: aiortc's sender takes that frame from the track (to encode it);
- ``on_wire``: the first RTP packet labelled loud (RFC 6465 audio level, which aiortc
  computes from the frame it encodes) reaches the receiver's jitter buffer;
- ``released``: the jitter buffer hands that packet to the decoder;
- ``heard``: the decoded, resampled audio is loud where the application reads it.

``released -> heard`` includes any frame the encoder held back: a packet is labelled with
the frame given to the encoder, but carries the audio the encoder had buffered.

``--path before`` rebuilds the media path as it was before issue 9 item 5 (16 kHz frames
into aiortc's encoder, aiortc's jitter buffer with 1 frame of prefetch at the server and
its default 4 at the client) to show what each change took away; ``--path now`` (the
default) is the shipped one. Prints a table; ``--json`` writes the figures too.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError

from parley.audio.pcm import FRAME_SAMPLES, SAMPLE_RATE
from parley.client import CallClient
from parley.transports.webrtc.jitter import AudioJitterBuffer
from parley.transports.webrtc.tracks import AgentAudioTrack, InboundResampler, pcm_frame
from parley.voice.playout import AudioPlayout
from parley.webrtc_client import _MicrophoneTrack

HOPS = ["queued", "pulled", "on_wire", "released", "heard"]
LOUD_DBOV = 40  # RFC 6465 levels are -dBov: under 40 is louder than -40 dBov
LOUD_SAMPLE = 1000
TONE_SECS = 0.1
PERIOD_SECS = 0.6
RECEIVER_BUFFER = "_RTCRtpReceiver__jitter_buffer"


def tone() -> np.ndarray:
    t = np.arange(int(TONE_SECS * SAMPLE_RATE)) / SAMPLE_RATE
    return (np.sin(2 * np.pi * 440 * t) * 10_000).astype("<i2")


def loud(pcm: bytes) -> bool:
    return bool(np.abs(np.frombuffer(pcm, dtype="<i2")).max(initial=0) > LOUD_SAMPLE)


@dataclass
class Direction:
    """The stamps of one direction: each hop's loud moments, in order."""

    name: str
    stamps: dict[str, list[float]] = field(default_factory=lambda: {h: [] for h in HOPS})

    def mark(self, hop: str, at: float) -> None:
        self.stamps[hop].append(at)

    def rows(self) -> list[dict[str, float]]:
        """Per tone: each hop's first stamp at or after the previous hop's."""
        out = []
        for start in self.stamps["queued"]:
            row = {"queued": start}
            for hop in HOPS[1:]:
                later = [t for t in self.stamps[hop] if t >= row[HOPS[HOPS.index(hop) - 1]]]
                if not later or later[0] - start > PERIOD_SECS:
                    break
                row[hop] = later[0]
            if len(row) == len(HOPS):
                out.append(row)
        return out


def stamped_buffer(base: type[JitterBuffer], direction: Direction, **kwargs: Any) -> JitterBuffer:
    """A jitter buffer of class ``base`` that stamps loud packets in and out."""

    class Stamped(base):  # type: ignore[valid-type,misc]
        def __init__(self) -> None:
            super().__init__(**kwargs)
            self._loud: set[int] = set()
            self._last_loud = False

        def add(self, packet: Any) -> Any:
            now = asyncio.get_running_loop().time()
            level = packet.extensions.audio_level
            is_loud = level is not None and level[1] < LOUD_DBOV
            if is_loud:
                self._loud.add(packet.timestamp)
                if not self._last_loud:
                    direction.mark("on_wire", now)
            self._last_loud = is_loud
            pli, frame = super().add(packet)
            if frame is not None and frame.timestamp in self._loud:
                self._loud.discard(frame.timestamp)
                direction.mark("released", now)
            return pli, frame

    return Stamped()


def use_buffer(pc: RTCPeerConnection, track: MediaStreamTrack, buffer: JitterBuffer) -> None:
    for transceiver in pc.getTransceivers():
        if transceiver.receiver.track is track:
            setattr(transceiver.receiver, RECEIVER_BUFFER, buffer)


class Track16k(MediaStreamTrack):
    """The outbound track as it was before: 16 kHz frames handed to aiortc's encoder."""

    kind = "audio"

    def __init__(self, next_frame: Callable[[float], bytes]) -> None:
        super().__init__()
        self._next_frame = next_frame
        self._start: float | None = None
        self._pts = 0

    async def recv(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        else:
            self._pts += FRAME_SAMPLES
            await asyncio.sleep(max(0.0, self._start + self._pts / SAMPLE_RATE - loop.time()))
        return pcm_frame(self._next_frame(loop.time()), self._pts)


def stamp_pulls(track: MediaStreamTrack, direction: Direction) -> None:
    """Stamp ``pulled`` when the sender takes a loud frame from ``track``."""
    recv = track.recv
    was_loud = False

    async def stamped() -> Any:
        nonlocal was_loud
        frame = await recv()
        is_loud = bool(np.abs(frame.to_ndarray()).max(initial=0) > LOUD_SAMPLE)
        if is_loud and not was_loud:
            direction.mark("pulled", asyncio.get_running_loop().time())
        was_loud = is_loud
        return frame

    track.recv = stamped  # type: ignore[method-assign]


async def listen(track: MediaStreamTrack, direction: Direction) -> None:
    resampler = InboundResampler()
    was_loud = False
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        is_loud = loud(resampler.convert(frame))
        if is_loud and not was_loud:
            direction.mark("heard", asyncio.get_running_loop().time())
        was_loud = is_loud


class _Sink:
    def __init__(self, push: Callable[[bytes], None]) -> None:
        self.push = push

    def send_audio(self, pcm: bytes) -> None:
        self.push(pcm)

    def send_event(self, event: Any) -> None:  # pragma: no cover - not used
        pass

    def clear_audio(self) -> None:  # pragma: no cover - not used
        pass


async def run(path: str, tones: int) -> dict[str, Direction]:
    out, inn = Direction("agent -> caller"), Direction("caller -> agent")
    server, client = RTCPeerConnection(), RTCPeerConnection()
    caller = CallClient(url="unused")
    agent_frames: list[bytes] = []
    if path == "now":
        agent_track: MediaStreamTrack = AgentAudioTrack()
        push = agent_track.push  # type: ignore[attr-defined]
        mic: MediaStreamTrack = _MicrophoneTrack(caller)
    else:
        agent_track = Track16k(lambda now: agent_frames.pop(0) if agent_frames else bytes(640))
        push = agent_frames.append
        mic = Track16k(caller.next_mic_frame)
    stamp_pulls(agent_track, out)
    stamp_pulls(mic, inn)
    playout = AudioPlayout(_Sink(push), lead_secs=0.08)  # type: ignore[arg-type]
    tasks: list[asyncio.Task[None]] = []

    def on_track(pc: RTCPeerConnection, direction: Direction, prefetch: int) -> Any:
        def handler(track: MediaStreamTrack) -> None:
            if path == "now":
                buffer = stamped_buffer(AudioJitterBuffer, direction, lost_after=2)
            else:
                buffer = stamped_buffer(JitterBuffer, direction, capacity=16, prefetch=prefetch)
            use_buffer(pc, track, buffer)
            tasks.append(asyncio.ensure_future(listen(track, direction)))

        return handler

    server.on("track", on_track(server, inn, 1))
    client.on("track", on_track(client, out, 4))
    client.addTrack(mic)
    await client.setLocalDescription(await client.createOffer())
    await server.setRemoteDescription(client.localDescription)
    server.addTrack(agent_track)
    await server.setLocalDescription(await server.createAnswer())
    await client.setRemoteDescription(server.localDescription)
    await asyncio.sleep(1.0)  # connected, codecs warm

    sound = tone()
    mic_sends: list[asyncio.Future[float]] = []
    for _ in range(tones):
        mic_sends.append(caller.say_timed(sound)[0])
        await asyncio.sleep(PERIOD_SECS / 2)
        playout.first_frame_at = None
        await playout.play("tone", sound)
        await playout.finish()
        assert playout.first_frame_at is not None
        out.mark("queued", playout.first_frame_at)
        await asyncio.sleep(max(0.0, PERIOD_SECS / 2 - TONE_SECS))
    await asyncio.sleep(0.5)
    inn.stamps["queued"] = [f.result() for f in mic_sends if f.done()]
    for task in tasks:
        task.cancel()
    await server.close()
    await client.close()
    return {"agent -> caller": out, "caller -> agent": inn}


def summarize(direction: Direction) -> dict[str, Any]:
    rows = direction.rows()
    figures: dict[str, Any] = {"tones": len(rows)}
    for a, b in itertools.pairwise(HOPS):
        figures[f"{a} -> {b}"] = round(statistics.median(r[b] - r[a] for r in rows) * 1000, 1)
    figures["total"] = round(statistics.median(r["heard"] - r["queued"] for r in rows) * 1000, 1)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", choices=["now", "before"], default="now")
    parser.add_argument("--tones", type=int, default=20)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    directions = asyncio.run(run(args.path, args.tones))
    figures = {name: summarize(d) for name, d in directions.items()}
    print(f"WebRTC media path ({args.path}), median ms per hop over {args.tones} tones each way")
    for name, f in figures.items():
        hops = "  ".join(f"{k} {v}" for k, v in f.items() if k not in ("tones", "total"))
        print(f"  {name:16} total {f['total']:6} ms  ({f['tones']} tones)  {hops}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"path": args.path, "median_ms": figures}, fh, indent=2)
    if any(f["tones"] < args.tones // 2 for f in figures.values()):
        sys.exit("fewer than half of the tones were traced through every hop")


if __name__ == "__main__":
    main()
