"""Silero VAD v6 (ONNX) on onnxruntime; the model file ships inside the faster-whisper wheel."""

from __future__ import annotations

import time
import weakref
from importlib import resources
from pathlib import Path

import numpy as np

from parley.engines.batching import BatchingLane
from parley.engines.lanes import InferenceLane

WINDOW = 512  # samples at 16 kHz (32 ms): the window Silero v5/v6 is trained on
CONTEXT = 64  # samples of the previous window the model sees with each new one
LIVE_SECS = 1.0  # a stream without a window for this long is not a live session's


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
        path = str(model_path or default_model_path())
        batched = batched_model(path)
        # One call for every waiting window of every session when the graph could be made
        # to take a batch of streams; else one call per window (same probabilities).
        self._batched = batched is not None
        self._session = ort.InferenceSession(
            batched if batched is not None else path,
            sess_options=opts,
            providers=["CPUExecutionProvider"],
        )
        # Tiny per-window calls: one thread serves every session without queueing visibly.
        # They never stop (every window of every connection, speech or silence), so they
        # are not load that holds background work back.
        self._lane = InferenceLane("vad", 1, timeout=10.0, slow_secs=0.5, counts_as_load=False)
        # Windows that arrive while the lane works wait and then go to it together: one
        # hop to the thread (and one back) for every session's window of that moment, and
        # one inference over all of them (see :func:`batched_model`).
        self._batches: BatchingLane[tuple[SileroStream, np.ndarray], float] = BatchingLane(
            self._lane, self._run_batch
        )
        self._streams: weakref.WeakSet[SileroStream] = weakref.WeakSet()

    def stream(self) -> SileroStream:
        stream = SileroStream(self)
        self._streams.add(stream)
        return stream

    def live_streams(self) -> int:
        """Streams that had a window in the last second: the sessions whose audio flows
        (every live connection sends audio, silence included), whoever still holds a
        closed one."""
        since = time.monotonic() - LIVE_SECS
        return sum(1 for stream in list(self._streams) if stream._last_window >= since)

    def _run(
        self, window: np.ndarray, h: np.ndarray, c: np.ndarray
    ) -> tuple[float, np.ndarray, np.ndarray]:
        out, h, c = self._session.run(None, {"input": window[None, :], "h": h, "c": c})
        return float(out.reshape(-1)[0]), h, c

    async def _probability(self, stream: SileroStream, x: np.ndarray) -> float:
        return await self._batches.run((stream, x))

    def _run_batch(self, batch: list[tuple[SileroStream, np.ndarray]]) -> list[float]:
        # In the lane's thread; each stream has one window in flight at most (its audio
        # loop awaits it), so its state is not touched anywhere else meanwhile.
        if not self._batched:
            probs = []
            for stream, x in batch:
                prob, stream._h, stream._c = self._run(x, stream._h, stream._c)
                probs.append(prob)
            return probs
        out, h, c = self._session.run(
            None,
            {
                "input": np.stack([x for _, x in batch]),
                "h": np.concatenate([stream._h for stream, _ in batch], axis=1),
                "c": np.concatenate([stream._c for stream, _ in batch], axis=1),
            },
        )
        for i, (stream, _) in enumerate(batch):
            # Copies: a view would keep the whole batch's state array alive per stream.
            stream._h = h[:, i : i + 1].copy()
            stream._c = c[:, i : i + 1].copy()
        return [float(p) for p in out.reshape(-1)]

    def close(self) -> None:
        self._lane.shutdown()


def batched_model(path: str) -> bytes | None:
    """The Silero v6 graph made to run one window of each of many streams in one call,
    or None when ``path`` is not the graph this knows.

    As shipped, the model reads ``[seq_len, 576]`` as one stream's consecutive windows:
    the encoder turns each window into ``[128, 1]`` features (window by window: a window
    carries its own 64 samples of context), a Transpose makes them the LSTM's sequence
    ``[seq_len, batch=1, 128]``, and ``h``/``c`` are that one stream's ``[1, 1, 128]``.
    With the Transpose's ``perm`` from (0, 2, 1) to (2, 0, 1) the same rows become the
    LSTM's *batch* ``[1, B, 128]``: B streams, one step each, each with its own ``h``/``c``
    row (the LSTM's batch dimension, declared free here). The decoder after it is per
    position either way. Every stream's probability and state are the ones it gets alone
    (``tests/test_vad_batching.py`` compares them with the untouched model's)."""
    try:
        import onnx
    except ImportError:
        return None
    model = onnx.load(path)
    graph = model.graph
    transposes = [n for n in graph.node if n.op_type == "Transpose" and n.output]
    lstm = [n for n in graph.node if n.op_type == "LSTM"]
    if len(lstm) != 1 or lstm[0].input[0] not in {t.output[0] for t in transposes}:
        return None
    (to_lstm,) = [t for t in transposes if t.output[0] == lstm[0].input[0]]
    perms = [a for a in to_lstm.attribute if a.name == "perm"]
    if len(perms) != 1 or list(perms[0].ints) != [0, 2, 1]:
        return None
    perms[0].ints[:] = [2, 0, 1]
    states = {"h", "c", "hn", "cn"}
    found = 0
    for value in [*graph.input, *graph.output]:
        if value.name in states:
            dims = value.type.tensor_type.shape.dim
            if len(dims) != 3:
                return None
            dims[1].dim_param = "streams"
            found += 1
        elif value.name == "speech_probs":
            for dim in value.type.tensor_type.shape.dim:
                dim.dim_param = "streams"
    if found != len(states):
        return None
    del graph.value_info[:]  # shapes inferred for one stream; the runtime infers them anew
    return bytes(model.SerializeToString())


class SileroStream:
    window_samples = WINDOW

    def __init__(self, vad: SileroVAD) -> None:
        self._vad = vad
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._last_window = float("-inf")

    async def probability(self, window: np.ndarray) -> float:
        if window.shape != (WINDOW,):
            raise ValueError(f"VAD window must be {WINDOW} samples")
        self._last_window = time.monotonic()
        x = np.concatenate([self._context, window.astype(np.float32)])
        self._context = x[-CONTEXT:]
        return await self._vad._probability(self, x)
