"""WebRTC transport (aiortc): Opus audio both ways, resampled to and from the voice loop's
16 kHz, and a data channel carrying the same JSON events and control messages as the
WebSocket transport. Its signalling (one HTTP exchange authorised by the session token)
is in :mod:`parley.server.webrtc_api`."""

from parley.transports.webrtc.peer import WebRTCPeer

__all__ = ["WebRTCPeer"]
