"""Silero VAD v6 (ONNX) on onnxruntime; the model file ships inside the faster-whisper wheel."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from parley.engines.lanes import InferenceLane

WINDOW = 512  # samples at 16 kHz (32 ms): the window Silero v5/v6 is trained on
CONTEXT = 64  # samples of the previous window the model sees with each new one


def default_model_path() -> Path:
    return Path(str(resources.files("faster_whisper.assets").joinpath("silero_vad_v6.onnx")))


class SileroVAD:
    """Shared model; each session gets a :class:`SileroStream` holding its own LSTM state."""

    def __init__(self, model_path: str | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3
        self._session = ort.InferenceSession(
            str(model_path or default_model_path()),
            sess_options=opts,
            providers=["CPUExecutionProvider"],
        )
        # Tiny per-window calls: one thread serves every session without queueing visibly.
        self._lane = InferenceLane("vad", 1, timeout=10.0, slow_secs=0.5)

    def stream(self) -> SileroStream:
        return SileroStream(self)

    def _run(
        self, window: np.ndarray, h: np.ndarray, c: np.ndarray
    ) -> tuple[float, np.ndarray, np.ndarray]:
        out, h, c = self._session.run(None, {"input": window[None, :], "h": h, "c": c})
        return float(out.reshape(-1)[0]), h, c

    def close(self) -> None:
        self._lane.shutdown()


class SileroStream:
    window_samples = WINDOW

    def __init__(self, vad: SileroVAD) -> None:
        self._vad = vad
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)

    async def probability(self, window: np.ndarray) -> float:
        if window.shape != (WINDOW,):
            raise ValueError(f"VAD window must be {WINDOW} samples")
        x = np.concatenate([self._context, window.astype(np.float32)])
        self._context = x[-CONTEXT:]
        prob, self._h, self._c = await self._vad._lane.run(self._vad._run, x, self._h, self._c)
        return prob
