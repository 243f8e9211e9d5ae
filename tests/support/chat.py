"""One person at the console, one message at a time, through the real gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator

from bot.events import ChatKind, InboundEvent, ReplyFailed, ReplyPart, ReplyText
from bot.service import Service
from bot.turn import TurnResult


class Chat:
    """The owner's console DM (the admin persona), with the reply's text handed back."""

    def __init__(self, service: Service, chat_id: str = "owner") -> None:
        self.service = service
        self.chat_id = chat_id
        self.sent = 0

    async def say(self, text: str) -> tuple[TurnResult, str]:
        self.sent += 1
        event = InboundEvent(platform="console", chat_id=self.chat_id, chat_kind=ChatKind.DM,
                             sender_id=self.chat_id, sender_name=self.chat_id,
                             message_id=f"{self.chat_id}-{self.sent}", text=text)
        parts: list[str] = []

        async def deliver(event: InboundEvent, reply: AsyncIterator[ReplyPart]) -> None:
            async for part in reply:
                if isinstance(part, ReplyText):
                    parts.append(part.text)
                elif isinstance(part, ReplyFailed):
                    parts.append(part.message)

        result = await self.service.gateway.handle(event, deliver)
        return result, "".join(parts)
