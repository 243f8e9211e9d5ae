"""Showing a reply while it streams, within a platform's rate limits, and never losing it.

Two ways of showing progress, shared by the adapters:
- `stream_by_editing`: send the first text, then edit it in place (Discord, Telegram groups).
- `stream_by_preview`: update an ephemeral preview, then send real messages (Telegram drafts).

Progress updates are best effort: one call per pacing tick at most, skipped while the chat is
rate limited. The final text is delivered for sure: it waits out every `retry_after` and
retries network errors, so the whole reply arrives however often the platform pushes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from adapters.chunking import split_message
from bot.errors import DeliveryError, PlatformUnavailable, RateLimited
from bot.events import ReplyFailed, ReplyPart, ReplyStatus, ReplyText

if TYPE_CHECKING:
    from bot.voice.tts import SpokenClip

log = logging.getLogger(__name__)

T = TypeVar("T")
Handle = TypeVar("Handle")
Sent_co = TypeVar("Sent_co", covariant=True)

TYPING_REFRESH_SECONDS = 4.0  # chat actions fade after about 5 s
# Telegram asks for a chat action only when an answer takes a noticeable time: a reply that is
# already showing needs none, and each one skipped is a request the rate limit keeps.
TYPING_AFTER_SECONDS = 0.1
FINAL_ATTEMPTS = 8


@dataclass
class Pacer:
    """Spaces the calls to one chat at least `interval` apart, and holds them all while the
    platform has asked us to wait."""

    interval: float
    _next_at: float = field(default=0.0, init=False)

    def ready(self) -> bool:
        return time.monotonic() >= self._next_at

    def used(self) -> None:
        self._next_at = max(self._next_at, time.monotonic() + self.interval)

    def hold(self, seconds: float) -> None:
        self._next_at = max(self._next_at, time.monotonic() + seconds)

    async def wait(self) -> None:
        delay = self._next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


class ChatPacers:
    """One Pacer per chat, made on first use: platforms limit calls per chat.

    At most `keep` are remembered: past that, the least recently used pacers that hold
    nothing back are forgotten (a new one for that chat starts ready, as it would be).
    """

    def __init__(self, keep: int = 1024) -> None:
        self.keep = keep
        self._pacers: OrderedDict[str, Pacer] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pacers)

    def get(self, chat_id: str, interval: float) -> Pacer:
        pacer = self._pacers.get(chat_id)
        if pacer is None:
            pacer = self._pacers[chat_id] = Pacer(interval)
            if len(self._pacers) > self.keep:
                self._forget_idle()
        self._pacers.move_to_end(chat_id)
        return pacer

    def _forget_idle(self) -> None:
        for chat_id in [c for c, p in self._pacers.items() if p.ready()]:
            if len(self._pacers) <= self.keep:
                return
            del self._pacers[chat_id]


async def deliver_surely(pacer: Pacer, call: Callable[[], Awaitable[T]],
                         attempts: int = FINAL_ATTEMPTS) -> T:
    """Make a call that must succeed: wait out rate limits, back off on network errors."""
    for attempt in range(attempts):
        await pacer.wait()
        try:
            result = await call()
        except RateLimited as exc:
            log.warning("rate limited, waiting %.1f s before retrying", exc.retry_after)
            pacer.hold(exc.retry_after)
        except PlatformUnavailable as exc:
            backoff = min(0.5 * 2**attempt, 30.0)
            log.warning("platform unavailable (%s); retrying in %.1f s", exc, backoff)
            pacer.hold(backoff)
        else:
            pacer.used()
            return result
    raise DeliveryError(f"gave up after {attempts} attempts")


async def try_now(pacer: Pacer, call: Callable[[], Awaitable[object]]) -> bool:
    """Make a progress call if the chat may be called now; a refusal only delays the next."""
    if not pacer.ready():
        return False
    try:
        await call()
    except RateLimited as exc:
        pacer.hold(exc.retry_after)
        return False
    except PlatformUnavailable as exc:
        log.info("progress update skipped: %s", exc)
        pacer.hold(pacer.interval)
        return False
    pacer.used()
    return True


@contextlib.asynccontextmanager
async def typing_while(action: Callable[[], Awaitable[object]] | None) -> AsyncIterator[
        Callable[[], None]]:
    """Refresh a typing indicator until the returned `stop()` is called or the block ends."""
    if action is None:
        yield lambda: None
        return

    async def refresh() -> None:
        await asyncio.sleep(TYPING_AFTER_SECONDS)
        while True:
            with contextlib.suppress(DeliveryError):
                await action()
            await asyncio.sleep(TYPING_REFRESH_SECONDS)

    task = asyncio.create_task(refresh())

    def stop() -> None:
        task.cancel()

    try:
        yield stop
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def deliver_voice_note(clip: Awaitable[SpokenClip | None], pacer: Pacer,
                             recording: Callable[[], Awaitable[object]],
                             send: Callable[[SpokenClip], Awaitable[object]]) -> None:
    """Show `recording` while the clip is being made, then send it for sure (if anything was
    speakable)."""
    async with typing_while(recording):
        spoken = await clip
    if spoken is not None:
        await deliver_surely(pacer, partial(send, spoken))


class EditableChat(Protocol[Handle]):
    """A chat where a sent message can be edited in place."""

    limit: int

    def final_differs(self, shown: str, final: str) -> bool:
        """Whether a message showing `shown` as progress must be edited to show `final`
        (the text changed, or its final form is rendered with formatting the progress lacks)."""
        ...

    async def send(self, text: str, final: bool) -> Handle: ...

    async def edit(self, handle: Handle, text: str, final: bool) -> None: ...

    async def typing(self) -> None: ...


@dataclass
class _Shown(Generic[Handle]):
    handle: Handle
    text: str


# Never sent as an empty message: the core always ends a reply without text with a sentence
# saying why, so this is only the last guard (a platform would refuse the empty text anyway).
NOTHING_TO_SAY = "I have no answer to that."


def final_text(text: str, failure: str | None) -> str:
    """What the user finally reads: the reply, and the plain sentence if it broke off."""
    if failure is None:
        return text if text.strip() else NOTHING_TO_SAY
    return f"{text.rstrip()}\n\n{failure}" if text.strip() else failure


def with_status(text: str, status: str) -> str:
    """Progress as shown: the reply so far, and below it what a tool is doing, if anything."""
    if not status:
        return text
    return f"{text.rstrip()}\n\n{status}" if text.strip() else status


async def _nothing(handle: object) -> None:
    return None


async def stream_by_editing(parts: AsyncIterable[ReplyPart], chat: EditableChat[Handle],
                            pacer: Pacer,
                            sent: Callable[[Handle], Awaitable[None]] = _nothing) -> list[Handle]:
    """Show the reply by sending it and editing it as it grows; returns the messages sent.

    `sent` is told of each message as soon as it exists, except a last one sent at the very
    end (its turn is recorded right after).
    """
    shown: list[_Shown[Handle]] = []
    text, failure, status = "", None, ""

    async def progress() -> None:
        pieces = split_message(with_status(text, status), chat.limit)
        # One call per tick: complete a finished message first, then open the next one, then
        # grow the current one.
        for index, piece in enumerate(pieces):
            if index == len(shown):
                handle = await chat.send(piece, False)
                shown.append(_Shown(handle, piece))
                await sent(handle)
                return
            if shown[index].text != piece:
                await chat.edit(shown[index].handle, piece, False)
                shown[index].text = piece
                return

    async with typing_while(chat.typing) as stop_typing:
        async for part in parts:
            if isinstance(part, ReplyText):
                text, status = text + part.text, ""
                if text.strip():
                    stop_typing()
                    await try_now(pacer, progress)
            elif isinstance(part, ReplyStatus):
                status = part.text  # typing stays on: the answer is still to come
                await try_now(pacer, progress)
            else:
                failure = part.message
    pieces = split_message(final_text(text, failure), chat.limit)
    for index, piece in enumerate(pieces):
        if index < len(shown):
            message = shown[index]
            if not chat.final_differs(message.text, piece):
                continue  # an edit that changes nothing would still spend the rate budget
            await deliver_surely(pacer, partial(chat.edit, message.handle, piece, True))
            message.text = piece
        else:
            handle = await deliver_surely(pacer, partial(chat.send, piece, True))
            shown.append(_Shown(handle, piece))
            if index < len(pieces) - 1:
                await sent(handle)
    return [message.handle for message in shown]


class PreviewChat(Protocol[Sent_co]):
    """A chat with an ephemeral preview (a draft) that real messages replace."""

    limit: int

    async def preview(self, text: str) -> None: ...

    async def send(self, text: str, final: bool) -> Sent_co: ...

    async def typing(self) -> None: ...


async def stream_by_preview(parts: AsyncIterable[ReplyPart], chat: PreviewChat[Handle],
                            pacer: Pacer,
                            sent: Callable[[Handle], Awaitable[None]] = _nothing) -> list[Handle]:
    """Show the reply in a preview as it grows; each piece that fills up, and the rest at the
    end, is sent as a real message. Returns the messages sent; `sent` is told of each but the
    very last, as in `stream_by_editing`."""
    messages: list[Handle] = []
    text, failure, previewed, status = "", None, "", ""

    async with typing_while(chat.typing) as stop_typing:
        async for part in parts:
            if isinstance(part, ReplyFailed):
                failure = part.message
                continue
            if isinstance(part, ReplyStatus):
                status = part.text
            else:
                text, status = text + part.text, ""
            pieces = split_message(text, chat.limit)
            while len(pieces) - 1 > len(messages):  # a full piece becomes a real message
                piece = pieces[len(messages)]
                messages.append(await deliver_surely(pacer, partial(chat.send, piece, True)))
                await sent(messages[-1])
            current = with_status(pieces[-1], status)
            if current.strip() and current != previewed:
                if not status:
                    stop_typing()
                if await try_now(pacer, partial(chat.preview, current)):
                    previewed = current
    remaining = split_message(final_text(text, failure), chat.limit)[len(messages):]
    for index, piece in enumerate(remaining):
        messages.append(await deliver_surely(pacer, partial(chat.send, piece, True)))
        if index < len(remaining) - 1:
            await sent(messages[-1])
    return messages
