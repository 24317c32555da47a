"""The agent's knowledge: the knowledge file, its retrieval, how a reply is grounded on
it (quoted or restated), the shipped demo agent's files, and how answers are scored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from parley.config import Settings
from parley.knowledge import (
    KnowledgeBase,
    KnowledgeFileError,
    ground,
    load_agent_knowledge,
    load_facts,
    terms,
)
from parley.knowledge.answer_check import Question, QuestionSetError, load_questions, states_facts

ROOT = Path(__file__).resolve().parent.parent

FACTS = """# A shop
Notes for the author are not facts.

## Opening hours (open, close)
- We are open Tuesday to Sunday, from noon to 10 pm.
- We are closed on Mondays.

## Other
- Free Wi-Fi is available for guests.
- Dogs are welcome on the terrace.
* Gift vouchers are sold at the bar.
"""


def write(tmp_path: Path, text: str, name: str = "knowledge.md") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_list_items_are_facts_under_their_heading(tmp_path: Path) -> None:
    facts = load_facts(write(tmp_path, FACTS))
    assert [f.text for f in facts][:2] == [
        "We are open Tuesday to Sunday, from noon to 10 pm.",
        "We are closed on Mondays.",
    ]
    assert facts[0].topic == "Opening hours (open, close)"
    assert len(facts) == 5  # prose is not a fact; "*" items are


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (None, "No such file"),
        ("# Only a heading\nSome prose.\n", "no facts"),
        ("- " + "x" * 501, "line 1"),
    ],
)
def test_an_unusable_knowledge_file_says_what_is_wrong(
    tmp_path: Path, text: str | None, problem: str
) -> None:
    path = tmp_path / "knowledge.md" if text is None else write(tmp_path, text)
    with pytest.raises(KnowledgeFileError, match=problem) as caught:
        load_facts(path)
    assert str(path) in str(caught.value)


def test_terms_stem_drop_stop_words_and_join_hyphenated_words() -> None:
    assert terms("Are you closed?") == terms("close")
    assert "wifi" in terms("Do you have wifi") and "wifi" in terms("Free Wi-Fi")
    assert terms("thank you, okay") == []


def test_retrieval_finds_the_fact_by_its_words_or_its_heading(tmp_path: Path) -> None:
    kb = KnowledgeBase.from_file(write(tmp_path, FACTS))
    assert kb.relevant("Can I bring my dog?")[0].text == "Dogs are welcome on the terrace."
    assert kb.relevant("Is there wifi?")[0].text.startswith("Free Wi-Fi")
    # "close" is only in the heading: both hours facts are found through it.
    assert {f.text for f in kb.relevant("When do you close?", 2)} == {
        "We are open Tuesday to Sunday, from noon to 10 pm.",
        "We are closed on Mondays.",
    }
    assert kb.relevant("Thank you so much!") == []
    assert kb.relevant("Do you sell bicycles?") == []


def test_quote_says_the_best_fact_restate_gives_the_facts_to_the_model(tmp_path: Path) -> None:
    kb = KnowledgeBase.from_file(write(tmp_path, FACTS), per_question=2)
    quoted = ground(kb, "Can I bring my dog?", "quote")
    assert quoted.quote == "Dogs are welcome on the terrace."
    restated = ground(kb, "Are you open on Monday?", "restate")
    assert restated.quote is None and len(restated.facts) == 2
    message = restated.user_message("Are you open on Monday?")
    assert message.endswith("\n\nAre you open on Monday?")
    assert "We are closed on Mondays." in message.split("\n\n")[0]
    # Words that match no fact go to the model as they are, in either mode.
    for mode in ("quote", "restate"):
        nothing = ground(kb, "Hello there, thanks!", mode)  # type: ignore[arg-type]
        assert nothing.quote is None and nothing.user_message("Hi") == "Hi"


def agent_file(tmp_path: Path, monkeypatch: Any, body: str) -> None:
    (tmp_path / "agent").mkdir()
    write(tmp_path / "agent", FACTS, "facts.md")
    path = write(tmp_path / "agent", body, "parley.toml")
    monkeypatch.setenv("PARLEY_CONFIG", str(path))
    monkeypatch.chdir(tmp_path)  # elsewhere: the relative path is the agent file's


def test_a_relative_knowledge_file_is_found_beside_the_agent_file(
    tmp_path: Path, monkeypatch: Any
) -> None:
    agent_file(tmp_path, monkeypatch, '[agent]\nknowledge_file = "facts.md"\n')
    knowledge = load_agent_knowledge(Settings())
    assert knowledge is not None
    assert knowledge.path == tmp_path / "agent" / "facts.md"
    assert len(knowledge.base.facts) == 5


def test_auto_quotes_with_the_embedded_model_and_restates_with_a_remote_one(
    tmp_path: Path, monkeypatch: Any
) -> None:
    agent_file(tmp_path, monkeypatch, '[agent]\nknowledge_file = "facts.md"\n')
    embedded = load_agent_knowledge(Settings())
    remote = load_agent_knowledge(
        Settings(llm={"provider": "openai", "base_url": "http://127.0.0.1:9/v1"})
    )
    chosen = load_agent_knowledge(Settings(agent={"knowledge_answers": "restate"}))
    assert embedded is not None and remote is not None and chosen is not None
    assert (embedded.mode, remote.mode, chosen.mode) == ("quote", "restate", "restate")
    # With tools the envelope decides: never a quote.
    assert embedded.ground("Can I bring my dog?", quote=False).quote is None


def test_no_knowledge_file_no_knowledge_and_a_missing_one_fails_at_start(
    tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PARLEY_CONFIG", raising=False)
    assert load_agent_knowledge(Settings()) is None
    with pytest.raises(KnowledgeFileError, match=r"missing\.md"):
        load_agent_knowledge(Settings(agent={"knowledge_file": "missing.md"}))


def test_the_shipped_demo_agent_loads_its_knowledge_and_question_sets(monkeypatch: Any) -> None:
    monkeypatch.setenv("PARLEY_CONFIG", str(ROOT / "parley.toml"))
    knowledge = load_agent_knowledge(Settings())
    assert knowledge is not None and knowledge.mode == "quote"
    assert len(knowledge.base.facts) >= 30
    for name in ("questions.yaml", "questions-heldout.yaml"):
        assert len(load_questions(ROOT / "agents" / "bistro" / name)) >= 40


def test_an_answer_is_correct_when_it_states_every_expected_fact_and_nothing_rejected() -> None:
    lunch = Question("When is lunch?", [["noon", "12"], ["3 pm", "three"]], [])
    assert states_facts("Lunch is from noon to 3 pm.", lunch)
    assert not states_facts("Lunch starts at noon.", lunch)
    deliver = Question("Do you deliver?", [["not deliver", "no"]], ["we deliver"])
    assert states_facts("No, sorry.", deliver)
    assert not states_facts("Yes, we deliver!", deliver)
    # Whole words only: "no" is not in "noon", "12" is not in "120".
    assert not states_facts("We open at noon.", deliver)
    assert not states_facts("It is 120 dollars, from three", lunch)


def test_a_broken_question_set_says_where(tmp_path: Path) -> None:
    with pytest.raises(QuestionSetError, match="item 2"):
        load_questions(write(tmp_path, "- q: a\n  expect: [[x]]\n- q: b\n", "q.yaml"))
    with pytest.raises(QuestionSetError, match="non-empty list"):
        load_questions(write(tmp_path, "{}", "q.yaml"))


def test_numbered_and_wrapped_items_are_facts_and_a_binary_file_is_refused(
    tmp_path: Path,
) -> None:
    facts = load_facts(
        write(
            tmp_path, "## Hours\n1. Open at noon,\n   until 10 pm.\n2) Closed Mondays.\n+ Wifi.\n"
        )
    )
    assert [f.text for f in facts] == ["Open at noon, until 10 pm.", "Closed Mondays.", "Wifi."]
    binary = tmp_path / "binary.md"
    binary.write_bytes(b"- caf\xe9\n")
    with pytest.raises(KnowledgeFileError, match="not UTF-8"):
        load_facts(binary)


def test_retrieval_reads_words_of_any_script(tmp_path: Path) -> None:
    kb = KnowledgeBase.from_file(write(tmp_path, "- Our café serves crème brûlée.\n- Tea.\n"))
    assert kb.relevant("Is there a café?")[0].text.startswith("Our café")
