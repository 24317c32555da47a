"""What the calls cost: a price table per provider and model, each call priced as it is
reported (:class:`CallCost`), and the tally a turn or a session keeps
(:class:`CostSummary`, stored as JSON on their records).

A call whose provider and model have no price is *unpriced*: its cost is unknown
(None), never silently 0, and a tally holding one says it is not ``complete``. Embedded
models (this process's own) cost 0 unless the table prices them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from parley.telemetry.usage import Usage

SECS_PER_MINUTE = 60.0
MILLION = 1_000_000
ANY_MODEL = "*"
DECIMALS = 10
"""Amounts as stored: enough for a token's price, without float noise (0.1 + 0.2)."""


class PriceEntry(Protocol):
    """One row of the price table (``[[costs.prices]]``, ``cost_settings.py``)."""

    provider: str
    model: str
    stt_per_minute: float | None
    llm_input_per_million_tokens: float | None
    llm_output_per_million_tokens: float | None
    tts_per_million_characters: float | None
    telephony_per_minute: float | None
    round_up_secs: float


def prices_stage(entry: PriceEntry, stage: str) -> bool:
    """Whether ``entry`` has a price for ``stage``."""
    if stage == "llm":
        return entry.llm_input_per_million_tokens is not None
    rate = {
        "stt": entry.stt_per_minute,
        "tts": entry.tts_per_million_characters,
        "telephony": entry.telephony_per_minute,
    }.get(stage)
    return rate is not None


def billed_secs(secs: float, increment: float) -> float:
    """``secs`` rounded up to the provider's billing increment (0: billed exactly)."""
    if increment <= 0 or secs <= 0:
        return max(secs, 0.0)
    return math.ceil(secs / increment - 1e-9) * increment


def amount(entry: PriceEntry, usage: Usage) -> float:
    """What ``usage`` costs at ``entry``'s prices (which price its stage)."""
    if usage.stage == "llm":
        per_in = entry.llm_input_per_million_tokens or 0.0
        per_out = entry.llm_output_per_million_tokens or 0.0
        return (usage.input_tokens * per_in + usage.output_tokens * per_out) / MILLION
    if usage.stage == "tts":
        return usage.characters * (entry.tts_per_million_characters or 0.0) / MILLION
    per_minute = entry.stt_per_minute if usage.stage == "stt" else entry.telephony_per_minute
    secs = billed_secs(usage.seconds, entry.round_up_secs)
    return secs / SECS_PER_MINUTE * (per_minute or 0.0)


@dataclass(frozen=True, slots=True)
class CallCost:
    usage: Usage
    amount: float | None
    """In the table's currency; None when no price is known (unpriced)."""


class PriceTable:
    """The configured prices. An entry matches a call by provider — Parley's name for it,
    with or without the ``#2`` that tells two entries of one provider apart — and model
    (or ``*``, any model); the most specific entry that prices the call's stage wins."""

    def __init__(self, entries: Sequence[PriceEntry] = (), currency: str = "USD") -> None:
        self.currency = currency
        self._entries = list(entries)

    def entry_for(self, usage: Usage) -> PriceEntry | None:
        base = usage.provider.split("#", 1)[0]
        providers = (usage.provider, base) if base != usage.provider else (usage.provider,)
        for provider in providers:
            for model in (usage.model, ANY_MODEL):
                for entry in self._entries:
                    if (
                        entry.provider == provider
                        and entry.model == model
                        and prices_stage(entry, usage.stage)
                    ):
                        return entry
        return None

    def price(self, usage: Usage) -> CallCost:
        entry = self.entry_for(usage)
        if entry is None:
            return CallCost(usage, 0.0 if usage.embedded else None)
        return CallCost(usage, amount(entry, usage))


# -- tallies --------------------------------------------------------------------------

ItemKey = tuple[str, str, str]


