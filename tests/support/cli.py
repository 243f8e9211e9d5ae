"""The `hearthbot` command as a person runs it: a child process, its own environment."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from bot import control
from tests.fakes.telegram import FakeTelegram
from tests.support.helpers import until


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
