"""One platform failing never stops another, and only what a person must fix ends the
service: the real adapters under `serve_platforms`, against the fakes."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import discord
import pytest

from adapters.discord import DiscordAdapter
from adapters.telegram import TelegramAdapter
from bot.config import DiscordChannel
from bot.errors import AdapterStartError
from bot.service import Service, open_service, serve_platforms
from tests.fakes.llm_backends import FakeOllama
from tests.fakes.telegram import FakeTelegram
from tests.support.discord import TOKEN
from tests.support.helpers import until
from tests.support.telegram import STRANGER, telegram_config, texts


def _closed_port() -> int:
    with socket.socket() as probe:  # free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_discord_failing_to_connect_does_not_stop_telegram(
        data_dir: Path, fake_tg: FakeTelegram, fake_ollama: FakeOllama,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(discord.http.Route, "BASE", f"http://127.0.0.1:{_closed_port()}/api/v10")
    async with open_service(telegram_config(data_dir, fake_tg, fake_ollama),
                            voice=False) as service:
        assert service.config.channels.telegram is not None
        telegram = TelegramAdapter(service.config.channels.telegram, service.gateway)
        failing = _CountingDiscord(DiscordChannel(token=TOKEN), service)
        stopping = asyncio.Event()
        serving = asyncio.create_task(serve_platforms(service, [telegram, failing], stopping))
        await asyncio.wait_for(telegram.ready.wait(), 30)
        await until(lambda: failing.attempts >= 2, "Discord to be retried", within=30)
        fake_tg.push_text(chat_id=STRANGER, from_id=STRANGER, text="still answering?")
        await until(lambda: texts(fake_tg, STRANGER) == ["Hello there."], "Telegram's answer")
        stopping.set()
        assert await asyncio.wait_for(serving, 30) is None


async def test_a_rejected_token_ends_the_service_with_its_sentence(
        data_dir: Path, fake_tg: FakeTelegram, fake_ollama: FakeOllama) -> None:
    async with open_service(telegram_config(data_dir, fake_tg, fake_ollama, token="1:wrong"),
                            voice=False) as service:
        assert service.config.channels.telegram is not None
        telegram = TelegramAdapter(service.config.channels.telegram, service.gateway)
        failure = await asyncio.wait_for(
            serve_platforms(service, [telegram], asyncio.Event()), 30)
    assert isinstance(failure, AdapterStartError)
    assert failure.user_message.startswith("Telegram rejected the bot token")


class _CountingDiscord(DiscordAdapter):
    """The real Discord adapter, counting how often the supervisor starts it."""

    def __init__(self, channel: DiscordChannel, service: Service) -> None:
        super().__init__(channel, service.gateway, guild_ready_timeout=0.05)
        self.attempts = 0

    async def serve(self) -> None:
        self.attempts += 1
        await super().serve()
