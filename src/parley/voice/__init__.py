"""The voice loop: one VoiceSession per conversation."""

from parley.voice.session import VoiceSession

__all__ = ["VoiceSession"]
