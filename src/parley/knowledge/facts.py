"""A knowledge file: Markdown whose list items are facts, grouped under headings.

```
## Opening hours
- We are open Tuesday to Sunday, from noon to 10 pm.
- We are closed on Mondays.
```

Each list item is one fact (a whole sentence a caller may be told as it is); the heading
above it is indexed with it, so "when are you open" finds the hours even where a fact
does not say "open". Paragraphs that are not list items are notes for the file's author.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from parley.knowledge.bm25 import BM25Index

MAX_FACT_CHARS = 500


class KnowledgeFileError(ValueError):
    """A knowledge file that cannot be used (missing, empty, or a fact too long)."""


@dataclass(frozen=True, slots=True)
class Fact:
    topic: str
    text: str


_ITEM = re.compile(r"^(?:[-*+]|\d+[.)])\s+(.*)$")


def load_facts(path: Path) -> list[Fact]:
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KnowledgeFileError(f"knowledge file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise KnowledgeFileError(f"knowledge file {path}: not UTF-8 text ({exc.reason})") from exc
    items: list[tuple[int, str, list[str]]] = []  # (line, topic, the item's lines)
    topic = ""
    for number, raw in enumerate(source.splitlines(), start=1):
        line = raw.strip()
        item = _ITEM.match(line)
        if line.startswith("#"):
            topic = line.lstrip("#").strip()
        elif item is not None:
            items.append((number, topic, [item.group(1)]))
        elif line and raw[:1].isspace() and items and items[-1][0] + len(items[-1][2]) == number:
            items[-1][2].append(line)  # an item wrapped onto an indented next line
    facts = []
    for number, heading, lines in items:
        text = " ".join(lines).strip()
        if len(text) > MAX_FACT_CHARS:
            raise KnowledgeFileError(
                f"knowledge file {path}, line {number}: a fact is over "
                f"{MAX_FACT_CHARS} characters; split it"
            )
        if text:
            facts.append(Fact(heading, text))
    if not facts:
        raise KnowledgeFileError(f"knowledge file {path} has no facts (list items)")
    return facts


class KnowledgeBase:
    """Facts and their index: :meth:`relevant` is what a reply's prompt is given."""

    def __init__(self, facts: Sequence[Fact], *, per_question: int = 3) -> None:
        self.facts = list(facts)
        self.per_question = per_question
        self._index = BM25Index([f"{f.topic} {f.text}" for f in self.facts])

    @classmethod
    def from_file(cls, path: Path, *, per_question: int = 3) -> KnowledgeBase:
        return cls(load_facts(path), per_question=per_question)

    def relevant(self, question: str, k: int | None = None) -> list[Fact]:
        """The facts that best match ``question``, best first; none when nothing matches."""
        return [self.facts[i] for i, _ in self._index.top(question, k or self.per_question)]
