"""`hearthbot doctor` on a healthy setup and on broken ones: one line per check, a fix for
each problem, exit 1 when anything fails, and never a token on screen."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from bot.config import load_config
from bot.doctor import run_checks
from tests.fakes.llm_backends import FakeOllama

TOKEN = "123456:secret-telegram-token-value"


async def doctor(*args: str, env: dict[str, str]) -> tuple[int, list[str]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", *args, "doctor", env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert err.decode() == ""
    assert process.returncode is not None
    return process.returncode, out.decode().splitlines()


def write(tmp_path: Path, config: dict[str, Any]) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return str(path)


def ollama_setup(base_url: str, model_path: str | None = None) -> dict[str, Any]:
    providers: dict[str, Any] = {"ollama": {"type": "ollama", "base_url": base_url,
                                            "models": [{"id": "llama3.2:3b"}]}}
    registry: dict[str, Any] = {}
    if model_path is not None:
        providers["local"] = {"type": "embedded",
                              "models": [{"id": "mine", "path": model_path}]}
        registry["local/mine"] = {"alias": "mine"}
    return {
        "gateway": {"providers": providers},
        "agents": {"default": {"active_model": "ollama/llama3.2:3b",
                               "model_registry": registry}},
        "channels": {"telegram": {}},
        "voice": {"stt": {"enabled": False}, "tts": {"enabled": False}},
    }


def newer_database_from_the_future(data_dir: Path) -> None:
    """A database made by a newer hearthbot, last written a day from now."""
    data_dir.mkdir(parents=True)
    with sqlite3.connect(data_dir / "hearthbot.db") as db:
        db.execute("create table alembic_version (version_num varchar(32))")
        db.execute("insert into alembic_version values ('9999')")
    future = time.time() + 86_400
    os.utime(data_dir / "hearthbot.db", (future, future))


def by_check(lines: list[str]) -> dict[str, list[str]]:
    """check name -> the levels reported for it, in order."""
    found: dict[str, list[str]] = {}
    for line in lines:
        level, rest = line[:5].strip(), line[6:]
        if level in ("ok", "warn", "fail"):
            found.setdefault(rest[:16].strip(), []).append(level)
    return found


async def test_a_healthy_setup_is_all_ok(tmp_path: Path, fake_ollama: FakeOllama,
                                         cli_env: dict[str, str]) -> None:
    env = {**cli_env, "TELEGRAM_BOT_TOKEN": TOKEN}
    config = write(tmp_path, ollama_setup(fake_ollama.base_url))
    code, lines = await doctor("--config", config, env=env)
    assert code == 0, "\n".join(lines)
    checks = by_check(lines)
    assert set(checks) == {"config", "service", "voice", "backend", "memory", "token",
                           "migrations", "data directory", "clock"}
    assert all(levels == ["ok"] for levels in checks.values()), lines
    assert f"ok    backend          ollama: {fake_ollama.base_url} answers" in lines
    assert "ok    token            telegram: present (from TELEGRAM_BOT_TOKEN)" in lines
    assert lines[-1] == "0 failed, 0 warnings, 9 ok"
    assert TOKEN not in "\n".join(lines) and "secret" not in "\n".join(lines)
    assert fake_ollama.requests_to("/api/generate") == [], "the doctor loads nothing"


async def test_a_broken_setup_fails_with_a_fix_for_each_problem(
        tmp_path: Path, cli_env: dict[str, str], data_dir: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    config = write(tmp_path, ollama_setup(dead, str(tmp_path / "missing.gguf")))
    newer_database_from_the_future(data_dir)
    code, lines = await doctor("--config", config, env=cli_env)
    assert code == 1
    text = "\n".join(lines)
    assert f"fail  backend          ollama: {dead} does not answer (ProviderUnavailable)" in text
    assert "fail  model files      local/mine: " in text and "missing.gguf does not exist" in text
    assert "fail  token            telegram: no token" in text
    assert "fail  migrations       the database (9999) is newer than this hearthbot" in text
    assert "fail  clock            the clock says" in text
    fixes = [line.strip() for line in lines if line.strip().startswith("fix: ")]
    assert len(fixes) == sum(line.startswith(("fail", "warn")) for line in lines)
    assert "fix: set TELEGRAM_BOT_TOKEN (e.g. in ~/.config/hearthbot/env) or " \
           "channels.telegram.token" in fixes
    assert lines[-1].startswith("5 failed")


async def test_a_config_that_does_not_parse_is_reported_not_fatal(
        tmp_path: Path, cli_env: dict[str, str]) -> None:
    config = tmp_path / "config.json"
    config.write_text('{"gateway": {"port": "eighty"}}')
    code, lines = await doctor("--config", str(config), env=cli_env)
    assert code == 1
    assert lines[0] == ("fail  config           config error at gateway.port: expected an "
                        'integer, got the string "eighty"')
    assert lines[1].strip() == f"fix: edit {config}"
    assert any(line.startswith("ok    data directory") for line in lines)


async def test_memory_headroom_for_the_active_model(tmp_path: Path, data_dir: Path) -> None:
    config = load_config(None)
    from dataclasses import replace

    config = replace(config, data_dir=str(data_dir))
    tight = await run_checks(config, None, None, data_dir,
                             available_memory=lambda: 300_000_000)
    (memory,) = [c for c in tight if c.what == "memory"]
    assert memory.level == "fail"
    assert memory.detail == ("local/smollm2-135m-instruct needs about 0.54 GB at its peak; "
                             "0.30 GB is available")
    roomy = await run_checks(config, None, None, data_dir,
                             available_memory=lambda: 8_000_000_000)
    (memory,) = [c for c in roomy if c.what == "memory"]
    assert memory.level == "ok"
