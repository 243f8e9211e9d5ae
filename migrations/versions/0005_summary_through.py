"""The running summary remembers how far it reaches: the id of the last message it covers.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Idempotent: a run stopped between adding the column and recording the revision left the
    # column in place. 0 means the summary covers nothing yet (every message is verbatim).
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("sessions")}
    if "summary_through" in columns:
        return
    with op.batch_alter_table("sessions") as sessions:
        sessions.add_column(sa.Column("summary_through", sa.Integer, nullable=False,
                                      server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("sessions") as sessions:
        sessions.drop_column("summary_through")
