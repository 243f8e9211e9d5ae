"""The tool audit: one row per tool call, allowed, refused, failed or unknown.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Idempotent: a database that already has the table (a run stopped between creating it and
    # recording the revision) is left as it is.
    if sa.inspect(op.get_bind()).has_table("tool_calls"):
        return
    op.create_table(
        "tool_calls",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("persona", sa.String(64), nullable=False),
        sa.Column("platform", sa.String(32), nullable=False),
        sa.Column("chat_id", sa.String(128), nullable=False),
        sa.Column("tool", sa.String(128), nullable=False),
        sa.Column("arguments", sa.Text, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("duration_ms", sa.Integer, nullable=False),
    )
    op.create_index("ix_tool_calls_at", "tool_calls", ["at"])
    op.create_index("ix_tool_calls_persona", "tool_calls", ["persona", "at"])


def downgrade() -> None:
    op.drop_index("ix_tool_calls_persona", table_name="tool_calls")
    op.drop_index("ix_tool_calls_at", table_name="tool_calls")
    op.drop_table("tool_calls")
