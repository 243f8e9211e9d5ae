"""How long conversations are kept: pruning by age, and forgetting one chat on request.

What counts as a conversation's history: its sessions (with their running summaries), their
messages, the turn records, and the inbox rows, which hold each inbound message's text.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, Delete, delete, exists, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.store.db import Store
from bot.store.tables import InboxRow, MessageRow, SessionRow, TurnRow, utcnow


@dataclass(frozen=True)
class Removed:
    """How many rows of each kind were deleted."""

    sessions: int = 0
    messages: int = 0
    turns: int = 0
    inbox: int = 0

    @property
    def total(self) -> int:
        return self.sessions + self.messages + self.turns + self.inbox

    def describe(self) -> str:
        """E.g. "2 sessions, 14 messages, 7 turn records and 7 inbox entries"."""
        parts = [_count(self.sessions, "session"), _count(self.messages, "message"),
                 _count(self.turns, "turn record"), _count(self.inbox, "inbox entry",
                                                           "inbox entries")]
        return ", ".join(parts[:-1]) + " and " + parts[-1]


async def prune_history(store: Store, older_than_days: int | None) -> Removed:
    """Delete the history older than `older_than_days`; None or 0 keeps everything.

    Messages, turn records and inbox rows go by their own age. A closed session goes once it
    was closed before the cut-off and nothing of it is left. An open session whose messages
    are all gone loses its summary but keeps its row: a turn may be running on it right now,
    and its next message would have nowhere to be written. A session still in use keeps its
    running summary, which may recall older messages, until it is closed and ages out.
    Safe to run while the service answers messages; meant for start-up and then periodically.
    Deleted rows are overwritten in the file and in SQLite's log, not only unlinked.
    """
    if not older_than_days or older_than_days <= 0:
        return Removed()
    cutoff = utcnow() - timedelta(days=older_than_days)
    async with store.write() as session:
        messages = await _delete(session, delete(MessageRow)
                                 .where(MessageRow.created_at < cutoff))
        turns = await _delete(session, delete(TurnRow).where(TurnRow.received_at < cutoff))
        inbox = await _delete(session, delete(InboxRow).where(InboxRow.received_at < cutoff))
        emptied = (SessionRow.created_at < cutoff,
                   ~exists().where(MessageRow.session_id == SessionRow.id),
                   ~exists().where(TurnRow.session_id == SessionRow.id))
        sessions = await _delete(session, delete(SessionRow).where(
            SessionRow.closed_at.is_not(None), SessionRow.closed_at < cutoff, *emptied))
        await session.execute(
            update(SessionRow).where(SessionRow.closed_at.is_(None), SessionRow.summary != "",
                                     *emptied)
            .values(summary="").execution_options(synchronize_session=False))
    removed = Removed(sessions=sessions, messages=messages, turns=turns, inbox=inbox)
    if removed.total:
        await store.checkpoint()
    return removed


async def forget_chat(store: Store, chat_id: str, platform: str | None = None) -> Removed:
    """Delete everything stored about one chat: every session with any persona, their messages
    and summaries, its turn records and its inbound messages. `platform` None: the chat id
    on every platform. Deleted rows are overwritten in the file and in SQLite's log."""
    chat_sessions = select(SessionRow.id).where(*_chat(SessionRow, chat_id, platform))
    chat_inbox = select(InboxRow.id).where(*_chat(InboxRow, chat_id, platform))
    async with store.write() as session:
        messages = await _delete(session, delete(MessageRow)
                                 .where(MessageRow.session_id.in_(chat_sessions)))
        turns = await _delete(session, delete(TurnRow).where(
            or_(TurnRow.session_id.in_(chat_sessions), TurnRow.inbox_id.in_(chat_inbox))))
        inbox = await _delete(session, delete(InboxRow)
                              .where(*_chat(InboxRow, chat_id, platform)))
        sessions = await _delete(session, delete(SessionRow)
                                 .where(*_chat(SessionRow, chat_id, platform)))
    removed = Removed(sessions=sessions, messages=messages, turns=turns, inbox=inbox)
    if removed.total:
        await store.checkpoint()
    return removed


def _chat(table: type[SessionRow] | type[InboxRow], chat_id: str,
          platform: str | None) -> list[ColumnElement[bool]]:
    conditions = [table.chat_id == chat_id]
    if platform is not None:
        conditions.append(table.platform == platform)
    return conditions


async def _delete(session: AsyncSession, statement: Delete) -> int:
    result = await session.execute(statement.execution_options(synchronize_session=False))
    return cast("CursorResult[Any]", result).rowcount


def _count(number: int, singular: str, plural: str | None = None) -> str:
    return f"{number} {singular if number == 1 else plural or singular + 's'}"
