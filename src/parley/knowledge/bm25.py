"""Okapi BM25 over short documents, in pure Python: the knowledge files it serves hold
tens to a few thousand facts, where an inverted index in dictionaries answers a question
in about 0.1 ms (84 µs measured for the demo's 40 facts) and needs no model and nothing
fetched at run time."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import snowballstemmer

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")  # letters of any script ("café"), digits
_HYPHENATED = re.compile(r"[^\W_]+(?:-[^\W_]+)+")

# Words that carry no topic: without them a question's few content words decide.
STOPWORDS = frozenset(
    """a about am an and any are as at be been but by can could did do does doing for
    from get got had has have how i i'd i'll i'm if in into is it it's its just let me
    my of on or our please so some than that the their them then there these they this
    to too us was we we're were what when where which who why will with would you you're
    your yours hi hello hey okay ok yes no thanks thank tell know like want need""".split()
)


_STEMMER = snowballstemmer.stemmer("english")


def terms(text: str) -> list[str]:
    """The index terms of ``text``: lower-cased words, stop words dropped, Snowball
    (Porter 2) stems, so "locate"/"located"/"location" and "booking"/"book" meet. A
    hyphenated word also counts joined ("wi-fi" is "wifi" too, "walk-ins" "walkins")."""
    lowered = text.lower()
    words = [w for w in _WORD.findall(lowered) if w not in STOPWORDS]
    words += ["".join(parts.split("-")) for parts in _HYPHENATED.findall(lowered)]
    return list(_STEMMER.stemWords([w.removesuffix("'s") for w in words]))


class BM25Index:
    """Scores documents against a query with BM25 (k1, b as in the literature)."""

    def __init__(self, documents: Sequence[str], *, k1: float = 1.2, b: float = 0.75) -> None:
        self._k1 = k1
        self._b = b
        docs = [Counter(terms(d)) for d in documents]
        self._lengths = [sum(c.values()) for c in docs]
        self._avg = (sum(self._lengths) / len(self._lengths)) if self._lengths else 0.0
        # An inverted index: a question is scored against only the facts that share one
        # of its terms, not every fact of a large file.
        self._postings: dict[str, list[tuple[int, int]]] = {}
        for i, doc in enumerate(docs):
            for term, tf in doc.items():
                self._postings.setdefault(term, []).append((i, tf))
        n = len(docs)
        # The "+1" form of IDF: never negative, so a term in most facts still counts a little.
        self._idf = {
            t: math.log(1 + (n - len(p) + 0.5) / (len(p) + 0.5)) for t, p in self._postings.items()
        }

    def __len__(self) -> int:
        return len(self._lengths)

    def scores(self, query: str) -> dict[int, float]:
        """Each document sharing a term with ``query``, and its score."""
        out: dict[int, float] = {}
        for term in set(terms(query)):
            idf = self._idf.get(term)
            if idf is None:
                continue
            for i, tf in self._postings[term]:
                norm = self._k1 * (1 - self._b + self._b * self._lengths[i] / self._avg)
                out[i] = out.get(i, 0.0) + idf * tf * (self._k1 + 1) / (tf + norm)
        return out

    def top(self, query: str, k: int) -> list[tuple[int, float]]:
        """The ``k`` best documents for ``query`` with a score above zero, best first."""
        # Ties keep the file's order (the earlier fact first), as a stable sort does.
        ranked = sorted(self.scores(query).items(), key=lambda pair: (-pair[1], pair[0]))
        return [(i, s) for i, s in ranked[:k] if s > 0]
