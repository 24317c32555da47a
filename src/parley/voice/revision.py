"""Revised finals, the pure part: a turn's audio as one window, whether a re-decoding of
it says other words than its finals, and which segment each revised word belongs to.

Pure functions (no clocks, no I/O, no models), so they are exactly testable; the session
side is ``voice/revising.py``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Protocol

import numpy as np

NUMBER_WORDS = {
    "0": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five",
    "6": "six", "7": "seven", "8": "eight", "9": "nine", "10": "ten",
}  # fmt: skip
"""Whisper writes a small number as a digit in one context and a word in another: the
same words for a revision."""

_WORD = re.compile(r"[a-z0-9']+")


class HeardAudio(Protocol):
    """A stretch of the caller's speech (a ``Segment``): its 32 ms windows, numbered."""

    first_window: int
    audio: list[np.ndarray]


def joined_audio(segments: Iterable[HeardAudio]) -> np.ndarray:
    """The turn's segments as one window, in order: each with its pre-roll and the short
    silence that ended it. A window that two segments hold (an overlap carried into the
    next) is taken once; the longer silences between segments are left out."""
    windows: dict[int, np.ndarray] = {}
    for seg in segments:
        for i, window in enumerate(seg.audio):
            windows.setdefault(seg.first_window + i, window)
    if not windows:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate([windows[n] for n in sorted(windows)]).astype(np.float32, copy=False)


def words(text: str) -> list[str]:
    """``text`` as compared: lower case, no punctuation, small numbers as words."""
    out = []
    for raw in _WORD.findall(text.lower().replace("-", " ")):
        word = raw.strip("'")
        if word:
            out.append(NUMBER_WORDS.get(word, word))
    return out


def differs(final: str, revised: str) -> bool:
    """The revised text says other words than the final (case, punctuation and the
    spelling of small numbers aside)."""
    return words(final) != words(revised)


def split_by_segments(finals: dict[int, str], revised: str) -> dict[int, str]:
    """The revised transcript of a whole turn, cut where its segments' finals were cut:
    every revised word goes to the segment of the final word it stands for (aligned by
    the fewest edits over the compared words); a word the finals did not have goes with
    the word before it. A word cut in two by a segment boundary ("a ta" | "ble for
    two") is thus whole in the first segment ("a table" | "for two")."""
    said: list[tuple[int, str]] = [
        (index, token) for index in sorted(finals) for token in finals[index].split()
    ]
    heard = revised.split()
    keys_said = ["".join(words(t)) for _, t in said]
    keys_heard = ["".join(words(t)) for t in heard]
    out: dict[int, list[str]] = {index: [] for index in finals}
    if not said:
        if finals and heard:
            out[min(finals)] = heard
        return {index: " ".join(tokens) for index, tokens in out.items()}
    current = said[0][0]
    for i, j in _alignment(keys_said, keys_heard):
        if i is not None:
            current = said[i][0]
        if j is not None:
            out[current].append(heard[j])
    return {index: " ".join(tokens) for index, tokens in out.items()}


def _alignment(a: list[str], b: list[str]) -> list[tuple[int | None, int | None]]:
    """The pairs of a least-edit alignment of ``a`` and ``b``, in order: (i, j) for a
    match or a substitution, (i, None) for a deletion, (None, j) for an insertion."""
    n, m = len(a), len(b)
    cost = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        cost[i][0] = i
    for j in range(m + 1):
        cost[0][j] = j
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            cost[i][j] = min(
                cost[i - 1][j - 1] + (a[i - 1] != b[j - 1]),
                cost[i - 1][j] + 1,
                cost[i][j - 1] + 1,
            )
    pairs: list[tuple[int | None, int | None]] = []
    i, j = n, m
    while i > 0 or j > 0:
        # Ties go to a match, then to dropping the LATER word of ``a``: a word the
        # revision joined ("ta" + "ble") stays with the segment it began in.
        same = i > 0 and j > 0 and a[i - 1] == b[j - 1]
        if same and cost[i][j] == cost[i - 1][j - 1]:
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif i > 0 and cost[i][j] == cost[i - 1][j] + 1:
            pairs.append((i - 1, None))
            i -= 1
        elif i > 0 and j > 0 and cost[i][j] == cost[i - 1][j - 1] + 1:
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        else:
            pairs.append((None, j - 1))
            j -= 1
    pairs.reverse()
    return pairs
