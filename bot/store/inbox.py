"""The inbox: every inbound event is written here first, so none is lost or answered twice."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, insert, select, update
from sqlalchemy.exc import IntegrityError

from bot.events import ChatKind, ImageAttachment, InboundEvent, MessageStatus, VoiceAttachment
from bot.store.db import Store
from bot.store.tables import InboxRow, QuarantineRow, table, utcnow

log = logging.getLogger(__name__)

# Starts of a run that may try to answer one stored message before it is given up.
MAX_ATTEMPTS = 3


async def record(store: Store, event: InboundEvent) -> int | None:
    """Store an event; returns its inbox id, or None when this message was seen before."""
    # One INSERT on the table itself: the ORM's unit of work would add nothing here but time.
    insert_row = insert(table(InboxRow)).values(
        platform=event.platform, chat_id=event.chat_id, message_id=event.message_id,
        sender_id=event.sender_id, event=_to_json(event), state=MessageStatus.RECEIVED)
    try:
        async with store.write() as session:
            result = cast("CursorResult[Any]", await session.execute(insert_row))
    except IntegrityError:
        return None
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


async def mark(store: Store, inbox_id: int, state: MessageStatus,
               error: str | None = None) -> None:
    async with store.write() as session:
        await session.execute(update(table(InboxRow)).where(InboxRow.id == inbox_id)
                              .values(state=state, error=error, updated_at=utcnow()))


@dataclass(frozen=True)
class Pending:
    """A stored event the last run did not finish answering."""

    inbox_id: int
    event: InboundEvent
    # Messages of the reply that were already sent before the run stopped.
    sent: tuple[str, ...]


async def unanswered(store: Store, platform: str,
                     max_attempts: int = MAX_ATTEMPTS) -> list[Pending]:
    """Events that were stored but never answered (the service stopped mid-turn).

    Each call counts as an attempt for what it returns. A row that was already tried
    `max_attempts` times, or that cannot be read back, is marked failed with the reason and
    not returned: a message that brings the service down cannot bring it down at every start.
    """
    query = (select(InboxRow)
             .where(InboxRow.platform == platform, InboxRow.state == MessageStatus.RECEIVED)
             .order_by(InboxRow.id))
    pending: list[Pending] = []
    async with store.write() as session:
        for row in (await session.scalars(query)).all():
            row.updated_at = utcnow()
            if row.attempts >= max_attempts:
                row.state = MessageStatus.FAILED
                row.error = f"gave up after {row.attempts} attempts"
                log.warning("%s message %s in chat %s: %s", platform, row.message_id,
                            row.chat_id, row.error)
                continue
            try:
                event = _from_json(row.event)
            except (ValueError, KeyError, TypeError) as exc:
                row.state, row.error = MessageStatus.FAILED, f"unreadable stored event: {exc!r}"
                log.warning("%s inbox row %d: %s", platform, row.id, row.error)
                continue
            row.attempts += 1
            pending.append(Pending(row.id, event, tuple(json.loads(row.sent or "[]"))))
    return pending


async def add_sent(store: Store, inbox_id: int, handle: str) -> None:
    """Remember a message of the reply as soon as it is on the platform."""
    async with store.write() as session:
        row = await session.get(InboxRow, inbox_id)
        if row is not None:
            row.sent = json.dumps([*json.loads(row.sent or "[]"), handle])


async def quarantine(store: Store, platform: str, ref: str, reason: str, shape: str) -> None:
    """Keep an unreadable payload's ids and shape (never its content) for the owner to see."""
    async with store.write() as session:
        session.add(QuarantineRow(platform=platform, ref=ref[:128], reason=reason[:2000],
                                  shape=shape[:4000]))


async def state_of(store: Store, platform: str, chat_id: str,
                   message_id: str) -> MessageStatus | None:
    query = select(InboxRow.state).where(InboxRow.platform == platform,
                                         InboxRow.chat_id == chat_id,
                                         InboxRow.message_id == message_id)
    async with store.read() as session:
        state = (await session.scalars(query)).first()
    return None if state is None else MessageStatus(state)


def _to_json(event: InboundEvent) -> str:
    # Voice and image bytes are not kept: the adapter fetches them again by their platform
    # reference.
    return json.dumps({
        "platform": event.platform, "chat_id": event.chat_id, "chat_kind": event.chat_kind.value,
        "sender_id": event.sender_id, "sender_name": event.sender_name,
        "message_id": event.message_id, "text": event.text, "account": event.account,
        "group_id": event.group_id, "mentioned": event.mentioned,
        "reply_to_bot": event.reply_to_bot, "transcribed": event.transcribed,
        "bot_names": list(event.bot_names),
        "voice": None if event.voice is None else {
            "mime_type": event.voice.mime_type, "duration": event.voice.duration,
            "ref": event.voice.ref},
        "images": [{"mime_type": i.mime_type, "size": i.size, "ref": i.ref}
                   for i in event.images],
        "received_at": event.received_at.isoformat(),
    })


def _from_json(text: str) -> InboundEvent:
    data = json.loads(text)
    return InboundEvent(
        platform=data["platform"], chat_id=data["chat_id"],
        chat_kind=ChatKind(data["chat_kind"]), sender_id=data["sender_id"],
        sender_name=data["sender_name"], message_id=data["message_id"], text=data["text"],
        account=data["account"], group_id=data["group_id"], mentioned=data["mentioned"],
        reply_to_bot=data["reply_to_bot"], transcribed=data["transcribed"],
        bot_names=tuple(data.get("bot_names", ())),
        voice=VoiceAttachment(**voice) if (voice := data.get("voice")) else None,
        images=tuple(ImageAttachment(**image) for image in data.get("images", ())),
        received_at=datetime.fromisoformat(data["received_at"]),
    )
