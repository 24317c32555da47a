"""The usage and cost counters: every provider call a session (or an HTTP turn) made,
by stage, provider and model — what it used and what it cost in the price table's
currency. Calls with no price count apart (``parley_unpriced_calls``): their cost is
unknown, not 0. Fed by the observers (``MetricsObserver.usage``), never by the engines.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from parley.telemetry.costs import CallCost

CALL = ("stage", "provider", "model")


class UsageMetrics:
    def __init__(self, registry: CollectorRegistry, currency: str) -> None:
        self.currency = currency
        self.calls = Counter(
            "parley_usage_calls",
            "Provider calls made for sessions, by stage, provider and model.",
            CALL,
            registry=registry,
        )
        self.seconds = Counter(
            "parley_usage_audio_seconds",
            "Seconds of audio sent to speech-to-text, and of phone calls (stage telephony).",
            CALL,
            registry=registry,
        )
        self.tokens = Counter(
            "parley_usage_tokens",
            "LLM tokens, by direction (input: the prompt; output: the reply).",
            ("provider", "model", "direction"),
            registry=registry,
        )
        self.characters = Counter(
            "parley_usage_characters",
            "Characters of text sent to text-to-speech.",
            ("provider", "model"),
            registry=registry,
        )
        self.cost = Counter(
            "parley_cost",
            "What the priced calls cost, in the price table's currency (costs.currency).",
            (*CALL, "currency"),
            registry=registry,
        )
        self.unpriced = Counter(
            "parley_unpriced_calls",
            "Calls whose provider and model have no price (their cost is unknown).",
            CALL,
            registry=registry,
        )

    def count(self, call: CallCost) -> None:
        u = call.usage
        labels = (u.stage, u.provider, u.model)
        self.calls.labels(*labels).inc()
        if u.stage in ("stt", "telephony"):
            self.seconds.labels(*labels).inc(u.seconds)
        elif u.stage == "llm":
            self.tokens.labels(u.provider, u.model, "input").inc(u.input_tokens)
            self.tokens.labels(u.provider, u.model, "output").inc(u.output_tokens)
        elif u.stage == "tts":
            self.characters.labels(u.provider, u.model).inc(u.characters)
        if call.amount is None:
            self.unpriced.labels(*labels).inc()
        else:
            self.cost.labels(*labels, self.currency).inc(call.amount)
