"""End-of-turn detection with Smart Turn v3.2 (ONNX), shipped inside Parley's own package.

Only the model file is Smart Turn's; Parley's pipeline is its own. The model reads the last
8 s of the turn's audio as Whisper-style log-mel features and returns P(turn complete).
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np

from parley.engines import device
from parley.engines.batching import BatchingLane
from parley.engines.lanes import InferenceLane
from parley.engines.whisper_features import log_mel_features
from parley.telemetry import get_logger

log = get_logger(__name__)

WINDOW_SECS = 8
SAMPLE_RATE = 16_000
MAX_BATCH = 2
BATCH_GAIN = 0.9
"""A batch is worth its wait where it costs under this share of its calls one by one."""
CALIBRATION_ROUNDS = 3

MODEL_NAME = "smart-turn-v3.2-cpu.onnx"
# Copied byte for byte from the pipecat-ai 1.14.0 wheel (BSD-2-Clause, Daily; the licence
# travels beside it): no PyPI package ships the file alone, and depending on pipecat-ai
# for it would pull its whole dependency tree into every install.
PACKAGED_MODEL = Path(__file__).resolve().parent / "models" / "smart_turn" / MODEL_NAME
MODEL_IN_PIPECAT_WHEEL = f"audio/turn/smart_turn/data/{MODEL_NAME}"


def pipecat_model_path() -> Path | None:
    """The same file inside an installed pipecat-ai wheel, if there is one.

    ``importlib.resources.files("pipecat....data")`` would execute pipecat's package
    ``__init__``, which needs pipecat's whole dependency tree, so the file is found through
    the import system's spec of the top-level package, without running any of its code.
    """
    spec = importlib.util.find_spec("pipecat")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / MODEL_IN_PIPECAT_WHEEL
    return path if path.is_file() else None


def default_model_path() -> Path:
    """The model shipped in Parley's package; a pipecat-ai wheel's copy only as a fallback
    (for an install whose package data was stripped)."""
    if PACKAGED_MODEL.is_file():
        return PACKAGED_MODEL
    fallback = pipecat_model_path()
    if fallback is not None:
        return fallback
    raise FileNotFoundError(
        f"Smart Turn model not found at {PACKAGED_MODEL} (Parley's package data) "
        "nor in an installed pipecat-ai wheel: reinstall parley"
    )


def last_window(audio: np.ndarray) -> np.ndarray:
    """The last 8 s of audio, left-padded with zeros when shorter."""
    n = WINDOW_SECS * SAMPLE_RATE
    if audio.size >= n:
        return audio[-n:]
    return np.pad(audio, (n - audio.size, 0))


def batch_size(alone_secs: float, together_secs: float) -> int:
    """MAX_BATCH where a batch of it costs less than ``BATCH_GAIN`` of its calls one by
    one (``together_secs`` against ``alone_secs`` for one), else 1."""
    return MAX_BATCH if together_secs < BATCH_GAIN * MAX_BATCH * alone_secs else 1


class SmartTurn:
    def __init__(self, model_path: str | None = None, requested_device: str = "auto") -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.inter_op_num_threads = 1
        # One thread: the model runs beside the final transcription, which is on the
        # critical path to the first word of the reply; this only gates playback.
        opts.intra_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        self._session = ort.InferenceSession(
            str(model_path or default_model_path()),
            sess_options=opts,
            providers=device.onnx_providers(requested_device),
        )
        # What the session runs on, not what was asked: onnxruntime falls back to the
        # CPU when CUDA does not start.
        running = self._session.get_providers()[0]
        self.device = "cuda" if running == "CUDAExecutionProvider" else "cpu"
        self._lane = InferenceLane("eou", 1, timeout=10.0)
        # Sessions that pause at the same moment are scored in one inference where the
        # CPU does a batch for less: on an AMD EPYC core a batch of two costs ~45 ms a
        # turn against ~56 ms alone, and the second does not wait for the first's whole
        # call. Two at most: four save nothing more per turn (45 ms), make the batch's
        # first turn wait for all four, and grow onnxruntime's memory arena by ~40 MB
        # more. On an Intel Xeon (AVX-512) two cost 49 ms a turn against 48 alone: there
        # a batch only makes its first turn wait for the second, so calls go one by one.
        self.max_batch = self._batch_size()
        log.info("smart turn batches", max_batch=self.max_batch)
        self._batches: BatchingLane[np.ndarray, float] = BatchingLane(
            self._lane, self._predict_batch, max_batch=self.max_batch
        )

    def _batch_size(self) -> int:
        """Time one window alone and MAX_BATCH together (interleaved, the fastest of a
        few rounds: a machine busy at start-up slows some, never speeds any up)."""
        one = log_mel_features(last_window(np.zeros(0, dtype=np.float32)))[None]
        together = np.repeat(one, MAX_BATCH, axis=0)

        def secs(features: np.ndarray) -> float:
            start = time.perf_counter()
            self._session.run(None, {"input_features": features})
            return time.perf_counter() - start

        secs(one), secs(together)  # the first runs allocate
        rounds = [(secs(one), secs(together)) for _ in range(CALIBRATION_ROUNDS)]
        return batch_size(min(a for a, _ in rounds), min(b for _, b in rounds))

    def _predict_batch(self, audios: list[np.ndarray]) -> list[float]:
        features = np.stack(
            [log_mel_features(last_window(audio.astype(np.float32))) for audio in audios]
        )
        (out,) = self._session.run(None, {"input_features": features})[:1]
        return [float(p) for p in np.asarray(out).reshape(len(audios), -1)[:, 0]]

    async def completion_probability(self, audio: np.ndarray) -> float:
        return await self._batches.run(audio)

    def close(self) -> None:
        self._lane.shutdown()
