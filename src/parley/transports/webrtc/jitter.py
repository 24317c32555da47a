"""A jitter buffer for Opus audio that hands each packet to the decoder as it arrives.

aiortc's :class:`~aiortc.jitterbuffer.JitterBuffer` was written for frames split over
several packets: it releases a frame only once a packet with the *next* timestamp is in,
then holds ``prefetch`` more (4 by default). For Opus, where every RTP packet is one whole
20 ms frame, that is 20 ms of waiting at best and 80 ms by default, at every turn's end
over WebRTC. The voice loop does not play what it receives to a speaker, so it has no
use for a playout cushion: it wants each frame the moment it exists.

This buffer releases the oldest packet as soon as everything before it has arrived. A
missing packet is waited for only while fewer than ``lost_after`` later packets are in;
then it is skipped as lost (Opus decodes the next frame on its own). At most
``max_backlog`` frames ever wait: after a loss, older frames are dropped rather than
carried as delay for the rest of the call (aiortc's buffer, after a loss, keeps every
later frame as that much more latency).
"""

from __future__ import annotations

from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket

CAPACITY = 16
"""Packets the buffer can hold (a power of two, as aiortc's requires)."""


class AudioJitterBuffer(JitterBuffer):
    """Drop-in for aiortc's audio jitter buffer (same ``add`` contract: one packet in,
    at most one frame out)."""

    def __init__(self, lost_after: int = 2, max_backlog: int = 3) -> None:
        super().__init__(capacity=CAPACITY, prefetch=0)
        if not 1 <= lost_after < CAPACITY or not 1 <= max_backlog < CAPACITY:
            raise ValueError("lost_after and max_backlog must be between 1 and 15")
        self.lost_after = lost_after
        self.max_backlog = max_backlog
        self.lost = 0
        """Packets given up on (never arrived, or arrived too late)."""
        self.dropped = 0
        """Frames that arrived but were dropped to keep the backlog bounded."""

    def _present(self) -> list[int]:
        """Offsets from the origin of the packets held, oldest first."""
        assert self._origin is not None
        return [
            count
            for count in range(self.capacity)
            if self._packets[(self._origin + count) % self.capacity] is not None
        ]

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        present = self._present()
        if not present:
            return None
        first = present[0]
        if first > 0 and len(present) < self.lost_after:
            return None  # a packet before these may still come: wait a little
        self.lost += first
        excess = len(present) - self.max_backlog
        if excess > 0:
            # Late audio is worth less than current audio: skip the oldest frames.
            first = present[excess]
            self.dropped += excess
        assert self._origin is not None
        packet: RtpPacket | None = self._packets[(self._origin + first) % self.capacity]
        assert packet is not None
        self.remove(first + 1)
        return JitterFrame(data=packet._data, timestamp=packet.timestamp)  # type: ignore[attr-defined]


_RECEIVER_ATTRIBUTE = "_RTCRtpReceiver__jitter_buffer"  # aiortc 1.16's private name


def use_audio_jitter_buffer(
    pc: RTCPeerConnection, track: MediaStreamTrack, lost_after: int
) -> bool:
    """Swap the jitter buffer of the receiver of ``track`` for an :class:`AudioJitterBuffer`.

    aiortc offers no setting for it; when the remote track is announced its receiver is
    not yet receiving, so the (private) buffer can still be replaced. False if this aiortc
    version does not have it where expected (aiortc's own buffer then stays)."""
    for transceiver in pc.getTransceivers():
        receiver = transceiver.receiver
        if receiver.track is track and hasattr(receiver, _RECEIVER_ATTRIBUTE):
            setattr(receiver, _RECEIVER_ATTRIBUTE, AudioJitterBuffer(lost_after=lost_after))
            return True
    return False
