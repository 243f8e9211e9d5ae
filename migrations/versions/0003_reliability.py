"""Reliability: attempts and sent reply ids on the inbox; a quarantine for unreadable payloads.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Idempotent: what a run stopped halfway already made is left as it is.
    inspector = sa.inspect(op.get_bind())
    columns = {column["name"] for column in inspector.get_columns("inbox")}
    # batch mode: SQLite can add columns in place, and other databases take the same script.
    with op.batch_alter_table("inbox") as inbox:
        if "attempts" not in columns:
            inbox.add_column(sa.Column("attempts", sa.Integer, nullable=False,
                                       server_default="0"))
        if "sent" not in columns:
            inbox.add_column(sa.Column("sent", sa.Text))
    if inspector.has_table("quarantine"):
        return
    op.create_table(
        "quarantine",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("platform", sa.String(32), nullable=False),
        sa.Column("ref", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("shape", sa.Text, nullable=False),
        sa.Column("received_at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("quarantine")
    with op.batch_alter_table("inbox") as inbox:
        inbox.drop_column("sent")
        inbox.drop_column("attempts")
