"""Whether a spoken answer states the facts a question expects: how a knowledge file's
question set (``agents/bistro/questions.yaml``) scores an agent's answers.

A question lists its expected facts, each as the ways it may be said (any one counts);
an answer is correct when it states every expected fact and none of the question's
``reject`` phrases (the wrong answer to a yes/no question can hold the right words: "we
do not deliver" and "yes, we deliver"). Matching is on whole words, case-insensitive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml


class QuestionSetError(ValueError):
    """A question set that cannot be used."""


@dataclass(frozen=True, slots=True)
class Question:
    text: str
    expect: list[list[str]]
    reject: list[str]


def load_questions(path: Path) -> list[Question]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise QuestionSetError(f"question set {path}: {exc}") from exc
    if not isinstance(raw, list) or not raw:
        raise QuestionSetError(f"question set {path}: expected a non-empty list of questions")
    questions = []
    for n, item in enumerate(raw, start=1):
        try:
            expect = expected_facts(item["expect"])
            questions.append(
                Question(str(item["q"]), expect, [str(r) for r in item.get("reject", [])])
            )
        except (KeyError, TypeError) as exc:
            raise QuestionSetError(f"question set {path}, item {n}: needs q and expect") from exc
        except ValueError as exc:
            raise QuestionSetError(f"question set {path}, item {n}: {exc}") from exc
        if not expect:
            raise QuestionSetError(f"question set {path}, item {n}: no expected fact")
    return questions


def expected_facts(raw: object) -> list[list[str]]:
    """``expect`` as written: a list of facts, each a list of ways to say it. A flat list
    (``[curry, rice]``) would read each word as a list of letters, so it is refused; so is
    a number where YAML read one (an unquoted ``9:30`` is YAML 1.1's 570): quote it."""
    if not isinstance(raw, list):
        raise TypeError("expect must be a list")
    facts = []
    for fact in raw:
        if not isinstance(fact, list) or not fact:
            raise ValueError(f"each expected fact is a non-empty list of ways to say it: {fact!r}")
        if not all(isinstance(alt, str) for alt in fact):
            raise ValueError(f"quote every way to say a fact (YAML reads 9:30 as 570): {fact!r}")
        facts.append(list(fact))
    return facts


def _says(answer: str, phrase: str) -> bool:
    pattern = r"(?<![a-z0-9])" + re.escape(phrase.lower()) + r"(?![a-z0-9])"
    return re.search(pattern, answer) is not None


def states_facts(answer: str, question: Question) -> bool:
    said = re.sub(r"\s+", " ", answer.lower())
    if any(_says(said, reject) for reject in question.reject):
        return False
    return all(any(_says(said, alt) for alt in fact) for fact in question.expect)
