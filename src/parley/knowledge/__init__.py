"""What the agent knows about its business: a knowledge file of facts, and the retrieval
that puts the few relevant to a caller's words into the reply's prompt."""

from parley.knowledge.bm25 import BM25Index, terms
from parley.knowledge.facts import Fact, KnowledgeBase, KnowledgeFileError, load_facts
from parley.knowledge.grounding import (
    AgentKnowledge,
    AnswerMode,
    Grounding,
    ground,
    load_agent_knowledge,
    with_facts,
)

__all__ = [
    "AgentKnowledge",
    "AnswerMode",
    "BM25Index",
    "Fact",
    "Grounding",
    "KnowledgeBase",
    "KnowledgeFileError",
    "ground",
    "load_agent_knowledge",
    "load_facts",
    "terms",
    "with_facts",
]
