"""How one turn of a scripted call is scored: the caller's words against what the agent
heard (word error rate), the answer against the expected facts, and the tool calls the
agent made against those expected."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from parley.evaluation.scenarios import ExpectedCall

_WORDS = re.compile(r"[a-z0-9']+")


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """The Levenshtein distance between two word sequences (substitutions, insertions
    and deletions of whole words): a word error rate's numerator."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, start=1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(edits, reference words) over lower-cased words."""
    ref = _WORDS.findall(reference.lower())
    return edit_distance(ref, _WORDS.findall(hypothesis.lower())), len(ref)


def _fits(expected: Any, actual: Any) -> bool:
    """``actual`` holds ``expected``: equal scalars (numbers compare by value, strings
    case-insensitively), and every key of an expected mapping, recursively."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and _fits(v, actual[k]) for k, v in expected.items()
        )
    if isinstance(expected, str) and isinstance(actual, str):
        return expected.strip().lower() == actual.strip().lower()
    if isinstance(expected, bool) or isinstance(actual, bool):
        return expected is actual
    if isinstance(expected, int | float) and isinstance(actual, int | float):
        return float(expected) == float(actual)
    return bool(expected == actual)


def calls_made(expected: Iterable[ExpectedCall], made: list[dict[str, Any]]) -> bool:
    """Every expected call is among ``made`` (each made call used once), by name and with
    at least the expected arguments."""
    left = list(made)
    for want in expected:
        match = next(
            (
                m
                for m in left
                if m.get("name") == want.name and _fits(want.arguments, m.get("arguments", {}))
            ),
            None,
        )
        if match is None:
            return False
        left.remove(match)
    return True
