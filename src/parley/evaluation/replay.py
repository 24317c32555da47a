"""``parley replay``: a stored session's caller turns answered again by another agent
file (another prompt, model or knowledge), beside what the agent said then.

Each turn is answered after the conversation as it really went (the caller's words and
the agent's stored replies before it), so each row shows what the other agent would
have said at that point of the same call.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from parley.config import Settings
from parley.engines.chains import build_llm
from parley.evaluation.answering import answer_turn
from parley.knowledge import load_agent_knowledge
from parley.store import Database, Store


class SessionNotFound(LookupError):
    pass


async def stored_turns(database_url: str | None, session_id: str) -> list[tuple[str, str]]:
    """The session's (caller's words, agent's reply) per turn, in order."""
    db = Database(database_url)
    store = Store(db)
    try:
        try:
            found = await store.get_session(session_id)
        except SQLAlchemyError as exc:
            # Not the URL: it may hold a password.
            reason = f"could not read sessions from the database ({exc.__class__.__name__})"
            raise SessionNotFound(reason) from exc
        if found is None:
            raise SessionNotFound(f"no session {session_id} in the database")
        # The conversation as a reconnect restores it (the agent's side being what was
        # spoken, or heard when interrupted); a person's words are not the agent's.
        messages, _ = await store.conversation(session_id)
        rows = []
        for i, (role, text) in enumerate(messages):
            if role == "user":
                reply = messages[i + 1] if i + 1 < len(messages) else ("", "")
                rows.append((text, reply[1] if reply[0] == "assistant" else ""))
        return rows
    finally:
        await db.close()


async def replay(turns: list[tuple[str, str]], settings: Settings) -> list[dict[str, Any]]:
    """Each turn answered by ``settings``' agent: {caller, before, after}."""
    knowledge = load_agent_knowledge(settings)  # first: a bad file fails before a model loads
    llm = await build_llm(settings)
    earlier: list[tuple[str, str]] = []
    rows = []
    try:
        for caller, before in turns:
            after, _ = await answer_turn(llm, settings, knowledge, earlier, caller)
            rows.append({"caller": caller, "before": before, "after": after})
            earlier += [("user", caller), ("assistant", before)]
    finally:
        close = getattr(llm, "close", None)
        if close is not None:
            result = close()
            if hasattr(result, "__await__"):
                await result
    return rows


def side_by_side(rows: list[dict[str, Any]]) -> str:
    lines = []
    for n, row in enumerate(rows, start=1):
        same = "  (same)" if row["before"].strip() == row["after"].strip() else ""
        lines += [
            f"turn {n}  caller: {row['caller']}",
            f"        before: {row['before']}",
            f"        after:  {row['after']}{same}",
        ]
    changed = sum(r["before"].strip() != r["after"].strip() for r in rows)
    lines.append(f"{changed} of {len(rows)} answers changed")
    return "\n".join(lines)
