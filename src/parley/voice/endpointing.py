"""End-of-turn decision: how long a silence ends the caller's turn, from what the audio
(Smart Turn) and the words (the text model, a dangling last word) say.

The rule (docs/turn-taking.md draws it): the clearer the evidence that the caller has
finished, the shorter the silence that ends the turn.

* a dangling last word ("… with", "… my") → ``unfinished_delay``;
* the words are surely finished, or the words and the audio agree → ``min_endpointing_delay``;
* one of them says finished (the words, or the audio while the words are not clearly
  unfinished) → ``sure_secs``;
* otherwise → ``max_endpointing_delay``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from parley.config import TurnSettings

# A transcript ending in one of these almost never ends a turn ("I'd like a pizza with...").
_DANGLING = frozenset(
    "a an the and or but so because with to of for in on at from by my your our their "
    "his her its is are was were if that which who um uh like".split()
)
_LAST_WORD = re.compile(r"([A-Za-z']+)\W*$")


def ends_with_dangling_word(text: str) -> bool:
    stripped = text.strip()
    # "What are you waiting for?" is whole; whether a question mark is right (Whisper
    # writes one on cut-off words too: "How long does it take to?") is the text model's call.
    if not stripped or stripped[-1] in "?!":
        return False
    if stripped.endswith(("...", "…")):
        return True
    match = _LAST_WORD.search(stripped)
    return bool(match and match.group(1).lower() in _DANGLING)


@dataclass(frozen=True, slots=True)
class EndOfTurnEvidence:
    """What is known once the VAD declared a silence and the words before it are
    transcribed."""

    text: str
    """The transcript of the turn so far."""
    p_audio: float | None
    """Smart Turn's P(complete) on the turn's audio; None when it was not asked, because
    the words decided alone (:func:`audio_matters`)."""
    p_text: float | None
    """The text model's P(the message ends here); None when it is off or failed."""


def words_matter(text: str, cfg: TurnSettings) -> bool:
    """Whether the text model's verdict on ``text`` can change :func:`finish_delay`: not
    after a dangling last word, which waits ``unfinished_delay`` whatever it says."""
    return not (cfg.use_text_hint and ends_with_dangling_word(text))


def audio_matters(text: str, p_text: float | None, cfg: TurnSettings) -> bool:
    """Whether Smart Turn's verdict can change :func:`finish_delay` once the words are
    known: not after a dangling word, nor when the text model is sure either way (at or
    above ``text_sure``, or under ``text_floor``). Then the audio model is not run: it is
    the largest share of a worker's CPU per turn (``make bench-load``'s profile)."""
    if not words_matter(text, cfg):
        return False
    if p_text is None:
        return True
    return cfg.text_floor <= p_text < cfg.text_sure


def finish_delay(evidence: EndOfTurnEvidence, cfg: TurnSettings) -> float:
    """The silence after the caller's last speech that ends their turn."""
    text = evidence.text
    if not words_matter(text, cfg):
        return max(cfg.unfinished_delay, cfg.max_endpointing_delay)
    audio = evidence.p_audio is not None and evidence.p_audio >= cfg.eou_threshold
    p_text = evidence.p_text
    if p_text is None:
        # No text model: the audio, and a question mark (Whisper writes one for most
        # whole questions; Smart Turn often misses a synthetic voice's falling pitch).
        if audio or text.rstrip().endswith("?"):
            return cfg.min_endpointing_delay
        return cfg.max_endpointing_delay
    words = p_text >= cfg.text_threshold
    if p_text >= cfg.text_sure or (words and audio):
        return cfg.min_endpointing_delay
    if words or (audio and p_text >= cfg.text_floor):
        return min(max(cfg.sure_secs, cfg.min_endpointing_delay), cfg.max_endpointing_delay)
    return cfg.max_endpointing_delay
