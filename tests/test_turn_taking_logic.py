"""The pure parts of turn-taking: the end-of-turn rule, the backchannel classifier, the echo
guard, ducking in the playout, and the text end-of-turn model on the real SmolLM2."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from parley.config import TurnSettings
from parley.testing import caller_speech
from parley.voice.backchannel import Overlap, classify_overlap, repeats_agent
from parley.voice.echo import EchoReference, echo_similarity
from parley.voice.endpointing import EndOfTurnEvidence, audio_matters, finish_delay
from parley.voice.playout import AudioPlayout

CFG = TurnSettings()


@pytest.mark.parametrize(
    ("text", "p_audio", "p_text", "delay"),
    [
        # A dangling last word waits longest, whatever the models say.
        ("I'd like a pizza with", 0.99, 0.9, CFG.unfinished_delay),
        # Words and audio agree, or the words are sure on their own: the shortest wait.
        ("Cancel my appointment.", 0.9, CFG.text_threshold, CFG.min_endpointing_delay),
        ("Cancel my appointment.", 0.01, CFG.text_sure, CFG.min_endpointing_delay),
        # One of them says finished: the middle wait.
        ("Cancel my appointment.", 0.1, CFG.text_threshold, CFG.sure_secs),
        ("The parcel was supposed to arrive.", 0.98, CFG.text_floor, CFG.sure_secs),
        # Words clearly unfinished overrule a confident audio model.
        ("Do you still sound that?", 0.98, CFG.text_floor / 2, CFG.max_endpointing_delay),
        # Without the text model: the audio, or Whisper's question mark.
        ("How much is it?", 0.01, None, CFG.min_endpointing_delay),
        ("How much is it", 0.01, None, CFG.max_endpointing_delay),
        # A question mark lifts the dangling-word veto; the text model then decides.
        ("What are you waiting for?", 0.9, 0.5, CFG.min_endpointing_delay),
    ],
)
def test_end_of_turn_rule(text, p_audio, p_text, delay):
    assert finish_delay(EndOfTurnEvidence(text, p_audio, p_text), CFG) == delay


def test_end_of_turn_delays_stay_ordered_when_only_the_bounds_are_set():
    cfg = TurnSettings(min_endpointing_delay=0.0, max_endpointing_delay=0.0)
    unsure = EndOfTurnEvidence("Cancel my appointment.", 0.1, CFG.text_threshold)
    assert finish_delay(unsure, cfg) == 0.0
    assert finish_delay(EndOfTurnEvidence("a pizza with", 0.9, 0.9), cfg) == cfg.unfinished_delay


@pytest.mark.parametrize(
    "cfg",
    [CFG, TurnSettings(use_text_hint=False), TurnSettings(min_endpointing_delay=0.0)],
)
def test_the_audio_model_is_skipped_only_where_it_cannot_change_the_decision(cfg):
    """Where ``audio_matters`` says no, every audio verdict gives the same delay (so not
    running Smart Turn there changes no decision); where it says yes, some two differ."""
    texts = ["Cancel my appointment.", "I'd like a pizza with", "How much is it?", "So"]
    p_texts = [None, 0.0, cfg.text_floor / 2, cfg.text_floor, cfg.text_threshold]
    p_texts += [(cfg.text_threshold + cfg.text_sure) / 2, cfg.text_sure, 0.99]
    for text in texts:
        for p_text in p_texts:
            delays = {
                finish_delay(EndOfTurnEvidence(text, p_audio, p_text), cfg)
                for p_audio in (None, 0.0, cfg.eou_threshold / 2, cfg.eou_threshold, 1.0)
            }
            if not audio_matters(text, p_text, cfg):
                assert len(delays) == 1, (text, p_text, delays)
            elif p_text is not None:
                assert len(delays) == 2, (text, p_text, delays)


@pytest.mark.parametrize(
    ("text", "finished", "verdict"),
    [
        ("Okay.", True, Overlap.BACKCHANNEL),
        ("Uh-huh.", True, Overlap.BACKCHANNEL),
        ("Mm-hmm", True, Overlap.BACKCHANNEL),
        ("Yeah, yeah. Got it.", True, Overlap.BACKCHANNEL),
        ("I see.", True, Overlap.BACKCHANNEL),
        ("I", False, Overlap.UNDECIDED),  # may become "I see"
        ("I", True, Overlap.UNSURE),
        # One word that is no cue: Whisper's "M" for mm-hmm, "Yay" for yeah.
        ("M.", True, Overlap.UNSURE),
        ("Yay!", False, Overlap.UNDECIDED),
        ("What?", True, Overlap.INTERRUPTION),
        ("Hold on.", False, Overlap.INTERRUPTION),
        ("Can you", False, Overlap.INTERRUPTION),
        ("", True, Overlap.NOTHING),
        ("No", False, Overlap.INTERRUPTION),
        ("Wait,", False, Overlap.INTERRUPTION),
        ("Yeah, but I said two people.", False, Overlap.INTERRUPTION),
        ("Sorry, that's not what I asked.", True, Overlap.INTERRUPTION),
    ],
)
def test_backchannels_are_told_from_interruptions(text, finished, verdict):
    assert classify_overlap(text, finished=finished) is verdict


def test_an_overlap_that_repeats_the_agent_is_its_echo():
    said = "Your order will arrive on Friday between nine and five."
    assert repeats_agent("arrive on Friday", said)
    assert not repeats_agent("No, I said Tuesday", said)


def speech(text: str, voice: str) -> np.ndarray:
    return caller_speech(text, voice=voice).astype(np.float32) / 32768.0


def test_echo_of_the_agent_is_recognised_and_a_caller_is_not():
    agent = speech("Your order will arrive on Friday between nine and five.", "en-us")
    caller = speech("No, that's the wrong day, I said Tuesday.", "en-gb")
    reference = EchoReference()
    for i in range(0, 32_000, 320):
        reference.add(i / 16_000, (agent[i : i + 320] * 32767).astype("<i2"))
    played = reference.recent()
    # Speakerphone: 180 ms late, at a third of the level, with a little room noise.
    rng = np.random.default_rng(3)
    echo = 0.33 * played[16_000 - 2_880 : 16_000 - 2_880 + 6_400]
    echo = echo + 0.003 * rng.standard_normal(echo.size)
    assert echo_similarity(echo, played) > 0.8
    # The echo of a reply's first words, after the caller's silence.
    first = np.concatenate([np.zeros(2_400), 0.5 * played[:4_000]])
    assert echo_similarity(first, played[:8_000]) > 0.8
    assert echo_similarity(caller[4_000:10_400], played) < 0.4
    # The caller talking over the echo is the caller.
    assert echo_similarity(caller[4_000:10_400] + 0.3 * echo, played) < 0.5
    assert echo_similarity(caller[4_000:10_400], np.zeros(32_000, np.float32)) == 0.0


class Sink:
    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []

    def send_event(self, event: dict) -> None:
        pass

    def send_audio(self, pcm: bytes) -> None:
        self.frames.append(np.frombuffer(pcm, dtype="<i2"))

    def clear_audio(self) -> None:
        pass


async def test_ducking_lowers_the_agent_without_stopping_it_and_restores_it():
    sink = Sink()
    reference = EchoReference()
    playout = AudioPlayout(sink, lead_secs=1.0, echo=reference)
    await playout.play("one", np.full(3_200, 10_000, dtype="<i2"))  # 10 frames
    playout.gain = 0.35
    await playout.play("two", np.full(3_200, 10_000, dtype="<i2"))
    playout.gain = 1.0
    await playout.play("three", np.full(3_200, 10_000, dtype="<i2"))
    peaks = [int(np.abs(f).max()) for f in sink.frames]
    assert peaks[:10] == [10_000] * 10
    assert all(p <= 3_500 for p in peaks[11:20])  # ducked after a one-frame ramp
    assert all(p == 10_000 for p in peaks[21:])
    assert len(sink.frames) == 30 and playout.recent_text() == "one two three"
    # What was sent is kept, at full level, for the echo guard.
    assert reference.recent().size == 30 * 320


@pytest.fixture(scope="module")
def text_model():
    from parley.engines.turn_text import TextTurnDetector

    model = TextTurnDetector(TurnSettings())
    yield model
    model.close()


async def test_text_model_tells_unfinished_words_from_whole_ones(text_model):
    unfinished = ["Could I get the", "I'd like to move my booking to", "Is it possible to"]
    whole = [
        "Could I get the vegetable curry please.",
        "When will my refund show up on my card?",
        "I need to reset the password on my account.",
    ]
    low = [await text_model.completion_probability(t) for t in unfinished]
    high = [await text_model.completion_probability(t) for t in whole]
    assert max(low) < CFG.text_floor < CFG.text_threshold <= min(high), (low, high)
    # Whisper's full stop on a cut-off fragment changes nothing.
    cut = await text_model.completion_probability("Could I get the.")
    assert cut == pytest.approx(low[0], abs=1e-3)


async def test_text_model_calls_do_not_block_each_other(text_model):
    results = await asyncio.gather(
        *(text_model.completion_probability(f"Book {n} seats") for n in range(4))
    )
    assert all(0.0 <= p <= 1.0 for p in results)


async def test_text_model_uses_every_core_only_while_sessions_are_few(text_model):
    """Its batch of new tokens runs on every core while no more sessions than cores are
    live, else on one (a second thread would take a core from the event loop); the
    verdict is the same either way."""
    from parley.engines import device

    sessions = [1]
    text_model._live_sessions = lambda: sessions[0]
    text = "Could I get the vegetable curry please."
    few = await text_model.completion_probability(text)
    assert text_model._threads == device.cpu_count()
    sessions[0] = device.cpu_count() + 1
    await text_model.completion_probability("Something else first")  # not the cached words
    many = await text_model.completion_probability(text)
    assert text_model._threads == 1
    assert many == pytest.approx(few, abs=1e-3)


def _count_evaluated(model, monkeypatch) -> list[int]:
    """Record how many tokens each call of the model evaluates (verdicts and read-aheads)."""
    counts: list[int] = []
    llm = model._llm
    eval_with_logits = llm.eval
    eval_without = model._eval_without_logits

    def counted_eval(tokens):
        counts.append(len(tokens))
        return eval_with_logits(tokens)

    def counted_without(tokens):
        counts.append(len(tokens))
        return eval_without(tokens)

    monkeypatch.setattr(llm, "eval", counted_eval)
    monkeypatch.setattr(model, "_eval_without_logits", counted_without)
    return counts


async def test_words_read_ahead_give_the_same_verdict_and_leave_only_the_rest_to_read(
    text_model, monkeypatch
):
    """A caller's partial transcript read ahead is kept for them, also while other callers'
    words pass through the model: the verdict when they stop reads only the words since,
    and is the verdict a fresh read of every word gives."""
    whole = "Could I get the vegetable curry please with some rice and a mango lassi."
    alone = await text_model.completion_probability(whole)
    await text_model.completion_probability("Something else entirely, to clear the cache")
    counts = _count_evaluated(text_model, monkeypatch)
    await text_model.completion_probability(whole)  # no caller: every word read again
    read_alone = counts.pop()

    await text_model.read_ahead("Could I get the vegetable", "caller-a")
    await text_model.completion_probability("When will my refund show up?", "caller-b")
    await text_model.read_ahead("Could I get the vegetable curry please with some", "caller-a")
    await text_model.completion_probability("I need to reset my password.", "caller-b")
    counts.clear()
    ahead = await text_model.completion_probability(whole, "caller-a")
    assert ahead == pytest.approx(alone, abs=1e-3)
    assert len(counts) == 1 and counts[0] < read_alone / 2, (counts, read_alone)

    text_model.forget("caller-a")
    await text_model.completion_probability("Another caller's words.", "caller-b")
    counts.clear()
    again = await text_model.completion_probability(whole, "caller-a")
    assert counts == [read_alone] and again == pytest.approx(alone, abs=1e-3)
    text_model.forget("caller-a")
    text_model.forget("caller-b")


async def test_words_forgotten_while_their_call_runs_are_not_kept(text_model, monkeypatch):
    """The session closed (or its turn ended) while the lane's thread read its words: what
    that call read is not kept for it afterwards."""
    evaluate = text_model._eval_without_logits

    def forgotten_meanwhile(tokens):
        evaluate(tokens)
        text_model.forget("caller-gone")  # as the event loop would, while this runs

    monkeypatch.setattr(text_model, "_eval_without_logits", forgotten_meanwhile)
    await text_model.read_ahead("I'd like to move my booking to", "caller-gone")
    assert "caller-gone" not in text_model._saved
    monkeypatch.setattr(text_model, "_eval_without_logits", evaluate)
    await text_model.read_ahead("I'd like to move my booking to", "caller-kept")
    assert "caller-kept" in text_model._saved
    text_model.forget("caller-kept")


async def test_the_words_kept_for_callers_are_bounded(text_model, monkeypatch):
    from parley.engines import turn_text

    monkeypatch.setattr(turn_text, "MAX_SAVED_CALLERS", 3)
    text_model._saved.clear()
    for n in range(5):
        await text_model.read_ahead(f"Caller number {n} would like", f"caller-{n}")
    assert list(text_model._saved) == ["caller-2", "caller-3", "caller-4"]
    for n in range(5):
        text_model.forget(f"caller-{n}")
    assert not text_model._saved
