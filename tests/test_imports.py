"""What a command imports: each library only where it is used, so a command that does not use
it does not pay for loading it. Checked from the modules a real process has loaded at exit."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import sqlite3
import sys
from pathlib import Path

from bot import control
from bot.store.db import SCHEMA_HEAD
from tests.fakes.llm_backends import FakeOllama, ScriptedReply
from tests.fakes.telegram import FakeTelegram
from tests.support.cli import two_model_config, write_config
from tests.support.helpers import until

# Runs `bot.cli` as `python -m` would, then writes the names of every module loaded.
_REPORTING_MAIN = """
import atexit, json, runpy, sys
report = sys.argv[1]
def _report():
    with open(report, "w") as f:
        json.dump(sorted(k for k, m in sys.modules.items() if m is not None), f)
atexit.register(_report)
sys.argv = ["hearthbot", *sys.argv[2:]]
runpy.run_module("bot.cli", run_name="__main__", alter_sys=True)
"""

_runs = itertools.count()

# Libraries a terminal turn against an HTTP model never needs.
NOT_FOR_A_TERMINAL_TURN = (
    "alembic", "telegram", "discord", "aiohttp", "llama_cpp", "faster_whisper", "piper",
    "onnxruntime", "ctranslate2", "av", "numpy", "PIL", "markdown_it", "mlx", "trio", "rich",
    "click", "pygments",
)


async def loaded_modules(tmp_path: Path, env: dict[str, str], *args: str) -> set[str]:
    report = tmp_path / f"modules-{next(_runs)}.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _REPORTING_MAIN, str(report), *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL)
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, (out.decode(), err.decode())
    return {name.split(".")[0] for name in json.loads(report.read_text())}


async def test_the_command_line_alone_loads_no_store_model_or_platform_library(
        tmp_path: Path, cli_env: dict[str, str]) -> None:
    loaded = await loaded_modules(tmp_path, cli_env, "config", "check")
    assert "bot" in loaded
    heavy = {"sqlalchemy", "aiosqlite", "httpx", "httpcore", *NOT_FOR_A_TERMINAL_TURN}
    assert loaded & heavy == set()


async def test_a_terminal_turn_loads_only_the_store_and_the_http_client(
        tmp_path: Path, fake_ollama: FakeOllama, cli_env: dict[str, str]) -> None:
    fake_ollama.script(ScriptedReply(chunks=("one",)), ScriptedReply(chunks=("two",)))
    config = write_config(tmp_path, fake_ollama.base_url)
    # The first run creates the database; the second finds its schema at the newest revision.
    first = await loaded_modules(tmp_path, cli_env, "--config", config, "chat", "--once", "hi")
    assert "alembic" in first
    loaded = await loaded_modules(tmp_path, cli_env, "--config", config, "chat", "--once", "hi")
    assert {"sqlalchemy", "httpx"} <= loaded
    assert loaded & set(NOT_FOR_A_TERMINAL_TURN) == set()


async def test_an_idle_service_holds_neither_alembic_nor_the_markdown_parser(
        tmp_path: Path, fake_tg: FakeTelegram, fake_ollama: FakeOllama,
        cli_env: dict[str, str], data_dir: Path) -> None:
    """`hearthbot run` on a new database: the migration ran in a child process, and the
    Markdown parser waits for the first reply's final text."""
    report = tmp_path / "modules-run.json"
    env = {**cli_env, "TELEGRAM_BOT_TOKEN": fake_tg.token,
           "HEARTHBOT_CONFIG": two_model_config(tmp_path, fake_ollama, fake_tg)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _REPORTING_MAIN, str(report), "run", env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    sock = control.socket_path(data_dir)
    try:
        await until(lambda: fake_tg.calls_to("getUpdates") and sock.exists(),
                    "the service serving", within=60)
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    loaded = {name.split(".")[0] for name in json.loads(report.read_text())}
    assert {"telegram", "sqlalchemy"} <= loaded
    assert loaded & {"alembic", "markdown_it"} == set()
    with sqlite3.connect(data_dir / "hearthbot.db") as db:  # migrated all the same
        assert db.execute("select version_num from alembic_version").fetchall() == [
            (SCHEMA_HEAD,)]
