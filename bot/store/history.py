"""Conversation history per (platform, chat, persona), and the record of each turn."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Row, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.events import MessageStatus
from bot.store.db import Store
from bot.store.tables import InboxRow, MessageRow, SessionRow, TurnRow, table, utcnow


@dataclass(frozen=True)
class StoredMessage:
    role: str
    content: str
    transcribed: bool = False
    id: int = field(default=0, compare=False)  # the row's id: where a summary reaches


@dataclass(frozen=True)
class Conversation:
    """A session as the next request sees it: the running summary, the id of the last message
    it covers, and the newest messages after that one (oldest first)."""

    session_id: int
    summary: str
    messages: tuple[StoredMessage, ...]
    summary_through: int = 0


@dataclass(frozen=True)
class TurnRecord:
    """Everything one answered message leaves behind, written in one transaction."""

    inbox_id: int | None
    session_id: int
    persona: str
    model: str
    received_at: datetime
    first_token_at: datetime | None
    done_at: datetime
    prompt_tokens: int | None
    completion_tokens: int | None
    status: MessageStatus  # ANSWERED or FAILED
    error: str | None = None
    user_text: str | None = None
    user_transcribed: bool = False
    reply_text: str | None = None
    # Each tool call the turn made, as "tool:outcome:audit id" (the audit row has the rest).
    tool_calls: tuple[str, ...] = ()
    # The model's chain of thought and the time it took: kept here, never in the history.
    thinking: str | None = None
    thinking_ms: int | None = None
    # Of the prompt tokens, those the backend served from its cache (None: it did not say).
    cached_tokens: int | None = None
    platform: str | None = None
    chat_id: str | None = None
    # The model the turn was meant for, when a fallback answered instead (`model`).
    fallback_from: str | None = None


async def open_conversation(store: Store, platform: str, chat_id: str, persona: str,
                            limit: int = 200) -> Conversation:
    """The open session of this chat and persona with its newest messages not yet covered by
    the summary, oldest first."""
    async with store.read() as session:
        row = await _open_session(session, platform, chat_id, persona)
        if row is not None:
            return await _conversation(session, row, limit)
    async with store.write() as session:
        row = await _open_session(session, platform, chat_id, persona)
        if row is None:
            row = SessionRow(platform=platform, chat_id=chat_id, persona=persona, summary="",
                             summary_through=0)
            session.add(row)
            await session.flush()
        return Conversation(row.id, row.summary, (), row.summary_through)


async def load_conversation(store: Store, session_id: int, limit: int = 200) -> Conversation:
    async with store.read() as session:
        row = await session.get(SessionRow, session_id)
        if row is None:
            return Conversation(session_id, "", ())
        return await _conversation(session, row, limit)


async def messages_between(store: Store, session_id: int, after: int, before: int,
                           limit: int) -> tuple[StoredMessage, ...]:
    """Up to `limit` messages with ids strictly between `after` and `before`, oldest first."""
    async with store.read() as session:
        query = (select(MessageRow)
                 .where(MessageRow.session_id == session_id, MessageRow.id > after,
                        MessageRow.id < before)
                 .order_by(MessageRow.id).limit(limit))
        return tuple(_stored(m) for m in (await session.scalars(query)).all())


async def save_summary(store: Store, session_id: int, summary: str, through: int,
                       expected_through: int) -> bool:
    """Replace the running summary, now covering every message up to `through`.

    Written only if the summary still covers what it covered when the new one was begun
    (`expected_through`): of two summaries written from the same start, the first stands, and
    a summary never moves backwards. Returns whether it was written.
    """
    async with store.write() as session:
        result = await session.execute(
            update(SessionRow)
            .where(SessionRow.id == session_id, SessionRow.summary_through == expected_through)
            .values(summary=summary, summary_through=through)
            .execution_options(synchronize_session=False))
        return bool(cast("CursorResult[Any]", result).rowcount)


async def start_new_session(store: Store, platform: str, chat_id: str, persona: str) -> None:
    """Close the open session (the history stays stored); the next message opens a fresh one."""
    async with store.write() as session:
        await session.execute(
            update(SessionRow)
            .where(SessionRow.platform == platform, SessionRow.chat_id == chat_id,
                   SessionRow.persona == persona, SessionRow.closed_at.is_(None))
            .values(closed_at=utcnow()))


async def save_turn(store: Store, turn: TurnRecord) -> None:
    # Statements on the tables themselves, the two messages in one: the ORM's unit of work
    # would add nothing here but time on every turn.
    async with store.write() as session:
        if turn.status is MessageStatus.ANSWERED and turn.user_text is not None and turn.reply_text:
            await session.execute(insert(table(MessageRow)), [
                {"session_id": turn.session_id, "role": "user", "content": turn.user_text,
                 "transcribed": turn.user_transcribed},
                {"session_id": turn.session_id, "role": "assistant", "content": turn.reply_text,
                 "transcribed": False}])
        await session.execute(insert(table(TurnRow)).values(
            inbox_id=turn.inbox_id, session_id=turn.session_id, persona=turn.persona,
            model=turn.model, status=turn.status, error=turn.error,
            received_at=turn.received_at, first_token_at=turn.first_token_at,
            done_at=turn.done_at, prompt_tokens=turn.prompt_tokens,
            completion_tokens=turn.completion_tokens,
            tool_calls=json.dumps(list(turn.tool_calls)) if turn.tool_calls else None,
            thinking=turn.thinking, thinking_ms=turn.thinking_ms,
            cached_tokens=turn.cached_tokens, platform=turn.platform, chat_id=turn.chat_id,
            fallback_from=turn.fallback_from,
        ))
        if turn.inbox_id is not None:
            await session.execute(update(table(InboxRow)).where(InboxRow.id == turn.inbox_id)
                                  .values(state=turn.status, error=turn.error,
                                          updated_at=utcnow()))


async def _conversation(session: AsyncSession, row: SessionRow,
                        limit: int) -> Conversation:
    # Plain rows, not ORM objects: up to `limit` of them are read for every turn.
    query = (select(*_MESSAGE_COLUMNS)
             .where(MessageRow.session_id == row.id, MessageRow.id > row.summary_through)
             .order_by(MessageRow.id.desc()).limit(limit))
    newest = (await session.execute(query)).all()
    return Conversation(row.id, row.summary, tuple(_stored(m) for m in reversed(newest)),
                        row.summary_through)


_MESSAGE_COLUMNS = (MessageRow.role, MessageRow.content, MessageRow.transcribed, MessageRow.id)


def _stored(row: MessageRow | Row[str, str, bool, int]) -> StoredMessage:
    return StoredMessage(row.role, row.content, row.transcribed, row.id)


async def _open_session(session: AsyncSession, platform: str, chat_id: str,
                        persona: str) -> SessionRow | None:
    query = (select(SessionRow)
             .where(SessionRow.platform == platform, SessionRow.chat_id == chat_id,
                    SessionRow.persona == persona, SessionRow.closed_at.is_(None))
             .order_by(SessionRow.id.desc()).limit(1))
    return (await session.scalars(query)).first()
