"""Seeded fuzz: a few thousand mutated payloads per platform, through the real client libraries
and the fakes. The service stays up, nothing is logged as an error, and every valid message
among them (and after them) is answered exactly once. The 10,000+ soak against the real
`hearthbot run` process is tests/trials/soak.py."""

from __future__ import annotations

import asyncio
import logging

import pytest

from bot.events import MessageStatus
from bot.service import Service
from tests.fakes.discord import FakeDiscord
from tests.fakes.llm_backends import FakeOllama
from tests.support.discord import serving, settled
from tests.support.helpers import db_rows, until
from tests.support.telegram import Running, acknowledged
from tests.trials.mutations import (
    DiscordWorld,
    discord_dispatches,
    discord_valid,
    telegram_updates,
    telegram_valid,
)

SEED = 20261202
COUNT = 2_000
VALID_EVERY = 100
ANSWER = "Hello there."


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()[:200]}" for r in caplog.records
            if r.levelno >= logging.ERROR]


async def test_telegram_survives_mutated_updates_and_answers_the_valid_ones_once(
        running: Running, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    chats: list[int] = []
    for valid, update in telegram_updates(SEED, COUNT, valid_every=VALID_EVERY):
        if valid:
            chats.append(int(update["message"]["chat"]["id"]))
        running.tg.push_update(update)
    after = [telegram_valid(1000 + k) for k in range(4)]  # valid messages after the fuzz
    for update in after:
        chats.append(int(update["message"]["chat"]["id"]))
        running.tg.push_update(update)
    newest = running.tg.push_text(chat_id=7_777_777, from_id=7_777_777, text="the last one")
    await until(lambda: acknowledged(running.tg, int(newest["update_id"])),
                "every update taken in", within=240)
    await until(lambda: all(_texts(running, chat) == [ANSWER] for chat in chats),
                "every valid message answered", within=120)
    await running.adapter.idle()
    assert all(_texts(running, chat) == [ANSWER] for chat in chats), "each exactly once"
    assert len(chats) == COUNT // VALID_EVERY + 4
    asked = [body["messages"][-1]["content"] for body in running.llm.chat_bodies()]
    for k in [*range(COUNT // VALID_EVERY), *range(1000, 1004)]:
        assert asked.count(f"valid message {k}") == 1, k
    assert _errors(caplog) == []
    quarantined = db_rows(running.service, "select count(*) from quarantine")[0][0]
    assert isinstance(quarantined, int) and quarantined > 0


def _texts(running: Running, chat: int) -> list[str]:
    return [str(m.get("text", "")) for m in running.tg.sent_messages(chat)]


async def test_discord_survives_mutated_dispatches_and_answers_the_valid_ones_once(
        fake_discord: FakeDiscord, ollama_service: Service, fake_ollama: FakeOllama,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    users = [800_000_000_000_000_000 + i for i in range(COUNT // VALID_EVERY + 8)]
    fuzz_users = [810_000_000_000_000_000 + i for i in range(10)]
    world = DiscordWorld(
        bot_id=fake_discord.bot_id, bot_name=fake_discord.bot_name,
        guild_id=fake_discord.guild_id, channel_id=fake_discord.channel_id,
        dm_channels=tuple((u, fake_discord.dm_channel_id(u)) for u in users),
        fuzz_dm_channels=tuple((u, fake_discord.dm_channel_id(u)) for u in fuzz_users))
    valid_frames: list[dict[str, object]] = []
    async with serving(ollama_service, message_content_intent=True) as adapter:
        for n, (valid, frame) in enumerate(discord_dispatches(SEED, COUNT,
                                                              valid_every=VALID_EVERY,
                                                              world=world)):
            fake_discord.dispatch_as_is(str(frame["t"]), frame["d"])
            if valid:
                valid_frames.append(frame["d"])
            if n % 200 == 199:
                await asyncio.sleep(0)  # let the client read, as a paced gateway would
        for k in range(4):  # valid messages after the fuzz
            frame = discord_valid(COUNT + k, world)
            fake_discord.dispatch_as_is(str(frame["t"]), frame["d"])
            valid_frames.append(frame["d"])
        for data in valid_frames:
            assert await settled(ollama_service, data, within=120) == MessageStatus.ANSWERED
        await adapter.idle()
        assert adapter.client is not None and not adapter.client.is_closed()
    asked = [body["messages"][-1]["content"] for body in fake_ollama.chat_bodies()]
    for data in valid_frames:
        words = str(data["content"]).split("> ")[-1]  # the bot's mention is taken out
        assert asked.count(words) == 1, f"{words!r} answered {asked.count(words)} times"
    assert _errors(caplog) == []
