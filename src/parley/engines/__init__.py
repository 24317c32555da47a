"""Engines: STT, LLM, TTS, VAD and end-of-turn, each a small protocol with implementations."""

from parley.engines.base import (
    ChatMessage,
    EndOfTurnModel,
    EngineError,
    LanguageModel,
    SpeechToText,
    TextEndOfTurnModel,
    TextToSpeech,
    Transcript,
    VADStream,
    VoiceActivityDetector,
)
from parley.engines.loader import Engines, load_engines

__all__ = [
    "ChatMessage",
    "EndOfTurnModel",
    "EngineError",
    "Engines",
    "LanguageModel",
    "SpeechToText",
    "TextEndOfTurnModel",
    "TextToSpeech",
    "Transcript",
    "VADStream",
    "VoiceActivityDetector",
    "load_engines",
]
