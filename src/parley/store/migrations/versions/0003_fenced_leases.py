"""Turn numbers unique per session; fenced leases on the database's clock.

- ``turns(session_id, seq)`` gets a unique index (an index, not a constraint, so SQLite
  adds it in place: recreating ``turns`` there would cascade-delete its transitions and
  tool executions). Sessions whose turns were numbered twice by the old race are first
  renumbered in (seq, id) order.
- ``turns.fence``: the fencing token, +1 on every claim.
- ``turns.lease_until``: lease expiry in epoch seconds on the database's clock. Turns
  claimed before this revision count as lapsed (a retry may take them over at once);
  ``lease_expires_at`` is no longer read or written.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _renumber_duplicates() -> None:
    bind = op.get_bind()
    duplicated = bind.execute(
        sa.text(
            "SELECT DISTINCT session_id FROM turns GROUP BY session_id, seq HAVING COUNT(*) > 1"
        )
    ).scalars()
    for session_id in list(duplicated):
        rows = bind.execute(
            sa.text("SELECT id FROM turns WHERE session_id = :s ORDER BY seq, id"),
            {"s": session_id},
        ).scalars()
        for number, turn_id in enumerate(list(rows), start=1):
            bind.execute(
                sa.text("UPDATE turns SET seq = :n WHERE id = :id"), {"n": number, "id": turn_id}
            )


def upgrade() -> None:
    _renumber_duplicates()
    op.add_column("turns", sa.Column("fence", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("turns", sa.Column("lease_until", sa.Float(), nullable=True))
    op.execute("UPDATE turns SET lease_until = 0 WHERE lease_expires_at IS NOT NULL")
    op.create_index("uq_turns_session_seq", "turns", ["session_id", "seq"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_turns_session_seq", table_name="turns")
    # Not batch mode: recreating turns on SQLite would cascade-delete its children
    # (SQLite >= 3.35 drops a column in place).
    op.drop_column("turns", "lease_until")
    op.drop_column("turns", "fence")
