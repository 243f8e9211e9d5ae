"""The web platforms: the owner's browser chat, and apps calling the OpenAI-compatible endpoint.

Neither has a platform of its own to deliver to: the HTTP request that sent a message is the
one that takes its reply. `send` stores the event (before the browser hears it arrived),
queues its answer in the chat's lane, and yields the reply's parts as the gateway hands them
over, ending with `Finished`. A browser that goes away mid-reply changes nothing: the answer
runs to its end in the lane and is recorded, so the history shows it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from adapters.lanes import ChatLanes
from bot.events import (
    ChatKind,
    InboundEvent,
    MessageStatus,
    Reply,
    ReplyFailed,
    ReplyStatus,
    ReplyText,
    VoiceAttachment,
)
from bot.gateway import Gateway
from bot.turn import TurnResult

if TYPE_CHECKING:
    from bot.voice.tts import SpokenClip

log = logging.getLogger(__name__)

WEB = "web"
OWNER = "owner"  # the signed-in owner; bound to the admin persona by the default config
# Spoken replies kept for the page to fetch; older ones are dropped.
CLIPS_KEPT = 16


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Status:
    text: str


@dataclass(frozen=True)
class Failed:
    message: str


@dataclass(frozen=True)
class Spoken:
    """A spoken reply is ready: fetch it with `clip(clip_id)`."""

    clip_id: str
    duration: float


@dataclass(frozen=True)
class Finished:
    """The answer is complete (its record written); `result` is None for a duplicate."""

    result: TurnResult | None


WebPart = Text | Status | Failed | Spoken | Finished


class WebChannel:
    """One web platform (`web` for the browser chat, `api` for the OpenAI endpoint)."""

    def __init__(self, gateway: Gateway, platform: str = WEB) -> None:
        self.gateway = gateway
        self.platform = platform
        self.lanes = ChatLanes()
        self._outlets: dict[str, asyncio.Queue[WebPart]] = {}
        self._clips: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._answering = True

    def event(self, text: str, *, sender: str = OWNER, chat_id: str | None = None,
              voice: VoiceAttachment | None = None) -> InboundEvent:
        return InboundEvent(platform=self.platform, chat_id=chat_id or sender,
                            chat_kind=ChatKind.DM, sender_id=sender, sender_name=sender,
                            message_id=uuid.uuid4().hex, text=text, voice=voice)

    def voice_event(self, audio: bytes, mime_type: str, duration: float, *,
                    sender: str = OWNER) -> InboundEvent:
        """A recording from the browser; its bytes live only as long as this event."""
        message_id = uuid.uuid4().hex

        async def fetch() -> bytes:
            return audio

        voice = VoiceAttachment(mime_type=mime_type, duration=duration,
                                ref=f"{self.platform}:{message_id}", fetch=fetch)
        return InboundEvent(platform=self.platform, chat_id=sender, chat_kind=ChatKind.DM,
                            sender_id=sender, sender_name=sender, message_id=message_id,
                            voice=voice)

    async def send(self, event: InboundEvent) -> AsyncIterator[WebPart]:
        """Store the event, answer it in its chat's lane, and yield the reply as it comes."""
        outlet: asyncio.Queue[WebPart] = asyncio.Queue()
        self._outlets[event.message_id] = outlet
        try:
            inbox_id = await self.gateway.accept(event)
            if inbox_id is None:
                yield Finished(None)
                return
            self.lanes.submit(event.chat_id, partial(self._answer, inbox_id, event, ()))
            while True:
                part = await outlet.get()
                yield part
                if isinstance(part, Finished):
                    return
        finally:
            self._outlets.pop(event.message_id, None)

    def clip(self, clip_id: str) -> bytes | None:
        return self._clips.get(clip_id)

    async def resume(self) -> None:
        """Answer what the last run stored but never answered; nobody waits for these, but
        the history (and the record) gets them exactly once."""
        for pending in await self.gateway.pending(self.platform):
            log.info("%s: resuming unanswered message %s", self.platform,
                     pending.event.message_id)
            self.lanes.submit(pending.event.chat_id, partial(
                self._answer, pending.inbox_id, pending.event, pending.sent))

    async def drain(self, seconds: float) -> None:
        """Finish answers under way within `seconds`; the rest wait for the next start."""
        self._answering = False
        try:
            await asyncio.wait_for(self.lanes.idle(), seconds)
        except TimeoutError:
            log.warning("%s: replies still under way after %.0f s are cut off; they are "
                        "answered at the next start", self.platform, seconds)
        await self.lanes.close()

    async def _answer(self, inbox_id: int, event: InboundEvent,
                      leftovers: tuple[str, ...]) -> None:
        result: TurnResult | None = None
        try:
            if not self._answering:
                return
            result = await self.gateway.answer(inbox_id, event, self._deliver,
                                               self._deliver_voice, leftovers)
        finally:
            self._put(event.message_id,
                      Finished(result or TurnResult(MessageStatus.RECEIVED)))

    def _put(self, message_id: str, part: WebPart) -> None:
        outlet = self._outlets.get(message_id)
        if outlet is not None:
            outlet.put_nowait(part)

    async def _deliver(self, event: InboundEvent, reply: Reply) -> None:
        async for part in reply:
            if isinstance(part, ReplyText):
                self._put(event.message_id, Text(part.text))
            elif isinstance(part, ReplyStatus):
                self._put(event.message_id, Status(part.text))
            elif isinstance(part, ReplyFailed):
                self._put(event.message_id, Failed(part.message))

    async def _deliver_voice(self, event: InboundEvent,
                             clip: Awaitable[SpokenClip | None]) -> None:
        spoken = await clip
        if spoken is None:
            return
        clip_id = uuid.uuid4().hex
        self._clips[clip_id] = spoken.ogg_opus
        while len(self._clips) > CLIPS_KEPT:
            self._clips.popitem(last=False)
        self._put(event.message_id, Spoken(clip_id, spoken.duration))
