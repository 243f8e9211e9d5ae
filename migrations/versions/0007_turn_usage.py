"""A turn records what the model promised to account for: its thinking, cached tokens, where
it was asked from, and which model it stood in for when a fallback answered.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_COLUMNS = (
    # Chain of thought, kept for the owner to read and never delivered as chat text.
    sa.Column("thinking", sa.Text),
    sa.Column("thinking_ms", sa.Integer),
    sa.Column("cached_tokens", sa.Integer),
    # Usage by chat, and budgets per persona and day, must not depend on the inbox row, which
    # is pruned sooner and which the web chat's turns do not have.
    sa.Column("platform", sa.String(32)),
    sa.Column("chat_id", sa.String(128)),
    # The configured model this turn was meant for, when a fallback model answered instead.
    sa.Column("fallback_from", sa.String(256)),
)


def upgrade() -> None:
    # Idempotent: a run stopped between adding a column and recording the revision keeps it.
    bind = op.get_bind()
    columns = {c["name"] for c in sa.inspect(bind).get_columns("turns")}
    indexes = {i["name"] for i in sa.inspect(bind).get_indexes("turns")}
    missing = [c for c in _COLUMNS if c.name not in columns]
    if missing:
        with op.batch_alter_table("turns") as turns:
            for column in missing:
                turns.add_column(column)
    if "ix_turns_persona_received" not in indexes:
        op.create_index("ix_turns_persona_received", "turns", ["persona", "received_at"])


def downgrade() -> None:
    op.drop_index("ix_turns_persona_received", table_name="turns")
    with op.batch_alter_table("turns") as turns:
        for column in reversed(_COLUMNS):
            turns.drop_column(column.name)
