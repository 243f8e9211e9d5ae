"""The Telegram harness: the real adapter against the fake Bot API, with the owner bound."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from adapters.telegram import TelegramAdapter
from bot.config import BindingSpec, Config
from bot.service import Service, open_service
from bot.store.bindings import add_binding
from tests.fakes.llm_backends import FakeOllama
from tests.fakes.telegram import FakeTelegram
from tests.support.helpers import make_config

OWNER, STRANGER, GROUP = 1001, 2002, -100500
EDIT_INTERVAL = 0.3


def telegram_config(data_dir: Path, fake_tg: FakeTelegram, fake_llm: FakeOllama,
                    token: str | None = None) -> Config:
    return make_config(
        data_dir,
        gateway={"log_level": "debug", "providers": {"ollama": {
            "type": "ollama", "base_url": fake_llm.base_url, "first_token_timeout": 5,
            "models": [{"id": fake_llm.models[0], "context_window": 8192,
                        "max_tokens": 2048}]}}},
        agents={"default": {"active_model": f"ollama/{fake_llm.models[0]}"}},
        channels={"telegram": {"token": token or fake_tg.token,
                               "api_base_url": fake_tg.base_url,
                               "file_base_url": fake_tg.base_file_url,
                               "poll_timeout": 2, "edit_interval": EDIT_INTERVAL,
                               "draft_interval": 0.05}},
    )


@dataclass
class Running:
    service: Service
    adapter: TelegramAdapter
    tg: FakeTelegram
    llm: FakeOllama


async def start(config: Config, fake_tg: FakeTelegram, fake_ollama: FakeOllama,
                voice: bool = False) -> AsyncIterator[Running]:
    async with polling(config, voice) as (service, adapter):
        yield Running(service, adapter, fake_tg, fake_ollama)


@asynccontextmanager
async def polling(config: Config, voice: bool = False) -> AsyncIterator[
        tuple[Service, TelegramAdapter]]:
    """The service with the owner bound in their DM, and its Telegram adapter polling."""
    async with open_service(config, voice=voice) as service:
        await add_binding(service.store, BindingSpec(
            persona="admin", platform="telegram", chat_kind="dm", peer=str(OWNER)))
        assert config.channels.telegram is not None
        adapter = TelegramAdapter(config.channels.telegram, service.gateway)
        task = asyncio.create_task(adapter.serve())
        await asyncio.wait_for(adapter.ready.wait(), 10)
        try:
            yield service, adapter
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def texts(tg: FakeTelegram, chat: int) -> list[str]:
    return [str(m.get("text", "")) for m in tg.sent_messages(chat)]


def acknowledged(tg: FakeTelegram, update_id: int) -> bool:
    """The adapter has asked for updates after this one: it has taken it in."""
    return any(int(c.params.get("offset") or 0) > update_id for c in tg.calls_to("getUpdates"))
