import asyncio

import numpy as np

from parley.config import TurnSettings, VADSettings
from parley.voice.endpointing import ends_with_dangling_word
from parley.voice.playout import AudioPlayout
from parley.voice.segmenter import SpeechEdge, SpeechSegmenter

W = 0.032


def run(probs: list[float], **kw: float) -> list[tuple[int, SpeechEdge]]:
    seg = SpeechSegmenter(VADSettings(**kw), W)
    return [(i, e) for i, p in enumerate(probs) if (e := seg.update(p)) is not None]


def test_speech_starts_after_start_secs_and_stops_after_stop_secs():
    probs = [0.1] * 3 + [0.9] * 10 + [0.1] * 10
    edges = run(probs, start_secs=0.064, stop_secs=0.16)
    assert edges == [(4, SpeechEdge.STARTED), (17, SpeechEdge.STOPPED)]


def test_a_single_spike_is_not_speech():
    assert run([0.1, 0.9, 0.1, 0.9, 0.1], start_secs=0.064) == []


def test_hysteresis_keeps_a_dip_inside_speech():
    probs = [0.9] * 5 + [0.4] * 8 + [0.9] * 3 + [0.0] * 6
    edges = run(probs, threshold=0.5, stop_secs=0.16)
    assert [e for _, e in edges] == [SpeechEdge.STARTED, SpeechEdge.STOPPED]


def test_speech_length_excludes_trailing_silence():
    seg = SpeechSegmenter(VADSettings(start_secs=0.064, stop_secs=0.16), W)
    for p in [0.9] * 20 + [0.0] * 5:
        seg.update(p)
    assert not seg.speaking
    assert abs(seg.speech_secs - 20 * W) < 1e-9


def test_dangling_word_hint():
    assert ends_with_dangling_word("I'd like a pizza with")
    assert ends_with_dangling_word("I'd like a pizza with.")
    assert ends_with_dangling_word("so I was thinking...")
    assert not ends_with_dangling_word("I'd like a pizza.")
    assert not ends_with_dangling_word("What are you waiting for?")
    assert not ends_with_dangling_word("")


def test_turn_settings_reject_inverted_delays():
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        TurnSettings(min_endpointing_delay=2.0, max_endpointing_delay=1.0)


class Sink:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send_event(self, event: dict) -> None:
        pass

    def send_audio(self, pcm: bytes) -> None:
        self.frames.append(pcm)

    def clear_audio(self) -> None:
        pass


async def test_playout_is_paced_and_knows_what_was_heard():
    sink = Sink()
    playout = AudioPlayout(sink, lead_secs=0.0)
    audio = np.full(16_000, 1000, dtype="<i2")  # 1 s
    task = asyncio.create_task(
        playout.play("one two three four five six seven eight nine ten", audio)
    )
    await asyncio.sleep(0.5)
    task.cancel()
    heard = playout.heard_text().split()
    # Real time: about half a second of 1 s was sent, so about half the words.
    assert 3 <= len(heard) <= 7, heard
    assert 20 <= len(sink.frames) <= 30
    assert all(len(f) == 640 for f in sink.frames)


async def test_a_sentence_still_streaming_in_counts_its_words_heard_late_not_early():
    """Interrupted while its audio still arrives, a sentence's heard words are counted
    against its length at an ordinary pace, not against the little that has arrived (which
    would count every word heard after its first chunk)."""
    sink = Sink()
    playout = AudioPlayout(sink, lead_secs=0.0)
    text = "one two three four five six seven eight nine ten"  # ~3.5 s at 14 chars/s
    more = asyncio.Event()

    async def chunks():
        yield np.full(8_000, 1000, dtype="<i2")  # 0.5 s, then the provider is slow
        await more.wait()
        yield np.full(48_000, 1000, dtype="<i2")

    task = asyncio.create_task(playout.play_stream(text, chunks()))
    await asyncio.sleep(1.0)  # the first chunk has been played, the rest has not come
    heard = playout.heard_text().split()
    assert 1 <= len(heard) <= 2, heard
    more.set()
    await asyncio.sleep(0.5)
    task.cancel()
    # Now its whole length is known: ~1 s of 3.5 s played.
    assert 2 <= len(playout.heard_text().split()) <= 4


def test_a_transcript_without_a_word_is_empty():
    from parley.engines.stt_whisper import clean_transcript

    assert clean_transcript(" .") == ""
    assert clean_transcript("...") == ""
    assert clean_transcript("[Music] ♪") == ""
    assert clean_transcript(" Hello, there.") == "Hello, there."
    assert clean_transcript("7.") == "7."


def test_a_sentence_still_streaming_in_never_counts_its_last_word_heard():
    """A voice slower than the estimate: all 2 s that arrived were played, and the
    sentence (4 s in truth) still streams in; its last word cannot have been heard."""
    from parley.voice.playout import PlayedSentence

    arriving = PlayedSentence("Hello there my good friend", 32_000, 32_000, complete=False)
    assert arriving.heard_text() == "Hello there my good"
    arrived = PlayedSentence("Hello there my good friend", 32_000, 32_000)
    assert arrived.heard_text() == "Hello there my good friend"
