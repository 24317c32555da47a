"""Costs: the price table (matching, arithmetic, validation), the tallies stored on turns
and sessions, a voice session's cost book, the store's cost writes (SQLite and
PostgreSQL), the usage metrics and the inspector's figures."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from parley.config import CostSettings, PriceSettings, Settings
from parley.inspect_report import cost_lines, format_inspection
from parley.server.inspection import inspection
from parley.store import Store, TurnState
from parley.telemetry.costs import CostSummary, PriceTable, billed_secs, merged
from parley.telemetry.metrics import VoiceMetrics
from parley.telemetry.usage import Usage, estimated_tokens, listening_for_usage, report_usage
from parley.voice.costing import CostBook
from test_metrics import scrape, value

OPENAI = "openai@api.example.com"


def table(*entries: dict[str, object], currency: str = "USD") -> PriceTable:
    return CostSettings(currency=currency, prices=list(entries)).table()  # type: ignore[arg-type]


def llm(
    provider: str = OPENAI, model: str = "small", tokens_in: int = 0, tokens_out: int = 0
) -> Usage:
    return Usage("llm", provider, model, input_tokens=tokens_in, output_tokens=tokens_out)


# -- the price table ------------------------------------------------------------------


def test_each_stage_is_priced_by_its_own_unit() -> None:
    prices = table(
        {
            "provider": OPENAI,
            "model": "small",
            "llm_input_per_million_tokens": 0.5,
            "llm_output_per_million_tokens": 2.0,
        },
        {"provider": OPENAI, "model": "whisper", "stt_per_minute": 0.006},
        {"provider": OPENAI, "model": "voice", "tts_per_million_characters": 15.0},
        {"provider": "twilio", "telephony_per_minute": 0.0085},
    )
    assert prices.price(llm(tokens_in=1_000, tokens_out=200)).amount == pytest.approx(
        1_000 * 0.5 / 1e6 + 200 * 2.0 / 1e6
    )
    stt = prices.price(Usage("stt", OPENAI, "whisper", seconds=90.0))
    assert stt.amount == pytest.approx(1.5 * 0.006)
    tts = prices.price(Usage("tts", OPENAI, "voice", characters=2_000))
    assert tts.amount == pytest.approx(2_000 * 15.0 / 1e6)
    call = prices.price(Usage("telephony", "twilio", "inbound", seconds=30.0))
    assert call.amount == pytest.approx(0.5 * 0.0085)


def test_billing_increments_round_each_call_up() -> None:
    prices = table({"provider": "twilio", "telephony_per_minute": 0.01, "round_up_secs": 60})
    assert prices.price(Usage("telephony", "twilio", "inbound", seconds=61.0)).amount == (
        pytest.approx(0.02)
    )
    assert prices.price(Usage("telephony", "twilio", "inbound", seconds=60.0)).amount == (
        pytest.approx(0.01)
    )
    assert billed_secs(0.0, 60) == 0.0 and billed_secs(1.2, 0) == 1.2
    assert billed_secs(15.0000000001, 15) == 15.0  # float noise is not another increment


def test_the_exact_model_wins_over_any_and_a_chain_suffix_still_matches() -> None:
    prices = table(
        {"provider": OPENAI, "model": "*", "stt_per_minute": 1.0},
        {"provider": OPENAI, "model": "best", "stt_per_minute": 3.0},
    )
    minute = 60.0
    assert prices.price(Usage("stt", OPENAI, "best", seconds=minute)).amount == 3.0
    assert prices.price(Usage("stt", OPENAI, "other", seconds=minute)).amount == 1.0
    # Two entries of one provider in a chain are named "…" and "…#2".
    assert prices.price(Usage("stt", f"{OPENAI}#2", "best", seconds=minute)).amount == 3.0


def test_an_entry_prices_only_the_stages_it_sets() -> None:
    prices = table(
        {"provider": OPENAI, "model": "omni", "stt_per_minute": 1.0},
        {"provider": OPENAI, "model": "*", "tts_per_million_characters": 10.0},
    )
    # The exact entry has no TTS price: the provider's any-model entry has.
    assert prices.price(Usage("tts", OPENAI, "omni", characters=100_000)).amount == 1.0
    assert prices.price(llm(model="omni", tokens_in=5)).amount is None


def test_unknown_remote_calls_are_unpriced_and_embedded_ones_free_unless_priced() -> None:
    prices = table(
        {"provider": "llama", "llm_input_per_million_tokens": 1, "llm_output_per_million_tokens": 1}
    )
    assert prices.price(llm(tokens_in=10)).amount is None
    whisper = Usage("stt", "whisper", "tiny.en", embedded=True, seconds=5.0)
    assert prices.price(whisper).amount == 0.0
    smol = Usage("llm", "llama", "m", embedded=True, input_tokens=500_000, output_tokens=500_000)
    assert prices.price(smol).amount == pytest.approx(1.0)  # a GPU box's own price, say


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({"provider": OPENAI, "stt_per_minutes": 1.0}, "extra"),  # a typo is no silent gap
        ({"provider": OPENAI}, "sets none of"),
        ({"provider": OPENAI, "llm_input_per_million_tokens": 1.0}, "set both"),
        ({"provider": OPENAI, "stt_per_minute": -1.0}, "greater than or equal"),
        ({"provider": "", "stt_per_minute": 1.0}, "at least 1"),
    ],
)
def test_bad_price_entries_are_clear_errors(entry: dict[str, object], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        PriceSettings(**entry)  # type: ignore[arg-type]


def test_the_table_is_one_currency_and_one_price_per_model_and_stage() -> None:
    with pytest.raises(ValidationError, match="priced twice for stt"):
        CostSettings(
            prices=[
                PriceSettings(provider="x", stt_per_minute=1.0),
                PriceSettings(provider="x", stt_per_minute=2.0),
            ]
        )
    with pytest.raises(ValidationError, match="pattern"):
        CostSettings(currency="dollars")
    both = CostSettings(
        prices=[
            PriceSettings(
                provider="x", llm_input_per_million_tokens=1, llm_output_per_million_tokens=2
            ),
            PriceSettings(provider="x", stt_per_minute=1.0),
        ]
    )
    assert len(both.prices) == 2
    assert Settings().costs.table().currency == "USD"  # offline defaults: no prices


def test_prices_come_from_the_environment_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_COSTS__CURRENCY", "EUR")
    monkeypatch.setenv(
        "PARLEY_COSTS__PRICES", '[{"provider": "twilio", "telephony_per_minute": 0.01}]'
    )
    costs = Settings().costs
    assert costs.currency == "EUR" and costs.prices[0].telephony_per_minute == 0.01


# -- tallies --------------------------------------------------------------------------


def priced(prices: PriceTable, *usages: Usage) -> CostSummary:
    return CostSummary.of([prices.price(u) for u in usages], prices.currency)


def test_a_summary_adds_calls_by_provider_and_model_and_survives_json() -> None:
    prices = table(
        {
            "provider": OPENAI,
            "model": "small",
            "llm_input_per_million_tokens": 1.0,
            "llm_output_per_million_tokens": 3.0,
        }
    )
    summary = priced(prices, llm(tokens_in=100, tokens_out=10), llm(tokens_in=300, tokens_out=30))
    stored = summary.to_json()
    assert stored["currency"] == "USD" and stored["complete"] is True
    (item,) = stored["items"]
    assert item == {
        "stage": "llm",
        "provider": OPENAI,
        "model": "small",
        "requests": 2,
        "input_tokens": 400,
        "output_tokens": 40,
        "cost": pytest.approx((400 * 1.0 + 40 * 3.0) / 1e6),
    }
    assert stored["total"] == item["cost"]
    assert CostSummary.from_json(stored).to_json() == stored


def test_an_unpriced_call_makes_the_total_incomplete_not_zero() -> None:
    prices = table({"provider": OPENAI, "model": "whisper", "stt_per_minute": 0.6})
    summary = priced(
        prices,
        Usage("stt", OPENAI, "whisper", seconds=60.0),
        llm(model="mystery", tokens_in=50, tokens_out=5),
    )
    assert summary.complete is False and summary.total == pytest.approx(0.6)
    assert summary.unpriced() == [("llm", OPENAI, "mystery")]
    stored = summary.to_json()
    assert stored["complete"] is False
    assert [i["cost"] for i in stored["items"]] == [None, pytest.approx(0.6)]


def test_merging_adds_usage_and_refuses_to_add_another_currency() -> None:
    usd = table({"provider": "twilio", "telephony_per_minute": 1.0})
    eur = table({"provider": "twilio", "telephony_per_minute": 1.0}, currency="EUR")
    call = Usage("telephony", "twilio", "inbound", seconds=60.0)
    total = merged(priced(usd, call).to_json(), priced(usd, call).to_json())
    assert total["total"] == pytest.approx(2.0) and total["items"][0]["seconds"] == 120.0
    mixed = merged(total, priced(eur, call).to_json())
    assert mixed["currency"] == "USD" and mixed["complete"] is False
    assert mixed["items"][0]["seconds"] == 180.0 and mixed["items"][0]["cost"] is None
    assert merged(None, total) == total


def test_estimated_counts_are_marked() -> None:
    guess = Usage("llm", OPENAI, "small", input_tokens=3, output_tokens=2, estimated=True)
    stored = priced(PriceTable(), guess).to_json()
    assert stored["estimated"] is True and stored["items"][0]["estimated"] is True
    assert estimated_tokens("") == 0 and estimated_tokens("abcde") == 2


# -- a session's cost book ------------------------------------------------------------


def test_the_book_keeps_each_turn_apart_and_gives_the_session_its_own_calls() -> None:
    prices = table({"provider": "p", "stt_per_minute": 60.0, "tts_per_million_characters": 1e6})
    book = CostBook(prices.currency)
    second = Usage("stt", "p", "m", seconds=1.0)  # costs 1.0
    char = Usage("tts", "p", "m", characters=1)  # costs 1.0
    book.add(0, prices.price(char))  # the greeting: the session's own
    book.add(1, prices.price(second))
    book.add(1, prices.price(second))
    book.add(2, prices.price(second))  # the next turn, while the caller speaks
    turn, gained = book.finish(1)
    assert turn is not None and turn.total == 2.0
    assert gained is not None and gained.total == 3.0  # the turn's and the greeting
    assert book.is_late(1) and not book.is_late(2) and not book.is_late(None)
    book.add(None, prices.price(char))  # a person's words after a handoff
    rest = book.rest()
    assert rest is not None and rest.total == 2.0  # turn 2 never written, and the handoff
    assert book.rest() is None
    assert book.one(prices.price(char)).total == 1.0


def test_a_turn_without_calls_has_no_cost() -> None:
    book = CostBook("USD")
    assert book.finish(1) == (None, None)


# -- listening for usage --------------------------------------------------------------


def test_usage_is_told_to_the_listener_of_the_work_and_a_failing_one_breaks_nothing() -> None:
    seen: list[Usage] = []
    call = Usage("tts", "piper", "joe", embedded=True, characters=5)
    report_usage(call)  # nobody listening: dropped
    with listening_for_usage(seen.append):
        report_usage(call)
    report_usage(call)
    assert seen == [call]

    def broken(usage: Usage) -> None:
        raise RuntimeError("accounting bug")

    with listening_for_usage(broken):
        report_usage(call)  # logged, not raised


# -- the store ------------------------------------------------------------------------


async def test_turn_and_session_costs_are_written_together_and_added_up(store: Store) -> None:
    prices = table({"provider": "p", "stt_per_minute": 60.0})
    one = priced(prices, Usage("stt", "p", "m", seconds=1.0)).to_json()
    session = await store.create_session()
    turn, _ = await store.begin_turn(session.id, "k1", user_text="hi")
    await store.transition(turn.id, TurnState.PROCESSING)
    await store.transition(
        turn.id, TurnState.COMPLETED, result={"spoken": "yo", "cost": one}, session_cost=one
    )
    # A call that ended after the turn's record was written; then one of no turn.
    await store.add_cost(session.id, one, turn_id=turn.id)
    await store.add_cost(session.id, one)
    (stored,) = await store.turns(session.id)
    assert stored.result is not None
    assert stored.result["spoken"] == "yo" and stored.result["cost"]["total"] == 2.0
    record = await store.get_session(session.id)
    assert record is not None and record.cost is not None
    assert record.cost["total"] == 3.0 and record.cost["items"][0]["requests"] == 3


# -- metrics and the inspector --------------------------------------------------------


def test_usage_metrics_count_usage_and_cost_by_provider_and_model() -> None:
    metrics = VoiceMetrics(currency="EUR")
    observer = metrics.observer("websocket")
    prices = table(
        {
            "provider": OPENAI,
            "model": "small",
            "llm_input_per_million_tokens": 1e6,
            "llm_output_per_million_tokens": 2e6,
        },
        currency="EUR",
    )
    observer.usage(prices.price(llm(tokens_in=3, tokens_out=2)))
    observer.usage(prices.price(llm(model="mystery", tokens_in=1, tokens_out=1)))
    observer.usage(prices.price(Usage("stt", "whisper", "tiny.en", embedded=True, seconds=2.5)))
    observer.usage(prices.price(Usage("tts", "piper", "joe", embedded=True, characters=12)))
    samples = scrape(metrics)
    labels = {"stage": "llm", "provider": OPENAI, "model": "small"}
    assert value(samples, "parley_usage_calls_total", **labels) == 1
    assert (
        value(
            samples, "parley_usage_tokens_total", provider=OPENAI, model="small", direction="input"
        )
        == 3
    )
    assert (
        value(
            samples, "parley_usage_tokens_total", provider=OPENAI, model="small", direction="output"
        )
        == 2
    )
    assert value(samples, "parley_cost_total", currency="EUR", **labels) == pytest.approx(7.0)
    assert (
        value(samples, "parley_unpriced_calls_total", stage="llm", provider=OPENAI, model="mystery")
        == 1
    )
    assert (
        value(
            samples,
            "parley_usage_audio_seconds_total",
            stage="stt",
            provider="whisper",
            model="tiny.en",
        )
        == 2.5
    )
    assert value(samples, "parley_usage_characters_total", provider="piper", model="joe") == 12
    assert (
        value(
            samples, "parley_cost_total", currency="EUR", stage="tts", provider="piper", model="joe"
        )
        == 0
    )


def test_the_inspector_shows_turn_and_session_costs_and_says_when_unknown() -> None:
    prices = table({"provider": OPENAI, "model": "whisper", "stt_per_minute": 0.6})
    turn_cost = priced(prices, Usage("stt", OPENAI, "whisper", seconds=30.0)).to_json()
    session_cost = priced(
        prices,
        Usage("stt", OPENAI, "whisper", seconds=30.0),
        llm(model="mystery", tokens_in=40, tokens_out=4),
    ).to_json()
    record = {
        "session_id": "s1",
        "turns": [
            {
                "seq": 1,
                "state": "completed",
                "user_text": "hi",
                "result": {"spoken": "yo", "cost": turn_cost},
            }
        ],
        "events": [],
        "cost": session_cost,
    }
    data = inspection(record)
    assert data["cost"] == session_cost and data["turns"][0]["cost"] == turn_cost
    text = format_inspection(data)
    assert "session cost: unknown, at least 0.300000 USD (no price for llm " in text
    assert (
        f"  cost: 0.300000 USD\n    stt {OPENAI}/whisper: 1 call, 30.0 s of audio: 0.300000" in text
    )
    assert f"llm {OPENAI}/mystery: 1 call, 40 tokens in, 4 out: no price" in text
    assert cost_lines(None) == []
