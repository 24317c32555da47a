"""Silero VAD v6 (ONNX) on onnxruntime; the model file ships inside the faster-whisper wheel."""

from __future__ import annotations

import asyncio
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
        # They never stop (every window of every connection, speech or silence), so they
        # are not load that holds background work back.
        self._lane = InferenceLane("vad", 1, timeout=10.0, slow_secs=0.5, counts_as_load=False)
        # Windows that arrive while the lane works wait here and then go to it together:
        # one hop to the thread (and one back) for every session's window of that moment,
        # not one each. The model's state is per stream, so it cannot batch the inference
        # itself (its h/c are for one sequence): the windows run one after another.
        self._waiting: list[tuple[SileroStream, np.ndarray, asyncio.Future[float]]] = []
        self._draining: asyncio.Task[None] | None = None

    def stream(self) -> SileroStream:
        return SileroStream(self)

    def _run(
        self, window: np.ndarray, h: np.ndarray, c: np.ndarray
    ) -> tuple[float, np.ndarray, np.ndarray]:
        out, h, c = self._session.run(None, {"input": window[None, :], "h": h, "c": c})
        return float(out.reshape(-1)[0]), h, c

    async def _probability(self, stream: SileroStream, x: np.ndarray) -> float:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[float] = loop.create_future()
        self._waiting.append((stream, x, future))
        if self._draining is None:
            self._draining = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        """Run what waits, in batches, until nothing does."""
        try:
            while self._waiting:
                # Let the windows of this event-loop turn join the batch first.
                await asyncio.sleep(0)
                batch, self._waiting = self._waiting, []
                batch = [item for item in batch if not item[2].done()]
                if not batch:
                    continue
                try:
                    results = await self._lane.run(self._run_batch, batch)
                except BaseException as exc:
                    for _, _, future in batch:
                        if future.done():
                            continue
                        if isinstance(exc, asyncio.CancelledError):
                            future.cancel()
                        else:
                            future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, _, future), prob in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(prob)
        finally:
            self._draining = None

    def _run_batch(
        self, batch: list[tuple[SileroStream, np.ndarray, asyncio.Future[float]]]
    ) -> list[float]:
        # In the lane's thread; each stream has one window in flight at most (its audio
        # loop awaits it), so its state is not touched anywhere else meanwhile.
        probs = []
        for stream, x, _ in batch:
            prob, stream._h, stream._c = self._run(x, stream._h, stream._c)
            probs.append(prob)
        return probs

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
        return await self._vad._probability(self, x)
