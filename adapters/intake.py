"""What every platform adapter does the same way on the way in: find its token, keep a payload
it cannot read out of the way, store each event before the platform hears it arrived, answer
it in its chat's lane, resume what the last run left unanswered, and drain on a stop."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial

from adapters.lanes import ChatLanes, Job
from bot.errors import AdapterStartError
from bot.events import InboundEvent
from bot.gateway import Gateway
from bot.store import inbox
from bot.turn import Deliver, DeliverVoice

log = logging.getLogger(__name__)

# Fetches a stored event's voice note or image again, by the platform's reference to the file.
FetchAgain = Callable[[InboundEvent, str], Awaitable[bytes]]


def bot_token(platform: str, configured: str | None, variable: str) -> str:
    """The bot token from the config or the environment, without stray whitespace."""
    token = (configured or os.environ.get(variable, "")).strip()
    if not token:
        raise AdapterStartError(f"{platform.capitalize()} needs a bot token: set "
                                f"channels.{platform}.token or {variable}.")
    return token


def shape_of(payload: object, depth: int = 4) -> object:
    """A payload's structure without its content: keys and value types, for the log."""
    if isinstance(payload, Mapping):
        if depth == 0:
            return "{...}"
        return {str(k): shape_of(v, depth - 1) for k, v in list(payload.items())[:40]}
    if isinstance(payload, Sequence) and not isinstance(payload, str | bytes):
        return [shape_of(payload[0], depth - 1)] if payload and depth else []
    return type(payload).__name__


class Intake:
    """Takes a platform's events into the gateway, in order, each answered once.

    With `hold=True` the answers wait until `release()`: Discord must not send before its
    gateway session is ready. After `stop_answering()` new events are still stored (so none
    is lost) but left for the next start.
    """

    def __init__(self, platform: str, gateway: Gateway, deliver: Deliver,
                 deliver_voice: DeliverVoice, *, hold: bool = False) -> None:
        self.platform = platform
        self.gateway = gateway
        self.deliver = deliver
        self.deliver_voice = deliver_voice
        self.lanes = ChatLanes()
        self._held: list[tuple[str, Job]] | None = [] if hold else None
        self._answering = True
        # The last message taken in, kept or dropped (or the last payload quarantined): the
        # platform hands messages over in order, so everything before it was handled too.
        self.last_seen: str | None = None
        # asyncio.Lock wakes waiters first come, first served: arrival order is kept even when
        # the platform library hands over each message in a task of its own.
        self._order = asyncio.Lock()

    async def take(self, event: InboundEvent) -> None:
        """Store the event (a duplicate is dropped there), then queue its answer."""
        async with self._order:
            if self.gateway.wants(event):
                inbox_id = await self.gateway.accept(event)
                if inbox_id is not None and self._answering:
                    self._queue(inbox_id, event)
            self.last_seen = event.message_id

    async def quarantine(self, ref: str, payload: object, problem: BaseException) -> None:
        """Keep a payload that could not be read out of the way: logged and stored by its ids
        and shape, never its content, so that the next one goes on."""
        shape = repr(shape_of(payload))
        log.warning("%s: unreadable payload %s quarantined (%s: %s); shape %s", self.platform,
                    ref, type(problem).__name__, problem, shape)
        async with self._order:
            await inbox.quarantine(self.gateway.store, self.platform, ref,
                                   f"{type(problem).__name__}: {problem}", shape)
            self.last_seen = ref

    async def resume(self, fetch_again: FetchAgain) -> None:
        """Queue what the last run stored but never answered.

        Called before the adapter starts receiving, so nothing of this run is among them and
        nothing can be answered twice.
        """
        for pending in await self.gateway.pending(self.platform):
            log.info("%s: resuming unanswered message %s", self.platform,
                     pending.event.message_id)
            self._queue(pending.inbox_id, _fetchable_again(pending.event, fetch_again),
                        pending.sent)

    def release(self) -> bool:
        """Hand held answers to their lanes; False when they were released before."""
        held, self._held = self._held, None
        for chat_id, job in held or ():
            self.lanes.submit(chat_id, job)
        return held is not None

    async def idle(self) -> None:
        """Wait until every message taken in so far has been answered."""
        await self.lanes.idle()

    async def drain(self, seconds: float) -> None:
        """Stop starting answers, and give those under way `seconds` to finish; what is still
        running then is cancelled and stays in the inbox for the next start."""
        self._answering = False
        try:
            await asyncio.wait_for(self.lanes.idle(), seconds)
        except TimeoutError:
            log.warning("%s: replies still under way after %.0f s are cut off; they are "
                        "answered at the next start", self.platform, seconds)
        await self.close()

    async def close(self) -> None:
        await self.lanes.close()

    def _queue(self, inbox_id: int, event: InboundEvent,
               leftovers: tuple[str, ...] = ()) -> None:
        # The lane keeps a chat's turns in order: a second voice note is heard only after the
        # reply to the first has been spoken.
        job = partial(self._answer, inbox_id, event, leftovers)
        if self._held is not None:
            self._held.append((event.chat_id, job))
        else:
            self.lanes.submit(event.chat_id, job)

    async def _answer(self, inbox_id: int, event: InboundEvent,
                      leftovers: tuple[str, ...]) -> None:
        if not self._answering:  # stopping: it stays in the inbox for the next start
            return
        await self.gateway.answer(inbox_id, event, self.deliver, self.deliver_voice, leftovers)


def _fetchable_again(event: InboundEvent, fetch_again: FetchAgain) -> InboundEvent:
    """A stored event's voice note and images, fetchable again by their platform references."""
    if event.voice is not None:
        fetch = partial(fetch_again, event, event.voice.ref)
        event = replace(event, voice=replace(event.voice, fetch=fetch))
    if event.images:
        event = replace(event, images=tuple(
            replace(image, fetch=partial(fetch_again, event, image.ref))
            for image in event.images))
    return event
