"""Audio primitives shared by every layer: frames, PCM conversion, levels, WAV files."""

from parley.audio.pcm import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    AudioFrame,
    dbfs,
    float_to_pcm16,
    pcm16_to_float,
    resample,
    trim_leading_silence,
)
from parley.audio.wav import read_wav, write_wav

__all__ = [
    "FRAME_SAMPLES",
    "SAMPLE_RATE",
    "AudioFrame",
    "dbfs",
    "float_to_pcm16",
    "pcm16_to_float",
    "read_wav",
    "resample",
    "trim_leading_silence",
    "write_wav",
]
