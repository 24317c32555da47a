"""Phone calls: the telephony provider's call id kept on the session.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("call_sid", sa.String(64), nullable=True))
        batch.create_index("ix_sessions_call_sid", ["call_sid"])


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.drop_index("ix_sessions_call_sid")
        batch.drop_column("call_sid")
