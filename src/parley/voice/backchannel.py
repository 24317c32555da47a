"""Is speech that overlaps the agent a backchannel ("yeah", "mm-hmm", "got it") or a real
interruption? Pure logic over what the overlap's transcript says so far.

One word that is neither a backchannel nor a cue to stop ("no", "wait", "what"…) is not
enough to stop the agent: over a short sound Whisper's one word is as often a mishearing
of a backchannel ("M" for "mm-hmm", "Yay" for "yeah") as a word said. It takes a cue, a
second word, or speech that goes on past a backchannel's length (barge-in's rule)."""

from __future__ import annotations

import re
from enum import Enum

# Short acknowledgements a listener says while the other person talks: they mean "go on",
# not "stop". Not "no", "wait", "stop", "sorry", "what": those are interruptions.
BACKCHANNEL_PHRASES = [
    "yeah",
    "yes",
    "yep",
    "yup",
    "yeah yeah",
    "ok",
    "okay",
    "uh huh",
    "mm hmm",
    "mhm",
    "hmm",
    "mm",
    "um hum",
    "uh",
    "um",
    "oh",
    "ah",
    "aha",
    "right",
    "alright",
    "all right",
    "sure",
    "i see",
    "got it",
    "gotcha",
    "cool",
    "great",
    "nice",
    "fine",
    "good",
    "perfect",
    "exactly",
    "of course",
    "indeed",
    "true",
    "makes sense",
    "that makes sense",
    "i know",
    "uh yeah",
    "oh okay",
    "oh right",
    "thanks",
    "thank you",
]

# Words that ask the agent to stop or repeat on their own, even said once and alone.
INTERRUPTION_CUES = [
    "no",
    "nope",
    "stop",
    "wait",
    "hold",
    "hang",
    "sorry",
    "excuse",
    "pardon",
    "what",
    "huh",
    "actually",
    "hey",
    "hello",
    "but",
    "cancel",
    "nah",
    "help",
]

_WORD = re.compile(r"[a-z']+")
# Whisper spells the same sounds many ways: "Uh-huh", "Mm-hmm", "Mmhmm", "Okay.", "OK".
_SPELLINGS = {
    "uhhuh": ["uh", "huh"],
    "uhuh": ["uh", "huh"],
    "mmhmm": ["mm", "hmm"],
    "mhmm": ["mm", "hmm"],
    "mmhm": ["mm", "hmm"],
    "hmmm": ["hmm"],
    "mmm": ["mm"],
    "umhum": ["um", "hum"],
    "k": ["ok"],
    "yeh": ["yeah"],
    "yea": ["yeah"],
    "ya": ["yeah"],
}


class Overlap(Enum):
    NOTHING = "nothing"
    """No words: a cough, a knock, noise."""
    BACKCHANNEL = "backchannel"
    UNDECIDED = "undecided"
    """Only the start of what may be a backchannel ("I …" of "I see") heard so far, or one
    word that is no cue while the speech goes on."""
    UNSURE = "unsure"
    """It ended with one word that is neither a backchannel nor a cue: too little to
    stop the agent for."""
    INTERRUPTION = "interruption"


def words_of(text: str) -> list[str]:
    words: list[str] = []
    for raw in _WORD.findall(text.lower().replace("-", "")):
        word = raw.strip("'")
        if word:
            words.extend(_SPELLINGS.get(word, [word]))
    return words


_PHRASES = [tuple(words_of(p)) for p in BACKCHANNEL_PHRASES]
_CUES = frozenset(INTERRUPTION_CUES)


def _covered(words: list[str], *, partial_tail: bool) -> bool:
    """Can ``words`` be split into backchannel phrases (the last one possibly only
    begun, when ``partial_tail``)?"""
    if not words:
        return True
    for phrase in _PHRASES:
        n = len(phrase)
        if tuple(words[:n]) == phrase and _covered(words[n:], partial_tail=partial_tail):
            return True
        if partial_tail and len(words) < n and phrase[: len(words)] == tuple(words):
            return True
    return False


def classify_overlap(text: str, *, finished: bool) -> Overlap:
    """What the overlap's transcript ``text`` is; ``finished`` once the speech has ended
    (a begun phrase can then no longer become a backchannel)."""
    words = words_of(text)
    if not words:
        return Overlap.NOTHING
    if _covered(words, partial_tail=False):
        return Overlap.BACKCHANNEL
    if not finished and _covered(words, partial_tail=True):
        return Overlap.UNDECIDED
    if len(words) == 1 and words[0] not in _CUES:
        return Overlap.UNDECIDED if not finished else Overlap.UNSURE
    return Overlap.INTERRUPTION


def repeats_agent(text: str, agent_text: str, *, share: float = 0.8) -> bool:
    """Are the overlap's words (nearly all) words the agent has just said? Then the
    microphone heard the agent's own voice (an echo), not the caller."""
    words = words_of(text)
    said = set(words_of(agent_text))
    if not words or not said:
        return False
    return sum(w in said for w in words) >= share * len(words)
