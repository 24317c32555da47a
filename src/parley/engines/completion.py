"""What a structured (JSON) completion hands back: the text and why generation stopped.

The reason matters because output the model did not finish (it ran out of tokens) can
look like a smaller valid answer once repaired; the orchestrator must know it was cut
off so that nothing in it is acted on (see ``parley.orchestration.envelope``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class JSONCompletion:
    text: str
    finish_reason: str | None = None
    """As the engine reports it (``stop``, ``length``…); None when it does not say."""

    @property
    def cut_off(self) -> bool:
        """Generation was stopped by the token budget, not by the model."""
        return self.finish_reason == "length"
