"""The price table (``[costs]``): what each provider and model costs, in one currency.

Each ``[[costs.prices]]`` entry names a provider as Parley names it (its ``name``, else
``openai@<host of base_url>``, ``whisper``, ``llama``, ``piper``; ``twilio`` for phone
calls) and a model (``*``: any), and prices the stages it sets::

    [costs]
    currency = "USD"

    [[costs.prices]]
    provider = "openai@api.openai.com"
    model = "gpt-4o-mini"
    llm_input_per_million_tokens = 0.15
    llm_output_per_million_tokens = 0.60

    [[costs.prices]]
    provider = "twilio"
    telephony_per_minute = 0.0085
    round_up_secs = 60

A call no entry prices costs nothing if an embedded model served it, and is *unpriced*
(cost unknown) otherwise. No prices ship with Parley: list prices change, and a wrong
one would be worse than none. See docs/costs.md.
"""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from parley.telemetry.costs import PriceTable

PRICE_FIELDS = (
    "stt_per_minute",
    "llm_input_per_million_tokens",
    "llm_output_per_million_tokens",
    "tts_per_million_characters",
    "telephony_per_minute",
)


class PriceSettings(BaseModel):
    # A misspelt price must be an error, not a call silently left unpriced.
    model_config = ConfigDict(extra="forbid")

    provider: str = Field(min_length=1)
    """Parley's name for the provider (as in ``/metrics`` and ``/ready``)."""
    model: str = Field(default="*", min_length=1)
    """The model name sent to the provider (embedded: the model file's name); ``*``: any."""
    stt_per_minute: float | None = Field(default=None, ge=0)
    """Per minute of audio sent to be transcribed."""
    llm_input_per_million_tokens: float | None = Field(default=None, ge=0)
    llm_output_per_million_tokens: float | None = Field(default=None, ge=0)
    tts_per_million_characters: float | None = Field(default=None, ge=0)
    """Per million characters of text sent to be spoken."""
    telephony_per_minute: float | None = Field(default=None, ge=0)
    """Per minute of a phone call (its media stream)."""
    round_up_secs: float = Field(default=0.0, ge=0)
    """Per-minute prices: each request (STT) or call (telephony) billed in whole
    increments of this many seconds, rounded up (Twilio: 60); 0 = to the second's
    fraction."""

    @model_validator(mode="after")
    def _prices_something(self) -> Self:
        if all(getattr(self, name) is None for name in PRICE_FIELDS):
            raise ValueError(
                f"a price entry for {self.provider}/{self.model} sets none of {PRICE_FIELDS}"
            )
        llm = (self.llm_input_per_million_tokens, self.llm_output_per_million_tokens)
        if (llm[0] is None) != (llm[1] is None):
            # One without the other would leave half of every call at 0 unnoticed.
            raise ValueError(
                f"{self.provider}/{self.model}: set both llm_input_per_million_tokens and "
                "llm_output_per_million_tokens (0 for a side that is free)"
            )
        return self


class CostSettings(BaseModel):
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    """ISO 4217 code of every price (amounts of several currencies are never added)."""
    prices: list[PriceSettings] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_entry_per_model(self) -> Self:
        seen: set[tuple[str, str, str]] = set()
        for entry in self.prices:
            stages = {n.split("_", 1)[0] for n in PRICE_FIELDS if getattr(entry, n) is not None}
            for stage in stages:
                key = (entry.provider, entry.model, stage)
                if key in seen:
                    raise ValueError(f"{entry.provider}/{entry.model} is priced twice for {stage}")
                seen.add(key)
        return self

    def table(self) -> PriceTable:
        return PriceTable(self.prices, self.currency)
