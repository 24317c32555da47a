"""End-of-turn decision: Smart Turn on the audio, plus a cheap text hint."""

from __future__ import annotations

import re

# A transcript ending in one of these almost never ends a turn ("I'd like a pizza with...").
_DANGLING = frozenset(
    "a an the and or but so because with to of for in on at from by my your our their "
    "his her its is are was were if that which who um uh like".split()
)
_LAST_WORD = re.compile(r"([A-Za-z']+)\W*$")


def ends_with_dangling_word(text: str) -> bool:
    stripped = text.strip()
    # Whisper puts a full stop on nearly everything, so only ? and ! close a turn by text.
    if not stripped or stripped[-1] in "?!":
        return False
    if stripped.endswith(("...", "…")):
        return True
    match = _LAST_WORD.search(stripped)
    return bool(match and match.group(1).lower() in _DANGLING)


def text_says_complete(text: str, probability: float, threshold: float) -> bool:
    """Combine the audio model's P(complete) with what the transcript's text shows.

    A dangling last word vetoes "complete". A question mark makes it complete: Whisper
    only writes one when the words heard form a whole question, and on synthetic or
    accented voices Smart Turn often misses the falling pitch of a finished question
    (it gave 0.02-0.14 to "How many minutes are there in one day?" read by espeak-ng).
    """
    if ends_with_dangling_word(text):
        return False
    if text.rstrip().endswith("?"):
        return True
    return probability >= threshold
