"""Scenario files: scripted callers, each a conversation of turns.

```yaml
voice: en-us                 # espeak-ng voice of the callers (not the agent's)
scenarios:
  - name: hours then a dish
    turns:
      - say: When does the kitchen take last orders?
        expect: [["9:30", "nine thirty"]]     # facts the answer states (any spelling)
      - say: Is there anything vegan?
        expect: [["curry"]]
        reject: ["risotto"]                    # the answer is wrong if it says these
      - wav: recordings/booking.wav            # a recorded caller instead of `say`
        tools: [{name: book_table, arguments: {people: 4}}]  # calls the agent must make
```

A turn's ``tools`` are the calls the agent must make in it, by name with at least the
given arguments (a subset: other arguments may be there too).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from parley.knowledge.answer_check import Question, expected_facts


class ScenarioError(ValueError):
    """A scenario file that cannot be played; the message says where."""


@dataclass(frozen=True, slots=True)
class ExpectedCall:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ScenarioTurn:
    say: str | None
    """What the caller says (spoken by espeak-ng), or None with ``wav``."""
    wav: Path | None
    question: Question
    """The words and the facts the answer must state (its ``expect`` may be empty)."""
    tools: list[ExpectedCall]


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    turns: list[ScenarioTurn]
    voice: str


def load_scenarios(path: Path) -> list[Scenario]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ScenarioError(f"scenario file {path}: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("scenarios"), list):
        raise ScenarioError(f"scenario file {path}: expected a mapping with a scenarios list")
    voice = str(raw.get("voice", "en-us"))
    scenarios = []
    for n, item in enumerate(raw["scenarios"], start=1):
        where = f"scenario file {path}, scenario {n}"
        if not isinstance(item, dict) or not item.get("turns"):
            raise ScenarioError(f"{where}: needs a name and turns")
        turns = [
            _turn(t, path.parent, f"{where}, turn {k}")
            for k, t in enumerate(item["turns"], start=1)
        ]
        scenarios.append(Scenario(str(item.get("name", f"scenario {n}")), turns, voice))
    if not scenarios:
        raise ScenarioError(f"scenario file {path}: no scenarios")
    return scenarios


def _turn(item: Any, folder: Path, where: str) -> ScenarioTurn:
    if not isinstance(item, dict) or ("say" in item) == ("wav" in item):
        raise ScenarioError(f"{where}: give exactly one of say (words) or wav (a recording)")
    try:
        expect = expected_facts(item.get("expect", []))
        reject = [str(r) for r in item.get("reject", [])]
        tools = [
            ExpectedCall(str(t["name"]), dict(t.get("arguments", {})))
            for t in item.get("tools", [])
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise ScenarioError(f"{where}: expect, reject or tools malformed ({exc})") from exc
    wav = folder / str(item["wav"]) if "wav" in item else None
    if wav is not None and not wav.is_file():
        raise ScenarioError(f"{where}: no recording at {wav}")
    say = str(item["say"]) if "say" in item else None
    return ScenarioTurn(say, wav, Question(say or "", expect, reject), tools)
