"""What a command imports: each library only where it is used, so a command that does not use
it does not pay for loading it. Checked from the modules a real process has loaded at exit."""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
from pathlib import Path

from tests.fakes.llm_backends import FakeOllama, ScriptedReply
from tests.test_cli import write_config

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
