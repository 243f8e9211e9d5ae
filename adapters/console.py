"""The terminal chat: the owner at this machine's keyboard, streaming replies token by token.

Whoever sits at the terminal is the owner, so while a chat answers it also asks them, with a
y/n prompt, to approve the tool calls that need it (platform "console").
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TextIO

from bot.approvals import Question
from bot.events import ChatKind, InboundEvent, ReplyFailed, ReplyPart, ReplyStatus, ReplyText
from bot.gateway import Gateway
from bot.turn import TurnResult

PLATFORM = "console"
OWNER = "owner"  # bound to the admin persona by the default config
GUEST = "guest"  # bound to nothing, so the router answers as the guest persona


class ConsoleChat:
    def __init__(self, gateway: Gateway, *, sender: str = OWNER, chat_id: str | None = None,
                 out: TextIO = sys.stdout, err: TextIO = sys.stderr,
                 read_line: Callable[[str], str] = input) -> None:
        self.gateway = gateway
        self.sender = sender
        self.chat_id = chat_id or sender
        self.out = out
        self.err = err
        # Blocking, like input(): it shows the prompt and returns one line, or raises EOFError.
        self.read_line = read_line
        self._reading: asyncio.Future[str] | None = None

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
        with self.gateway.approvals.asking(PLATFORM, self.ask_owner):
            return await self.gateway.handle(self.event(text), self.deliver)

    async def ask_owner(self, question: Question) -> bool:
        """Put a tool approval to the person at the terminal; only y or yes is a yes."""
        prompt = f"Allow tool {question.request.tool} with {question.arguments}? [y/N] "
        try:
            answer = await asyncio.wait_for(self._line(prompt), question.seconds)
        except TimeoutError:
            self.err.write("\nNo answer in time; not run.\n")
            self.err.flush()
            return False
        except EOFError:
            return False
        return answer.strip().lower() in ("y", "yes")

    async def _line(self, prompt: str) -> str:
        """One line from the terminal, read in a thread so the event loop stays free.

        A read cannot be taken back once the prompt is shown: when its reader gives up (an
        approval that timed out), the line still to come goes to the next reader instead.
        """
        if self._reading is None:
            self._reading = asyncio.ensure_future(asyncio.to_thread(self.read_line, prompt))
        reading = self._reading
        try:
            return await asyncio.shield(reading)
        finally:
            if reading.done():
                self._reading = None

    async def repl(self, prompt: str = "you> ",
                   on_result: Callable[[TurnResult], None] | None = None) -> None:
        """Read lines until end of input (Ctrl-D) and answer each."""
        while True:
            try:
                line = await self._line(prompt)
            except EOFError:
                self.out.write("\n")
                return
            if line.strip():
                result = await self.ask(line.strip())
                if on_result is not None:
                    on_result(result)
