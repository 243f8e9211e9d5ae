"""The `hearthbot` command as a person runs it: a child process, its own environment, and
the config files the command-line tests hand it."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from bot import control
from tests.fakes.llm_backends import FakeOllama
from tests.fakes.telegram import FakeTelegram
from tests.support.helpers import until

SMALL, BIG = "llama3.2:3b", "qwen3:8b"


def write_config(tmp_path: Path, base_url: str) -> str:
    """A config file with one Ollama model at `base_url`; its path."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps({
        # `run` serves the web face; a free port keeps it off whatever holds the default.
        "gateway": {"port": 0, "providers": {"home": {
            "type": "ollama", "base_url": base_url, "first_token_timeout": 5,
            "models": [{"id": "llama3.2:3b", "context_window": 8192}]}}},
        "agents": {"default": {"active_model": "home/llama3.2:3b"}},
    }))
    return str(path)


def two_model_config(tmp_path: Path, fake_llm: FakeOllama, fake_tg: FakeTelegram | None = None,
                     tries: int = 30) -> str:
    """A config file with two Ollama models (SMALL active, BIG by alias) and, given a fake
    Telegram, that channel; its path."""
    config: dict[str, Any] = {
        "gateway": {"port": 0, "providers": {"ollama": {
            "type": "ollama", "base_url": fake_llm.base_url, "first_token_timeout": 10,
            "models": [{"id": SMALL}, {"id": BIG}]}},
            "residency": {"wait_tries": tries, "wait_seconds": 0.05}},
        "agents": {"default": {"active_model": f"ollama/{SMALL}", "model_registry": {
            f"ollama/{SMALL}": {"alias": "small"}, f"ollama/{BIG}": {"alias": "big"}}}},
    }
    if fake_tg is not None:
        config["channels"] = {"telegram": {"api_base_url": fake_tg.base_url,
                                           "file_base_url": fake_tg.base_file_url,
                                           "poll_timeout": 1}}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return str(path)


async def hearthbot(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """Run one `hearthbot` command to its end: exit code, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", *args, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@asynccontextmanager
async def hearthbot_run(env: dict[str, str], fake_tg: FakeTelegram,
                        data_dir: Path) -> AsyncIterator[None]:
    """`hearthbot run` serving Telegram until the block ends; then SIGTERM, after which it
    must exit 0 and leave no control socket behind."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "run", env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    sock = control.socket_path(data_dir)
    try:
        await until(lambda: fake_tg.calls_to("getUpdates") and sock.exists(),
                    "the service serving", within=60)
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    assert not sock.exists(), "the socket is removed at exit"
