"""Conversation history per (platform, chat, persona), and the record of each turn."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.events import MessageStatus
from bot.store.db import Store
from bot.store.tables import InboxRow, MessageRow, SessionRow, TurnRow, utcnow


@dataclass(frozen=True)
class StoredMessage:
    role: str
    content: str
    transcribed: bool = False


@dataclass(frozen=True)
class Conversation:
    session_id: int
    summary: str
    messages: tuple[StoredMessage, ...]


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


async def open_conversation(store: Store, platform: str, chat_id: str, persona: str,
                            limit: int = 200) -> Conversation:
    """The open session of this chat and persona with its newest messages, oldest first."""
    async with store.read() as session:
        row = await _open_session(session, platform, chat_id, persona)
        if row is not None:
            query = (select(MessageRow).where(MessageRow.session_id == row.id)
                     .order_by(MessageRow.id.desc()).limit(limit))
            newest = (await session.scalars(query)).all()
            return Conversation(row.id, row.summary, tuple(
                StoredMessage(m.role, m.content, m.transcribed) for m in reversed(newest)))
    async with store.write() as session:
        row = await _open_session(session, platform, chat_id, persona)
        if row is None:
            row = SessionRow(platform=platform, chat_id=chat_id, persona=persona, summary="")
            session.add(row)
            await session.flush()
        return Conversation(row.id, row.summary, ())


async def start_new_session(store: Store, platform: str, chat_id: str, persona: str) -> None:
    """Close the open session (the history stays stored); the next message opens a fresh one."""
    async with store.write() as session:
        await session.execute(
            update(SessionRow)
            .where(SessionRow.platform == platform, SessionRow.chat_id == chat_id,
                   SessionRow.persona == persona, SessionRow.closed_at.is_(None))
            .values(closed_at=utcnow()))


async def save_turn(store: Store, turn: TurnRecord) -> None:
    async with store.write() as session:
        if turn.status is MessageStatus.ANSWERED and turn.user_text is not None and turn.reply_text:
            session.add(MessageRow(session_id=turn.session_id, role="user",
                                   content=turn.user_text, transcribed=turn.user_transcribed))
            session.add(MessageRow(session_id=turn.session_id, role="assistant",
                                   content=turn.reply_text))
        session.add(TurnRow(
            inbox_id=turn.inbox_id, session_id=turn.session_id, persona=turn.persona,
            model=turn.model, status=turn.status, error=turn.error,
            received_at=turn.received_at, first_token_at=turn.first_token_at,
            done_at=turn.done_at, prompt_tokens=turn.prompt_tokens,
            completion_tokens=turn.completion_tokens,
            tool_calls=json.dumps(list(turn.tool_calls)) if turn.tool_calls else None,
        ))
        if turn.inbox_id is not None:
            await session.execute(update(InboxRow).where(InboxRow.id == turn.inbox_id)
                                  .values(state=turn.status, error=turn.error,
                                          updated_at=utcnow()))


async def _open_session(session: AsyncSession, platform: str, chat_id: str,
                        persona: str) -> SessionRow | None:
    query = (select(SessionRow)
             .where(SessionRow.platform == platform, SessionRow.chat_id == chat_id,
                    SessionRow.persona == persona, SessionRow.closed_at.is_(None))
             .order_by(SessionRow.id.desc()).limit(1))
    return (await session.scalars(query)).first()
