"""The Discord harness: the real adapter against the fake Discord, started, awaited, stopped."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from adapters.discord import DiscordAdapter
from bot.config import DiscordChannel
from bot.events import MessageStatus
from bot.service import Service
from bot.store import inbox
from tests.fakes.discord import FakeDiscord
from tests.support.helpers import WAIT_LIMIT, Json, until

TOKEN = "MTAwMDAwMDAwMDAwMDAwMDAx.hearth-test.s3cret-t0ken-value"
STRANGER_ID = 300000000000000001
BYSTANDER_ID = 300000000000000002
OTHER_BOT_ID = 300000000000000003
EDIT_INTERVAL = 0.2  # the configured floor between two creates/edits in one channel


def make_adapter(service: Service, **settings: Any) -> DiscordAdapter:
    channel = DiscordChannel(**{"token": TOKEN, "edit_interval": EDIT_INTERVAL, **settings})
    return DiscordAdapter(channel, service.gateway, guild_ready_timeout=0.05)


async def started(adapter: DiscordAdapter) -> asyncio.Task[None]:
    """serve() in a task, once on_ready has fired; a start failure is raised here."""
    task = asyncio.create_task(adapter.serve())
    ready = asyncio.create_task(adapter.ready.wait())
    done, _ = await asyncio.wait({task, ready}, timeout=WAIT_LIMIT,
                                 return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    if task in done:
        task.result()
    assert adapter.ready.is_set(), "the adapter did not become ready"
    return task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@asynccontextmanager
async def serving(service: Service, **settings: Any) -> AsyncIterator[DiscordAdapter]:
    adapter = make_adapter(service, **settings)
    task = await started(adapter)
    try:
        yield adapter
    finally:
        await stop(task)


async def state(service: Service, msg: Json) -> MessageStatus | None:
    return await inbox.state_of(service.store, "discord", msg["channel_id"], msg["id"])


async def settled(service: Service, msg: Json, within: float = WAIT_LIMIT) -> MessageStatus:
    """The message's inbox state once the adapter is done with it (answered, ignored...)."""
    deadline = time.monotonic() + within
    while (current := await state(service, msg)) in (None, MessageStatus.RECEIVED):
        if time.monotonic() > deadline:
            raise AssertionError(f"message {msg['content']!r} is still {current}")
        await asyncio.sleep(0.01)
    assert current is not None
    return current


async def taken(adapter: DiscordAdapter, msg: Json) -> None:
    """Wait until the adapter has taken the message in: stored, or (unaddressed) dropped."""
    await until(lambda: adapter.last_seen == msg["id"], f"message {msg['content']!r} taken in")


async def barrier(fake: FakeDiscord, adapter: DiscordAdapter) -> None:
    """Everything the fake dispatched before this point has been taken in by the adapter.

    Gateway frames arrive in order and the adapter takes messages in first come, first served,
    so once this unaddressed message is taken in, every earlier one was handled.
    """
    await taken(adapter, fake.guild_message(author_id=BYSTANDER_ID, author_name="bystander",
                                            content="just chatting"))


def bot_messages(fake: FakeDiscord, channel_id: int) -> list[Json]:
    return [m for m in fake.messages_in(channel_id) if int(m["author"]["id"]) == fake.bot_id]
