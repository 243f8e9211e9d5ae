"""What every platform adapter does the same way on the way in: find its token, store each
event before the platform hears it arrived, answer it in its chat's lane, and resume what the
last run left unanswered."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import partial

from adapters.lanes import ChatLanes, Job
from bot.errors import AdapterStartError
from bot.events import InboundEvent
from bot.gateway import Gateway
from bot.turn import Deliver, DeliverVoice

log = logging.getLogger(__name__)

# Fetches a stored event's voice note again, by the platform's reference to the file.
FetchAgain = Callable[[InboundEvent, str], Awaitable[bytes]]


def bot_token(platform: str, configured: str | None, variable: str) -> str:
    """The bot token from the config or the environment, without stray whitespace."""
    token = (configured or os.environ.get(variable, "")).strip()
    if not token:
        raise AdapterStartError(f"{platform.capitalize()} needs a bot token: set "
                                f"channels.{platform}.token or {variable}.")
    return token


class Intake:
    """Takes a platform's events into the gateway, in order, each answered once.

    With `hold=True` the answers wait until `release()`: Discord must not send before its
    gateway session is ready.
    """

    def __init__(self, platform: str, gateway: Gateway, deliver: Deliver,
                 deliver_voice: DeliverVoice, *, hold: bool = False) -> None:
        self.platform = platform
        self.gateway = gateway
        self.deliver = deliver
        self.deliver_voice = deliver_voice
        self.lanes = ChatLanes()
        self._held: list[tuple[str, Job]] | None = [] if hold else None
        # asyncio.Lock wakes waiters first come, first served: arrival order is kept even when
        # the platform library hands over each message in a task of its own.
        self._order = asyncio.Lock()

    async def take(self, event: InboundEvent) -> None:
        """Store the event (a duplicate is dropped there), then queue its answer."""
        async with self._order:
            inbox_id = await self.gateway.accept(event)
            if inbox_id is not None:
                self._queue(inbox_id, event)

    async def resume(self, fetch_again: FetchAgain) -> None:
        """Queue what the last run stored but never answered.

        Called before the adapter starts receiving, so nothing of this run is among them and
        nothing can be answered twice.
        """
        for inbox_id, event in await self.gateway.pending(self.platform):
            log.info("%s: resuming unanswered message %s", self.platform, event.message_id)
            self._queue(inbox_id, _fetchable_again(event, fetch_again))

    def release(self) -> bool:
        """Hand held answers to their lanes; False when they were released before."""
        held, self._held = self._held, None
        for chat_id, job in held or ():
            self.lanes.submit(chat_id, job)
        return held is not None

    async def idle(self) -> None:
        """Wait until every message taken in so far has been answered."""
        await self.lanes.idle()

    async def close(self) -> None:
        await self.lanes.close()

    def _queue(self, inbox_id: int, event: InboundEvent) -> None:
        # Unaddressed group messages go the same way: the gateway marks them ignored without
        # calling the model or delivering anything. The lane keeps a chat's turns in order: a
        # second voice note is heard only after the reply to the first has been spoken.
        job = partial(self.gateway.answer, inbox_id, event, self.deliver, self.deliver_voice)
        if self._held is not None:
            self._held.append((event.chat_id, job))
        else:
            self.lanes.submit(event.chat_id, job)


def _fetchable_again(event: InboundEvent, fetch_again: FetchAgain) -> InboundEvent:
    """A stored event's voice note, fetchable again by its platform reference."""
    if event.voice is None:
        return event
    fetch = partial(fetch_again, event, event.voice.ref)
    return replace(event, voice=replace(event.voice, fetch=fetch))
