"""Tables. Audio is never stored; partial transcripts are never stored."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


OWNER_MAX = 64
"""Width of ``turns.owner``; longer process names are shortened (``Store.owner_id``)."""


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON,
        datetime: DateTime(timezone=True),
    }


class SessionRecord(Base):
    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str | None] = mapped_column(String(255), index=True)
    room_id: Mapped[str] = mapped_column(String(128), unique=True)
    mode: Mapped[str] = mapped_column(String(32), default="voice")
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None]
    orchestration_state: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """The conversation's state: the agent's envelope ``state_updates``, merged."""
    turn_state: Mapped[str | None] = mapped_column(String(16))
    """State of the session's latest turn."""
    reconnect_status: Mapped[str] = mapped_column(String(16), default="connected")
    reconnect_count: Mapped[int] = mapped_column(Integer, default=0)
    consent: Mapped[dict[str, Any]] = mapped_column(default=dict)
    call_sid: Mapped[str | None] = mapped_column(String(64), index=True)
    """The phone call behind the session (Twilio's CallSid), if it is one."""
    memory: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    """The summary of the turns that left the prompt's window (``voice/memory.py``),
    restored with the conversation on a reconnect."""
    cost: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """What the session's provider calls used and cost, over all its connections (a
    ``parley.telemetry.costs.CostSummary``); None before the first call."""


class Turn(Base):
    __tablename__ = "turns"
    __table_args__ = (
        UniqueConstraint("session_id", "idempotency_key"),
        # A unique index rather than a constraint: the same guarantee, and SQLite can add
        # it without recreating the table (migration 0003).
        Index("uq_turns_session_seq", "session_id", "seq", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), index=True
    )
    seq: Mapped[int] = mapped_column(Integer)
    """The session's turn number, unique in the session."""
    idempotency_key: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16))
    user_text: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    owner: Mapped[str | None] = mapped_column(String(OWNER_MAX))
    """The process working on the turn (orchestration endpoint turns only)."""
    fence: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Fencing token: +1 on every claim. Each write by the owner checks owner and fence
    in the same statement, so one that lost the turn cannot overwrite its successor's."""
    lease_until: Mapped[float | None] = mapped_column(Float)
    """Until when ``owner``'s claim holds, in epoch seconds on the DATABASE's clock; it
    renews it while it works. A lapsed lease means the owner died or stalled: another
    process may take the turn over. (0002's ``lease_expires_at``, on the app servers'
    clocks, is no longer used; 0003 leaves the column in place.)"""


class TurnTransition(Base):
    __tablename__ = "turn_transitions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    turn_id: Mapped[int] = mapped_column(ForeignKey("turns.id", ondelete="CASCADE"), index=True)
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    detail: Mapped[str | None] = mapped_column(Text)


class TranscriptSegment(Base):
    __tablename__ = "transcript_segments"
    __table_args__ = (UniqueConstraint("session_id", "turn_seq", "segment_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), index=True
    )
    turn_seq: Mapped[int] = mapped_column(Integer)
    segment_id: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    """final or revised (a provider's correction of an earlier final)."""
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    revised_at: Mapped[datetime | None]


class ToolExecution(Base):
    __tablename__ = "tool_executions"
    __table_args__ = (UniqueConstraint("turn_id", "call_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    turn_id: Mapped[int] = mapped_column(ForeignKey("turns.id", ondelete="CASCADE"), index=True)
    call_id: Mapped[str] = mapped_column(String(128))
    tool: Mapped[str] = mapped_column(String(128))
    arguments: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class TimelineEvent(Base):
    __tablename__ = "timeline_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), index=True
    )
    turn_seq: Mapped[int | None] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
