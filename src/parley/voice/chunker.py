"""Turns a stream of LLM text into speakable sentences.

Markdown markup, emoji and code are stripped: a voice agent must never read out ``**``,
a bullet, a URL's brackets or a code block. The first chunk of a reply may end at a
clause boundary (comma, colon) once it is long enough, so speech starts sooner.
"""

from __future__ import annotations

import re

_FENCE = "```"
_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"')\]]*\s+|\n+")
_CLAUSE_END = re.compile(r"(?<=[,;:—])\s+")
# Words that open a new phrase: a first chunk cut before one still sounds natural.
_PHRASE_STARTERS = frozenset(
    (
        "that which who where when while because but and or so to with for from about than as if"
    ).split()
)
_ABBREVIATIONS = frozenset(
    {
        "mr.",
        "mrs.",
        "ms.",
        "dr.",
        "st.",
        "vs.",
        "etc.",
        "e.g.",
        "i.e.",
        "jr.",
        "sr.",
        "no.",
        "approx.",
    }
)
_EMOJI = re.compile(
    "["
    "\U0001f000-\U0001faff"  # pictographs, emoticons, transport, supplemental symbols
    "\U00002600-\U000027bf"  # misc symbols and dingbats
    "\U0001f1e6-\U0001f1ff"  # regional indicators (flags)
    "\U0000fe0f\U0000200d"  # variation selector, zero-width joiner
    "\U00002b00-\U00002bff"
    "]+"
)
_INLINE_CODE = re.compile(r"`[^`]*`")
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_URL = re.compile(r"https?://\S+")
_LINE_MARKUP = re.compile(r"(?m)^\s*(?:#{1,6}\s+|>\s*|[-*+•]\s+|\d+[.)]\s+)")
_EMPHASIS = re.compile(r"(\*{1,3}|_{1,3}|~~)(?=\S)(.+?)(?<=\S)\1")
_LEFTOVER = re.compile(r"[*_#`|~<>]")


def clean_for_speech(text: str) -> str:
    """Strip markdown, emoji and code from one piece of text."""
    text = _INLINE_CODE.sub(" ", text)
    text = _LINK.sub(r"\1", text)
    text = _URL.sub(" ", text)
    text = _LINE_MARKUP.sub("", text)
    text = _EMPHASIS.sub(r"\2", text)
    text = _EMOJI.sub(" ", text)
    text = _LEFTOVER.sub(" ", text)
    return " ".join(text.split())


class SentenceChunker:
    def __init__(
        self,
        min_chars: int = 12,
        first_clause_chars: int = 20,
        first_phrase_words: int = 4,
        first_max_words: int = 7,
    ) -> None:
        self._raw = ""  # text not yet split, code fences still in it
        self._text = ""  # text outside code, waiting for a sentence end
        self._in_code = False
        self._min_chars = min_chars
        self._first_clause_chars = first_clause_chars
        self._first_phrase_words = first_phrase_words
        self._first_max_words = first_max_words
        self._emitted = 0

    def push(self, delta: str) -> list[str]:
        self._raw += delta
        self._consume_code(final=False)
        return self._split(final=False)

    def flush(self) -> list[str]:
        self._consume_code(final=True)
        return self._split(final=True)

    def _consume_code(self, *, final: bool) -> None:
        while True:
            idx = self._raw.find(_FENCE)
            if idx < 0:
                # Keep trailing backticks back: they may be the start of a fence.
                keep = 0 if final else len(self._raw) - len(self._raw.rstrip("`"))
                cut = len(self._raw) - keep
                if not self._in_code:
                    self._text += self._raw[:cut]
                self._raw = self._raw[cut:]
                return
            if not self._in_code:
                self._text += self._raw[:idx] + "\n"
            self._in_code = not self._in_code
            self._raw = self._raw[idx + len(_FENCE) :]

    def _split(self, *, final: bool) -> list[str]:
        out: list[str] = []
        while True:
            cut = self._find_cut()
            if cut is None:
                break
            piece, self._text = self._text[:cut], self._text[cut:]
            out.extend(self._emit(piece))
        if final:
            out.extend(self._emit(self._text))
            self._text = ""
        return out

    def _find_cut(self) -> int | None:
        for match in _SENTENCE_END.finditer(self._text):
            candidate = self._text[: match.start()].strip()
            if len(candidate) < self._min_chars:
                continue
            last_word = candidate.rsplit(None, 1)[-1].lower()
            if last_word in _ABBREVIATIONS:
                continue
            return match.end()
        if self._emitted == 0:
            for match in _CLAUSE_END.finditer(self._text):
                if len(self._text[: match.start()].strip()) >= self._first_clause_chars:
                    return match.end()
            return self._first_phrase_cut()
        return None

    def _first_phrase_cut(self) -> int | None:
        """Where a long first sentence may be cut so speech starts before it is complete.

        TTS time grows with the text, and the LLM needs time to finish a sentence, so the
        first chunk is cut before a phrase-opening word once it has a few words, or at
        ``first_max_words`` at the latest. Only whole words (followed by a space) count.
        """
        words = list(re.finditer(r"\S+(?=\s)", self._text))
        for i, word in enumerate(words):
            if i >= self._first_max_words:
                return word.start()
            if i >= self._first_phrase_words and word.group().lower() in _PHRASE_STARTERS:
                return word.start()
        return None

    def _emit(self, piece: str) -> list[str]:
        spoken = clean_for_speech(piece)
        if not any(ch.isalnum() for ch in spoken):
            return []
        self._emitted += 1
        return [spoken]
