"""The terminal chat: the owner at this machine's keyboard, streaming replies token by token."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TextIO

from bot.events import ChatKind, InboundEvent, ReplyFailed, ReplyPart, ReplyStatus, ReplyText
from bot.gateway import Gateway
from bot.turn import TurnResult

PLATFORM = "console"
OWNER = "owner"  # bound to the admin persona by the default config
GUEST = "guest"  # bound to nothing, so the router answers as the guest persona


class ConsoleChat:
    def __init__(self, gateway: Gateway, *, sender: str = OWNER, chat_id: str | None = None,
                 out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> None:
        self.gateway = gateway
        self.sender = sender
        self.chat_id = chat_id or sender
        self.out = out
        self.err = err

    def event(self, text: str) -> InboundEvent:
        return InboundEvent(platform=PLATFORM, chat_id=self.chat_id, chat_kind=ChatKind.DM,
                            sender_id=self.sender, sender_name=self.sender,
                            message_id=uuid.uuid4().hex, text=text)

    async def deliver(self, event: InboundEvent, reply: AsyncIterator[ReplyPart]) -> None:
        wrote_text = False
        async for part in reply:
            if isinstance(part, ReplyText):
                self.out.write(part.text)
                self.out.flush()
                wrote_text = True
            elif isinstance(part, ReplyStatus):
                self.err.write(f"[{part.text}]\n")
                self.err.flush()
            elif isinstance(part, ReplyFailed):
                if wrote_text:
                    self.out.write("\n")
                self.err.write(f"{part.message}\n")
                self.err.flush()
                return
        self.out.write("\n")
        self.out.flush()

    async def ask(self, text: str) -> TurnResult:
        return await self.gateway.handle(self.event(text), self.deliver)

    async def repl(self, prompt: str = "you> ",
                   on_result: Callable[[TurnResult], None] | None = None) -> None:
        """Read lines until end of input (Ctrl-D) and answer each."""
        while True:
            try:
                # input() blocks, so it runs in a thread and the event loop stays free.
                line = await asyncio.to_thread(input, prompt)
            except EOFError:
                self.out.write("\n")
                return
            if line.strip():
                result = await self.ask(line.strip())
                if on_result is not None:
                    on_result(result)
