"""Speech segmentation: VAD probabilities in, speech start/stop decisions out.

Pure logic over audio time (no clocks, no I/O), so it is exactly testable.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from parley.config import VADSettings


class SpeechEdge(Enum):
    STARTED = "started"
    STOPPED = "stopped"


@dataclass
class SpeechSegmenter:
    settings: VADSettings
    window_secs: float

    speaking: bool = False
    _run_secs: float = 0.0  # how long the current (non-)speech run has lasted
    speech_secs: float = 0.0  # length of the current segment's speech so far
    trailing_silence_secs: float = 0.0

    def update(self, probability: float) -> SpeechEdge | None:
        if not self.speaking:
            if probability >= self.settings.threshold:
                self._run_secs += self.window_secs
                if self._run_secs >= self.settings.start_secs:
                    self.speaking = True
                    self.speech_secs = self._run_secs
                    self.trailing_silence_secs = 0.0
                    self._run_secs = 0.0
                    return SpeechEdge.STARTED
            else:
                self._run_secs = 0.0
            return None
        # Hysteresis: once speaking, a lower probability still counts as speech.
        self.speech_secs += self.window_secs
        if probability >= self.settings.threshold - 0.15:
            self.trailing_silence_secs = 0.0
            return None
        self.trailing_silence_secs += self.window_secs
        if self.trailing_silence_secs >= self.settings.stop_secs:
            self.speaking = False
            self.speech_secs -= self.trailing_silence_secs
            return SpeechEdge.STOPPED
        return None
