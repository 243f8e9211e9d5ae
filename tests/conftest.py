"""Shared fixtures, and a guard that fails any test reaching beyond this machine."""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.service import Service, open_service, open_store
from bot.store import Store
from tests.fakes.discord import FakeDiscord
from tests.fakes.llm_backends import FakeOllama, FakeOpenAI
from tests.fakes.telegram import FakeTelegram
from tests.support.discord import TOKEN
from tests.support.helpers import make_config, ollama_config
from tests.support.telegram import Running, start, telegram_config


def _is_local(host: object) -> bool:
    if not isinstance(host, str):
        return True  # AF_UNIX paths and the like never leave the machine
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _network_guard(event: str, args: tuple[Any, ...]) -> None:
    # An audit hook sees every connect and name lookup in the process, libraries included;
    # raising here makes the offending call fail loudly instead of quietly reaching out.
    if event == "socket.connect":
        address = args[1]
        if isinstance(address, tuple) and not _is_local(address[0]):
            raise ConnectionRefusedError(f"test tried to reach {address!r} beyond loopback")
    elif event == "socket.getaddrinfo" and not _is_local(args[0]):
        raise socket.gaierror(f"test tried to look up {args[0]!r}")


sys.addaudithook(_network_guard)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
async def fake_tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as fake:
        yield fake


@pytest.fixture
async def running(data_dir: Path, fake_tg: FakeTelegram,
                  fake_ollama: FakeOllama) -> AsyncIterator[Running]:
    """The Telegram adapter serving, with the owner bound (see tests/support/telegram.py)."""
    async for value in start(telegram_config(data_dir, fake_tg, fake_ollama), fake_tg,
                             fake_ollama):
        yield value


@pytest.fixture
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(token=TOKEN) as server:
        with server.patch_client_urls():
            yield server


@pytest.fixture
async def fake_ollama() -> AsyncIterator[FakeOllama]:
    async with FakeOllama() as fake:
        yield fake


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
async def store(data_dir: Path) -> AsyncIterator[Store]:
    async with open_store(make_config(data_dir)) as opened:
        yield opened


@pytest.fixture
async def ollama_service(data_dir: Path, fake_ollama: FakeOllama) -> AsyncIterator[Service]:
    async with open_service(ollama_config(data_dir, fake_ollama), voice=False) as service:
        yield service


@pytest.fixture
def cli_env(data_dir: Path) -> Iterator[dict[str, str]]:
    """Environment for running the real `hearthbot` command in a subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTHBOT_")}
    env["HEARTHBOT_HOME"] = str(data_dir)
    env["XDG_CONFIG_HOME"] = str(data_dir / "xdg-config")  # never the developer's own config
    yield env
