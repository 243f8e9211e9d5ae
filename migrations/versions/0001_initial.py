"""The first schema: bindings, sessions and messages, the inbox, and turns.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bindings",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("platform", sa.String(32), nullable=False),
        sa.Column("account", sa.String(128)),
        sa.Column("chat_kind", sa.String(8)),
        sa.Column("peer_id", sa.String(128)),
        sa.Column("group_id", sa.String(128)),
        sa.Column("persona", sa.String(64), nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_bindings_platform", "bindings", ["platform"])

    op.create_table(
        "sessions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("platform", sa.String(32), nullable=False),
        sa.Column("chat_id", sa.String(128), nullable=False),
        sa.Column("persona", sa.String(64), nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("closed_at", sa.DateTime),
    )
    op.create_index("ix_sessions_chat", "sessions", ["platform", "chat_id", "persona"])

    op.create_table(
        "messages",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("session_id", sa.Integer,
                  sa.ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("transcribed", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_messages_session", "messages", ["session_id", "id"])

    op.create_table(
        "inbox",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("platform", sa.String(32), nullable=False),
        sa.Column("chat_id", sa.String(128), nullable=False),
        sa.Column("message_id", sa.String(128), nullable=False),
        sa.Column("sender_id", sa.String(128), nullable=False),
        sa.Column("event", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("received_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("platform", "chat_id", "message_id", name="uq_inbox_message"),
    )
    op.create_index("ix_inbox_state", "inbox", ["state"])

    op.create_table(
        "turns",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("inbox_id", sa.Integer, sa.ForeignKey("inbox.id", ondelete="SET NULL")),
        sa.Column("session_id", sa.Integer, sa.ForeignKey("sessions.id", ondelete="SET NULL")),
        sa.Column("persona", sa.String(64), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("received_at", sa.DateTime, nullable=False),
        sa.Column("first_token_at", sa.DateTime),
        sa.Column("done_at", sa.DateTime),
        sa.Column("prompt_tokens", sa.Integer),
        sa.Column("completion_tokens", sa.Integer),
    )


def downgrade() -> None:
    for index, table in (("ix_inbox_state", "inbox"), ("ix_messages_session", "messages"),
                         ("ix_sessions_chat", "sessions"), ("ix_bindings_platform", "bindings")):
        op.drop_index(index, table_name=table)
    for table in ("turns", "inbox", "messages", "sessions", "bindings"):
        op.drop_table(table)
