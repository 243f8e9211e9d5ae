"""The inbox: every inbound event is written here first, so none is lost or answered twice."""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from bot.events import ChatKind, InboundEvent, MessageStatus, VoiceAttachment
from bot.store.db import Store
from bot.store.tables import InboxRow, utcnow


async def record(store: Store, event: InboundEvent) -> int | None:
    """Store an event; returns its inbox id, or None when this message was seen before."""
    row = InboxRow(platform=event.platform, chat_id=event.chat_id, message_id=event.message_id,
                   sender_id=event.sender_id, event=_to_json(event), state=MessageStatus.RECEIVED)
    try:
        async with store.write() as session:
            session.add(row)
    except IntegrityError:
        return None
    return row.id


async def mark(store: Store, inbox_id: int, state: MessageStatus,
               error: str | None = None) -> None:
    async with store.write() as session:
        await session.execute(update(InboxRow).where(InboxRow.id == inbox_id)
                              .values(state=state, error=error, updated_at=utcnow()))


async def unanswered(store: Store, platform: str) -> list[tuple[int, InboundEvent]]:
    """Events that were stored but never answered (the service stopped mid-turn)."""
    query = (select(InboxRow)
             .where(InboxRow.platform == platform, InboxRow.state == MessageStatus.RECEIVED)
             .order_by(InboxRow.id))
    async with store.read() as session:
        return [(row.id, _from_json(row.event)) for row in (await session.scalars(query)).all()]


async def state_of(store: Store, platform: str, chat_id: str,
                   message_id: str) -> MessageStatus | None:
    query = select(InboxRow.state).where(InboxRow.platform == platform,
                                         InboxRow.chat_id == chat_id,
                                         InboxRow.message_id == message_id)
    async with store.read() as session:
        state = (await session.scalars(query)).first()
    return None if state is None else MessageStatus(state)


def _to_json(event: InboundEvent) -> str:
    # Voice bytes are not kept: the adapter fetches them again by their platform reference.
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
        received_at=datetime.fromisoformat(data["received_at"]),
    )
