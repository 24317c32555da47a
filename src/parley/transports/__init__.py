"""Transports: turn a wire format into AudioFrames and control events for a VoiceSession."""
