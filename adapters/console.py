"""The terminal chat: the owner at this machine's keyboard, streaming replies token by token.

Whoever sits at the terminal is the owner, so while a chat answers it also asks them, with a
y/n prompt, to approve the tool calls that need it (platform "console").

`/image PATH [caption]` sends a picture from this machine's disk. It is the terminal's own
command, not one of the chat commands: only here does a path name a file the sender has.
"""

from __future__ import annotations

import asyncio
import mimetypes
import shlex
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TextIO

from bot.approvals import Question
from bot.events import (
    ChatKind,
    ImageAttachment,
    InboundEvent,
    MessageStatus,
    ReplyFailed,
    ReplyPart,
    ReplyStatus,
    ReplyText,
)
from bot.gateway import Gateway
from bot.turn import TurnResult

PLATFORM = "console"
OWNER = "owner"  # bound to the admin persona by the default config
GUEST = "guest"  # bound to nothing, so the router answers as the guest persona
IMAGE_COMMAND = "/image"
IMAGE_USAGE = "Usage: /image PATH [caption] (quote a path that has spaces)"
NO_IMAGE = "There is no file at {path}."


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

    def event(self, text: str, images: tuple[ImageAttachment, ...] = ()) -> InboundEvent:
        return InboundEvent(platform=PLATFORM, chat_id=self.chat_id, chat_kind=ChatKind.DM,
                            sender_id=self.sender, sender_name=self.sender,
                            message_id=uuid.uuid4().hex, text=text, images=images)

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

    async def ask(self, text: str, images: tuple[ImageAttachment, ...] = ()) -> TurnResult:
        with self.gateway.approvals.asking(PLATFORM, self.ask_owner):
            return await self.gateway.handle(self.event(text, images), self.deliver)

    async def ask_with_image(self, argument: str) -> TurnResult:
        """`/image PATH [caption]`: the file at PATH, with the rest of the line as its caption.
        A path that names no file is said here and nothing is sent."""
        try:
            words = shlex.split(argument)
        except ValueError:  # an unclosed quote
            words = []
        if not words:
            return self._refuse(IMAGE_USAGE)
        found = await asyncio.to_thread(_file_size, words[0])
        if found is None:
            return self._refuse(NO_IMAGE.format(path=words[0]))
        path, size = found
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        image = ImageAttachment(mime_type=mime, size=size, ref=str(path),
                                fetch=lambda: asyncio.to_thread(path.read_bytes))
        return await self.ask(" ".join(words[1:]), (image,))

    def _refuse(self, sentence: str) -> TurnResult:
        self.err.write(f"{sentence}\n")
        self.err.flush()
        return TurnResult(MessageStatus.REJECTED)

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
            line = line.strip()
            command, _, argument = line.partition(" ")
            if command == IMAGE_COMMAND:
                result = await self.ask_with_image(argument)
            elif line:
                result = await self.ask(line)
            else:
                continue
            if on_result is not None and result.status is not MessageStatus.REJECTED:
                on_result(result)


def _file_size(written: str) -> tuple[Path, int] | None:
    """The file a typed path names, with its size; None when it names no readable file."""
    path = Path(written).expanduser()
    try:
        return (path, path.stat().st_size) if path.is_file() else None
    except OSError:
        return None