@dataclass
class LineItem:
    """One (stage, provider, model)'s calls in a tally: their usage and cost."""

    stage: str
    provider: str
    model: str
    requests: int = 0
    seconds: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    characters: int = 0
    cost: float | None = 0.0
    """None when any of its calls was unpriced."""
    estimated: bool = False

    @property
    def key(self) -> ItemKey:
        return (self.stage, self.provider, self.model)

    def add(self, other: LineItem) -> None:
        self.requests += other.requests
        self.seconds += other.seconds
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.characters += other.characters
        self.cost = None if self.cost is None or other.cost is None else self.cost + other.cost
        self.estimated |= other.estimated

    @classmethod
    def of(cls, call: CallCost) -> LineItem:
        u = call.usage
        return cls(
            u.stage,
            u.provider,
            u.model,
            1,
            u.seconds,
            u.input_tokens,
            u.output_tokens,
            u.characters,
            call.amount,
            u.estimated,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "stage": self.stage,
            "provider": self.provider,
            "model": self.model,
            "requests": self.requests,
        }
        if self.stage in ("stt", "telephony"):
            out["seconds"] = round(self.seconds, 3)
        elif self.stage == "llm":
            out["input_tokens"] = self.input_tokens
            out["output_tokens"] = self.output_tokens
        else:
            out["characters"] = self.characters
        out["cost"] = None if self.cost is None else round(self.cost, DECIMALS)
        if self.estimated:
            out["estimated"] = True
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LineItem:
        cost = data.get("cost")
        return cls(
            str(data["stage"]),
            str(data["provider"]),
            str(data["model"]),
            int(data.get("requests", 0)),
            float(data.get("seconds", 0.0)),
            int(data.get("input_tokens", 0)),
            int(data.get("output_tokens", 0)),
            int(data.get("characters", 0)),
            None if cost is None else float(cost),
            bool(data.get("estimated", False)),
        )


@dataclass
class CostSummary:
    """The calls of a turn or a session, by stage, provider and model, and their total."""

    currency: str
    items: dict[ItemKey, LineItem] = field(default_factory=dict)

    @classmethod
    def of(cls, calls: Iterable[CallCost], currency: str) -> CostSummary:
        summary = cls(currency)
        for call in calls:
            summary.add(call)
        return summary

    def add(self, call: CallCost) -> None:
        self._add_item(LineItem.of(call))

    def _add_item(self, item: LineItem) -> None:
        mine = self.items.get(item.key)
        if mine is None:
            self.items[item.key] = replace(item)
        else:
            mine.add(item)

    def merge(self, other: CostSummary) -> None:
        """Add ``other``'s calls. Amounts in another currency cannot be added: their usage
        is, and their cost becomes unknown."""
        for item in other.items.values():
            if other.currency != self.currency:
                item = replace(item, cost=None)
            self._add_item(item)

    @property
    def empty(self) -> bool:
        return not self.items

    @property
    def total(self) -> float:
        """The priced calls' cost (all of it when ``complete``)."""
        return sum(i.cost for i in self.items.values() if i.cost is not None)

    @property
    def complete(self) -> bool:
        """Every call was priced."""
        return all(i.cost is not None for i in self.items.values())

    @property
    def estimated(self) -> bool:
        return any(i.estimated for i in self.items.values())

    def unpriced(self) -> list[ItemKey]:
        return [k for k, i in self.items.items() if i.cost is None]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "currency": self.currency,
            "total": round(self.total, DECIMALS),
            "complete": self.complete,
            "items": [self.items[k].to_json() for k in sorted(self.items)],
        }
        if self.estimated:
            out["estimated"] = True
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any] | None, currency: str = "USD") -> CostSummary:
        """A stored summary (an empty one in ``currency`` for None)."""
        if not data:
            return cls(currency)
        summary = cls(str(data.get("currency") or currency))
        for raw in data.get("items") or []:
            summary._add_item(LineItem.from_json(raw))
        return summary


def merged(stored: dict[str, Any] | None, added: dict[str, Any]) -> dict[str, Any]:
    """A stored summary with another added (what a record's cost becomes)."""
    addition = CostSummary.from_json(added)
    summary = CostSummary.from_json(stored, addition.currency)
    summary.merge(addition)
    return summary.to_json()
