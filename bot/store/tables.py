"""The schema as ORM classes. It changes only through migrations in the top-level migrations/."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

from sqlalchemy import ForeignKey, Index, String, Table, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    """Stored times are naive UTC: SQLite keeps no time zone, so none is pretended."""
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class BindingRow(Base):
    """One row of the firewall: who (platform, account, chat kind, peer, group) gets which persona.

    A NULL column matches anything; the most specific matching row wins.
    """

    __tablename__ = "bindings"

    id: Mapped[int] = mapped_column(primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    account: Mapped[str | None] = mapped_column(String(128))
    chat_kind: Mapped[str | None] = mapped_column(String(8))
    peer_id: Mapped[str | None] = mapped_column(String(128))
    group_id: Mapped[str | None] = mapped_column(String(128))
    persona: Mapped[str] = mapped_column(String(64))
    note: Mapped[str] = mapped_column(Text, default="")
    source: Mapped[str] = mapped_column(String(16), default="cli")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_bindings_platform", "platform"),)


class SessionRow(Base):
    """A conversation with one persona in one chat; `/new` closes it and opens another."""

    __tablename__ = "sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    chat_id: Mapped[str] = mapped_column(String(128))
    persona: Mapped[str] = mapped_column(String(64))
    summary: Mapped[str] = mapped_column(Text, default="")
    # The id of the last message the summary covers; the messages after it are sent verbatim.
    summary_through: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(default=None)

    __table_args__ = (Index("ix_sessions_chat", "platform", "chat_id", "persona"),)


class MessageRow(Base):
    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    transcribed: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_messages_session", "session_id", "id"),)


class InboxRow(Base):
    """Every inbound event, stored before it is acknowledged; unique per platform message."""

    __tablename__ = "inbox"

    id: Mapped[int] = mapped_column(primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    chat_id: Mapped[str] = mapped_column(String(128))
    message_id: Mapped[str] = mapped_column(String(128))
    sender_id: Mapped[str] = mapped_column(String(128))
    event: Mapped[str] = mapped_column(Text)  # the InboundEvent as JSON, to resume after a crash
    state: Mapped[str] = mapped_column(String(16), default="received")
    error: Mapped[str | None] = mapped_column(Text, default=None)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # How many times a run has started answering it: a message that fails the same way at
    # every start is given up after a few, instead of being retried for ever.
    attempts: Mapped[int] = mapped_column(default=0)
    # The platform ids of the reply's messages sent so far (JSON list): a reply cut off by a
    # crash is removed before it is answered again, never left truncated beside a new one.
    sent: Mapped[str | None] = mapped_column(Text, default=None)

    __table_args__ = (
        UniqueConstraint("platform", "chat_id", "message_id", name="uq_inbox_message"),
        Index("ix_inbox_state", "state"),
    )


class TurnRow(Base):
    """One answer: which persona and model, how long it took, how many tokens."""

    __tablename__ = "turns"

    id: Mapped[int] = mapped_column(primary_key=True)
    inbox_id: Mapped[int | None] = mapped_column(ForeignKey("inbox.id", ondelete="SET NULL"))
    session_id: Mapped[int | None] = mapped_column(ForeignKey("sessions.id", ondelete="SET NULL"))
    persona: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(16), default="running")
    error: Mapped[str | None] = mapped_column(Text, default=None)
    received_at: Mapped[datetime] = mapped_column()
    first_token_at: Mapped[datetime | None] = mapped_column(default=None)
    done_at: Mapped[datetime | None] = mapped_column(default=None)
    prompt_tokens: Mapped[int | None] = mapped_column(default=None)
    completion_tokens: Mapped[int | None] = mapped_column(default=None)
    tool_calls: Mapped[str | None] = mapped_column(Text, default=None)  # JSON list
    # Chain of thought: kept here for the owner, never delivered as chat text.
    thinking: Mapped[str | None] = mapped_column(Text, default=None)
    thinking_ms: Mapped[int | None] = mapped_column(default=None)
    cached_tokens: Mapped[int | None] = mapped_column(default=None)
    platform: Mapped[str | None] = mapped_column(String(32), default=None)
    chat_id: Mapped[str | None] = mapped_column(String(128), default=None)
    # The configured model this turn was meant for, when a fallback answered instead.
    fallback_from: Mapped[str | None] = mapped_column(String(256), default=None)

    __table_args__ = (Index("ix_turns_persona_received", "persona", "received_at"),)


class PairingCodeRow(Base):
    """A short-lived code the owner sends in a DM to bind that DM to the admin persona.

    Only a hash is stored: the database never holds a code that could still be redeemed.
    """

    __tablename__ = "pairing_codes"

    id: Mapped[int] = mapped_column(primary_key=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    used_at: Mapped[datetime | None] = mapped_column(default=None)
    used_by: Mapped[str | None] = mapped_column(String(200), default=None)


class PairingAttemptRow(Base):
    __tablename__ = "pairing_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    sender_id: Mapped[str] = mapped_column(String(128))
    succeeded: Mapped[bool] = mapped_column()
    at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_pairing_attempts_at", "at"),)


class QuarantineRow(Base):
    """A platform payload that could not be read: kept by ids and shape, never by content."""

    __tablename__ = "quarantine"

    id: Mapped[int] = mapped_column(primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    ref: Mapped[str] = mapped_column(String(128))  # the update id or the dispatch's event name
    reason: Mapped[str] = mapped_column(Text)
    shape: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class ToolCallRow(Base):
    """One tool call, whatever became of it: allowed, refused, failed or an unknown tool.

    Arguments are stored as JSON with secrets masked; the persona is the one the router
    chose, never one the model named.
    """

    __tablename__ = "tool_calls"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    persona: Mapped[str] = mapped_column(String(64))
    platform: Mapped[str] = mapped_column(String(32))
    chat_id: Mapped[str] = mapped_column(String(128))
    tool: Mapped[str] = mapped_column(String(128))
    arguments: Mapped[str] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text, default=None)
    duration_ms: Mapped[int] = mapped_column(default=0)

    __table_args__ = (Index("ix_tool_calls_at", "at"),
                      Index("ix_tool_calls_persona", "persona", "at"))


class WebLinkRow(Base):
    """A one-time sign-in link for the web pages; only its hash is kept."""

    __tablename__ = "web_links"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    used_at: Mapped[datetime | None] = mapped_column(default=None)


class WebSessionRow(Base):
    """A signed-in browser. The cookie holds the token; the table only its hash, and the
    CSRF token the pages send back with every change."""

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    seen_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_web_sessions_expires", "expires_at"),)


class ApiTokenRow(Base):
    """A bearer token for the OpenAI-compatible endpoint, bound to one persona; hashed."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    persona: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


def table(row: type[Base]) -> Table:
    """A mapped class's table, for Core statements on the hot path (no unit of work)."""
    return cast(Table, row.__table__)
