"""The VAD serves many sessions' windows in one hop to its thread: each stream's
probabilities are exactly what it gets alone, whatever else shares the batch."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from parley.engines.vad_silero import WINDOW, SileroVAD
from parley.testing import caller_speech


def _windows(pcm: np.ndarray) -> list[np.ndarray]:
    audio = pcm.astype(np.float32) / 32768
    n = audio.size // WINDOW
    return [audio[i * WINDOW : (i + 1) * WINDOW] for i in range(n)]


@pytest.fixture(scope="module")
def vad() -> SileroVAD:
    model = SileroVAD()
    yield model
    model.close()


async def test_streams_sharing_a_batch_each_get_their_own_probabilities(vad: SileroVAD) -> None:
    clips = [
        _windows(caller_speech("What time do you open tomorrow")),
        _windows(caller_speech("Cancel my booking please", voice="en-us+f3")),
        [np.zeros(WINDOW, dtype=np.float32)] * 40,
    ]

    async def alone(windows: list[np.ndarray]) -> list[float]:
        stream = vad.stream()
        return [await stream.probability(w) for w in windows]

    expected = [await alone(w) for w in clips]
    # Now all at once: windows of the same moment go to the thread together.
    together = await asyncio.gather(*(alone(w) for w in clips))
    for got, want in zip(together, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert max(expected[0]) > 0.5 and max(expected[2]) < 0.1  # speech is heard, silence not


async def test_a_cancelled_caller_does_not_stall_the_others(vad: SileroVAD) -> None:
    window = np.zeros(WINDOW, dtype=np.float32)
    leaving = asyncio.ensure_future(vad.stream().probability(window))
    staying = asyncio.ensure_future(vad.stream().probability(window))
    leaving.cancel()
    assert 0.0 <= await asyncio.wait_for(staying, 5) <= 1.0
    # And the next call after it still runs.
    assert 0.0 <= await asyncio.wait_for(vad.stream().probability(window), 5) <= 1.0


def test_the_graph_runs_many_streams_in_one_call() -> None:
    # Not the per-window fallback: the shipped model is the graph batched_model knows.
    assert SileroVAD()._batched


async def test_streams_in_one_call_get_what_the_untouched_model_gives(vad: SileroVAD) -> None:
    """The batched graph against the model file as shipped, window by window: streams of
    different lengths (some leave the batch early), speech and silence."""
    import onnxruntime as ort

    from parley.engines.vad_silero import CONTEXT, default_model_path

    clips = [
        _windows(caller_speech("What time do you open tomorrow")),
        _windows(caller_speech("Cancel my booking please", voice="en-us+f3")),
        _windows(caller_speech("Yes")),
        [np.zeros(WINDOW, dtype=np.float32)] * 30,
    ]
    shipped = ort.InferenceSession(str(default_model_path()), providers=["CPUExecutionProvider"])

    def reference(windows: list[np.ndarray]) -> list[float]:
        h = np.zeros((1, 1, 128), dtype=np.float32)
        c = np.zeros((1, 1, 128), dtype=np.float32)
        context = np.zeros(CONTEXT, dtype=np.float32)
        probs = []
        for w in windows:
            x = np.concatenate([context, w])
            context = x[-CONTEXT:]
            out, h, c = shipped.run(None, {"input": x[None, :], "h": h, "c": c})
            probs.append(float(out.reshape(-1)[0]))
        return probs

    async def batched(windows: list[np.ndarray]) -> list[float]:
        stream = vad.stream()
        return [await stream.probability(w) for w in windows]

    got = await asyncio.gather(*(batched(w) for w in clips))
    for probs, windows in zip(got, clips, strict=True):
        np.testing.assert_allclose(probs, reference(windows), rtol=1e-5, atol=1e-6)


async def test_live_streams_are_those_with_audio_in_the_last_second() -> None:
    from parley.engines.vad_silero import LIVE_SECS

    vad = SileroVAD()  # its own: no other test's streams
    try:
        window = np.zeros(WINDOW, dtype=np.float32)
        a, b, idle = vad.stream(), vad.stream(), vad.stream()
        assert vad.live_streams() == 0
        await asyncio.gather(a.probability(window), b.probability(window))
        assert vad.live_streams() == 2  # not the stream that never had a window
        b._last_window -= LIVE_SECS + 0.1  # b's caller went quiet on the wire (or closed)
        assert vad.live_streams() == 1
        del idle
    finally:
        vad.close()
