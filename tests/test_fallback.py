"""The fallback chains and circuit breakers on their own (engine doubles; the same chains
over real HTTP providers and real speech are in test_e2e_failover.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np
import pytest

from parley.engine_settings import BreakerSettings
from parley.engines import ChatMessage, EngineError, Transcript
from parley.engines.breaker import CircuitBreaker
from parley.engines.fallback import AllProvidersFailed, FallbackSTT, Provider, failover_listener
from parley.engines.fallback_llm import FallbackLLM, RepeatFilter, spaced
from parley.engines.fallback_tts import FallbackTTS, rest_of_sentence
from parley.engines.provider_errors import ProviderError, retry_after_secs

HI = [ChatMessage("user", "What time is it?")]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def never_probe() -> None:
    raise EngineError("still down")


def breaker(clock: Any = None, probe: Any = never_probe, **settings: Any) -> CircuitBreaker:
    s = BreakerSettings(**{"failures": 3, "window_secs": 10, "open_secs": 5, **settings})
    return CircuitBreaker("llm", "primary", s, probe, clock=clock or Clock())


# ---- the breaker ---------------------------------------------------------------------------


def test_the_breaker_opens_after_n_failures_within_its_window() -> None:
    clock = Clock()
    b = breaker(clock)
    b.record_failure("http_500")
    clock.now += 6
    b.record_failure("http_500")
    assert b.allows
    clock.now += 6  # the first failure has left the 10 s window
    b.record_failure("http_500")
    assert b.allows and b.state == "closed"
    b.record_failure("timeout")
    assert not b.allows and b.state == "open" and b.opened_total == 1
    assert b.status()["last_error"] == "timeout"


def test_a_success_forgets_earlier_failures() -> None:
    b = breaker()
    for _ in range(2):
        b.record_failure("http_500")
    b.record_success()
    b.record_failure("http_500")
    assert b.allows


def test_a_rate_limit_opens_the_breaker_at_once_for_its_retry_after() -> None:
    clock = Clock()
    b = breaker(clock)
    b.record_failure("rate_limited", retry_after=42.0)
    assert b.state == "open" and b.status()["retry_in_secs"] == 42.0


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    assert retry_after_secs("2.5") == 2.5
    assert retry_after_secs("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert retry_after_secs("soon") is None and retry_after_secs(None) is None


async def test_the_breaker_probes_in_the_background_and_closes_when_it_answers() -> None:
    answers = [EngineError("still down"), None]
    probes = 0

    async def probe() -> None:
        nonlocal probes
        probes += 1
        outcome = answers.pop(0)
        if outcome is not None:
            raise outcome

    b = CircuitBreaker("tts", "p", BreakerSettings(failures=1, open_secs=0.05), probe)
    b.record_failure("unreachable")
    assert b.state == "open"
    async with asyncio.timeout(5):
        while b.state != "closed":  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert probes == 2 and b.probes_total == 2 and b.allows
    await b.aclose()


# ---- speech to text ------------------------------------------------------------------------


class STT:
    def __init__(self, text: str | None, delay: float = 0.0) -> None:
        self.text, self.delay, self.calls = text, delay, 0
        self.busy = False

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.text is None:
            raise ProviderError("HTTP 503", "http_503")
        return Transcript(self.text, 1.0)


def chain_of(kind: Any, stage: str, *engines: Any, timeout: float = 1.0, **breaker: Any) -> Any:
    settings = BreakerSettings(**{"failures": 2, "open_secs": 60, **breaker})
    return kind(
        stage,
        [
            Provider(f"p{i}", e, CircuitBreaker(stage, f"p{i}", settings, never_probe), timeout)
            for i, e in enumerate(engines)
        ],
    )


async def test_stt_sends_the_same_audio_to_the_next_provider() -> None:
    told: list[dict[str, Any]] = []
    failover_listener.set(told.append)
    down, hung, up = STT(None), STT("late", delay=5), STT("hello")
    chain = chain_of(FallbackSTT, "stt", down, hung, up, timeout=0.2)
    assert (await chain.transcribe(np.zeros(16_000, np.float32))).text == "hello"
    assert [t["from"] for t in told] == ["p0", "p1"] and [t["kind"] for t in told] == [
        "http_503",
        "timeout",
    ]
    assert chain.attempts[("p2", "ok")] == 1 and chain.failovers[("p0", "p1")] == 1
    failover_listener.set(None)


async def test_an_open_breaker_keeps_requests_from_its_provider() -> None:
    down, up = STT(None), STT("hello")
    chain = chain_of(FallbackSTT, "stt", down, up)
    for _ in range(4):
        await chain.transcribe(np.zeros(160, np.float32))
    assert down.calls == 2 and up.calls == 4  # opened after 2 failures: no more calls
    assert chain.held_off["p0"] == 2


async def test_every_provider_failing_is_one_clear_error() -> None:
    chain = chain_of(FallbackSTT, "stt", STT(None), STT(None))
    with pytest.raises(AllProvidersFailed, match=r"every stt provider failed: p0 \(http_503\)"):
        await chain.transcribe(np.zeros(160, np.float32))


async def test_with_every_breaker_open_the_providers_are_tried_all_the_same() -> None:
    """Skipping them all would fail the caller for certain: one back before its probe
    (which only runs after ``open_secs``) answers at once."""
    first, second = STT(None), STT(None)
    chain = chain_of(FallbackSTT, "stt", first, second)
    for _ in range(2):  # two failures each: both breakers open
        with pytest.raises(AllProvidersFailed):
            await chain.transcribe(np.zeros(160, np.float32))
    assert [p.breaker.allows for p in chain.providers] == [False, False]
    second.text = "back"
    assert (await chain.transcribe(np.zeros(160, np.float32))).text == "back"
    assert first.calls == 3 and second.calls == 3


# ---- the LLM -------------------------------------------------------------------------------


class LLM:
    def __init__(self, deltas: list[str], fail_after: int | None = None, hang: bool = False):
        self.deltas, self.fail_after, self.hang = deltas, fail_after, hang
        self.prompts: list[list[ChatMessage]] = []

    async def prefill(self, messages: Sequence[ChatMessage]) -> None:
        pass

    async def stream_chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[str]:
        self.prompts.append(list(messages))
        if self.hang:
            await asyncio.sleep(60)
        for i, delta in enumerate(self.deltas):
            if i == self.fail_after:
                raise ProviderError("stream dropped", "stream_cut")
            yield delta


async def reply(chain: FallbackLLM) -> str:
    return "".join([d async for d in chain.stream_chat(HI)])


async def test_a_reply_cut_mid_stream_continues_on_the_next_provider_without_repeats() -> None:
    primary = LLM(["It is noon.", " The sun", " is high."], fail_after=2)
    # The fallback starts over (as a chat model given the prefix often does).
    fallback = LLM(["It is noon.", " The sun is", " high.", " Enjoy it."])
    chain = chain_of(FallbackLLM, "llm", primary, fallback)
    assert await reply(chain) == "It is noon. The sun is high. Enjoy it."
    assert fallback.prompts[0][-1] == ChatMessage("assistant", "It is noon. The sun")


async def test_a_true_continuation_is_passed_on_whole() -> None:
    primary = LLM(["It is noon.", " The"], fail_after=1)
    fallback = LLM([" The sun is high."])
    assert await reply(chain_of(FallbackLLM, "llm", primary, fallback)) == (
        "It is noon. The sun is high."
    )


async def test_a_hung_llm_fails_over_after_its_first_token_timeout() -> None:
    chain = chain_of(FallbackLLM, "llm", LLM([], hang=True), LLM(["Noon."]), timeout=0.2)
    async with asyncio.timeout(2):
        assert await reply(chain) == "Noon."


async def test_a_continuation_that_starts_a_new_sentence_is_spaced_from_what_was_said() -> None:
    primary = LLM(["It is noon.", " unsent"], fail_after=1)
    fallback = LLM(["Enjoy", " your lunch."])
    assert await reply(chain_of(FallbackLLM, "llm", primary, fallback)) == (
        "It is noon. Enjoy your lunch."
    )
    assert spaced("It is Par", "is.") == "is."  # a cut word stays joined


def test_the_repeat_filter() -> None:
    f = RepeatFilter("It is noon.")
    assert f.push("it is") == "" and f.push(" NOON, and") == " and"
    f = RepeatFilter("It is noon.")
    assert f.push("It is") == "" and f.flush() == ""  # a partial repeat, then the end
    f = RepeatFilter("It is noon.")
    assert f.push("It was") == "It was"  # departs at once
    assert RepeatFilter("").push("Hi") == "Hi"


# ---- text to speech ------------------------------------------------------------------------


class TTS:
    def __init__(self, secs_per_char: float, fail_after_secs: float | None = None):
        self.pace, self.fail_after = secs_per_char, fail_after_secs
        self.texts: list[str] = []

    async def synthesize(self, text: str) -> AsyncIterator[np.ndarray]:
        self.texts.append(text)
        total = int(len(text) * self.pace * 16_000)
        sent = 0
        while sent < total:
            if self.fail_after is not None and sent >= self.fail_after * 16_000:
                raise ProviderError("connection dropped", "stream_cut")
            n = min(1_600, total - sent)
            sent += n
            yield np.ones(n, dtype=np.int16)


def test_the_rest_of_a_sentence_rounds_down_to_a_whole_word() -> None:
    text = "The store opens at nine tomorrow"
    assert rest_of_sentence(text, 0.0, 0.07) == text
    assert rest_of_sentence(text, 0.71, 0.07) == "opens at nine tomorrow"  # "The store " 0.7 s
    assert rest_of_sentence(text, 0.75, 0.07) == "opens at nine tomorrow"  # mid "opens"
    assert rest_of_sentence(text, 5.0, 0.07) == ""


async def test_a_sentence_cut_mid_synthesis_says_only_the_rest_on_the_next_provider() -> None:
    sentence = "The store opens at nine tomorrow morning."
    primary, fallback = TTS(0.07, fail_after_secs=0.75), TTS(0.07)
    chain = chain_of(FallbackTTS, "tts", primary, fallback)
    audio = [a async for a in chain.synthesize(sentence)]
    assert sum(a.size for a in audio) > 0
    assert fallback.texts == ["opens at nine tomorrow morning."]
