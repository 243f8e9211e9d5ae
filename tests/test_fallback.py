"""Fallback models end to end: the persona's model goes down, the first fallback that answers
takes its turns (one model resident at a time), and the model answers again once it is back.
The real Telegram client, fake model servers, and the bundled model as the last resort."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bot.cli import status_lines
from bot.config import BUNDLED_MODEL_ID
from bot.errors import ConfigError
from bot.service import status_report
from tests.fakes.llm_backends import FakeOllama, FakeOpenAI, ScriptedReply
from tests.fakes.telegram import FakeTelegram
from tests.support.cli import hearthbot, hearthbot_run
from tests.support.helpers import db_rows, make_config, until
from tests.support.telegram import STRANGER, Running, start, texts

HOME = "home/llama3.2:3b"
CLOUD = "cloud/gpt-test"
LOCAL = f"local/{BUNDLED_MODEL_ID}"


def sections(tg: FakeTelegram, ollama: FakeOllama, fallback: list[str],
             openai: FakeOpenAI | None = None) -> dict[str, Any]:
    providers: dict[str, Any] = {
        "home": {"type": "ollama", "base_url": ollama.base_url, "first_token_timeout": 5,
                 "models": [{"id": "llama3.2:3b"}]},
        "local": {"type": "embedded", "threads": 1,
                  "models": [{"id": BUNDLED_MODEL_ID, "max_tokens": 12}]}}
    if openai is not None:
        providers["cloud"] = {"type": "openai-compat", "base_url": openai.base_url,
                              "first_token_timeout": 5, "models": [{"id": "gpt-test"}]}
    return {
        # Probing at once: every turn asks the model first, so a test needs no waiting.
        "gateway": {"log_level": "debug", "providers": providers,
                    "residency": {"fallback_probe_seconds": 0}},
        "agents": {"default": {"active_model": HOME}, "instances": {
            "admin": {"role": "admin"},
            "guest": {"role": "guest", "fallback": fallback}}},
        "channels": {"telegram": {"token": tg.token, "api_base_url": tg.base_url,
                                  "file_base_url": tg.base_file_url, "poll_timeout": 2,
                                  "edit_interval": 0.3, "draft_interval": 0.05}},
    }


@asynccontextmanager
async def serve(data_dir: Path, raw: dict[str, Any], tg: FakeTelegram,
                ollama: FakeOllama) -> AsyncIterator[Running]:
    async for running in start(make_config(data_dir, **raw), tg, ollama):
        yield running


def turns(running: Running) -> list[tuple[object, ...]]:
    return db_rows(running.service,
                   "select model, fallback_from, status from turns order by id")


async def ask(running: Running, text: str) -> str:
    before = len(texts(running.tg, STRANGER))
    running.tg.push_text(chat_id=STRANGER, from_id=STRANGER, text=text)
    await until(lambda: len(texts(running.tg, STRANGER)) > before, f"the answer to {text!r}")
    await until(lambda: len(turns(running)) > before, "the turn recorded")
    return texts(running.tg, STRANGER)[-1]


async def status(running: Running) -> list[str]:
    return status_lines(await status_report(running.service, [], datetime.now(UTC)))


async def test_primary_down_the_fallback_answers_and_primary_back_answers_again(
        data_dir: Path, fake_tg: FakeTelegram, fake_ollama: FakeOllama,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    cloud = FakeOpenAI(models=("gpt-test",))
    async with cloud:
        raw = sections(fake_tg, fake_ollama, [CLOUD], cloud)
        fake_ollama.script(ScriptedReply(chunks=("From home.",)),
                           ScriptedReply(chunks=("Home again.",)))
        cloud.script(ScriptedReply(chunks=("From the cloud.",)),
                     ScriptedReply(chunks=("Still the cloud.",)))
        async with serve(data_dir, raw, fake_tg, fake_ollama) as running:
            assert await ask(running, "one") == "From home."
            assert not any(line.startswith("fallback") for line in await status(running))

            port = fake_ollama.port
            await fake_ollama.stop()  # the primary goes down: connections are refused
            assert await ask(running, "two") == "From the cloud."
            assert turns(running)[-1] == (CLOUD, HOME, "answered")
            assert f"model {HOME} is down; answered by {CLOUD} instead" in caplog.text
            (line,) = [line for line in await status(running) if line.startswith("fallback")]
            assert f"{HOME} is down since" in line
            assert f"answered by {CLOUD} instead (1 request)" in line
            assert running.service.models.state.resident == CLOUD

            # Still down: the next turn asks it (a ping, refused at once), then the fallback.
            assert await ask(running, "three") == "Still the cloud."
            assert turns(running)[-1] == (CLOUD, HOME, "answered")

            await fake_ollama.start(port)  # back on the same address
            chats = len(fake_ollama.requests_to("/api/chat"))
            assert await ask(running, "four") == "Home again."
            assert len(fake_ollama.requests_to("/api/chat")) == chats + 1
            assert turns(running)[-1] == (HOME, None, "answered")
            assert running.service.models.state.resident == HOME
            assert not any(line.startswith("fallback") for line in await status(running))
            assert f"model {HOME} answers again" in caplog.text
        # The fallback was asked only while the primary was down.
        assert len(cloud.chat_bodies()) == 2


async def test_the_bundled_model_is_the_last_resort(
        data_dir: Path, fake_tg: FakeTelegram, fake_ollama: FakeOllama) -> None:
    # The first fallback is down as well (nothing listens on its port); the bundled model,
    # in-process, always answers.
    gone = FakeOpenAI(models=("gpt-test",))
    async with gone:
        raw = sections(fake_tg, fake_ollama, [CLOUD, LOCAL], gone)
    fake_ollama.script(ScriptedReply(chunks=("Home.",)), ScriptedReply(chunks=("Home again.",)))
    async with serve(data_dir, raw, fake_tg, fake_ollama) as running:
        assert await ask(running, "Hello") == "Home."
        port = fake_ollama.port
        await fake_ollama.stop()
        reply = await ask(running, "Say hello")
        assert reply.strip()
        assert turns(running)[-1] == (LOCAL, HOME, "answered")
        host = running.service.models
        assert host.state.resident == LOCAL
        local, _ = host.backend(LOCAL)
        assert await local.loaded_models() == [BUNDLED_MODEL_ID]

        await fake_ollama.start(port)
        assert await ask(running, "Back?") == "Home again."
        assert turns(running)[-1] == (HOME, None, "answered")
        # One model resident at a time: going back released the bundled model's weights.
        assert host.state.resident == HOME
        assert await local.loaded_models() == []
    assert gone.requests == []  # never reachable, never asked for a reply


def test_an_unknown_fallback_is_a_config_error_naming_its_key(data_dir: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        make_config(data_dir, agents={"instances": {
            "admin": {"role": "admin"},
            "guest": {"role": "guest", "fallback": [LOCAL, "nowhere/model"]}}})
    assert raised.value.path == "agents.instances.guest.fallback[1]"
    assert "'nowhere/model' names no configured model" in raised.value.problem


@pytest.mark.parametrize("probe_seconds", [0, 3600])
async def test_a_failing_model_is_asked_again_only_when_its_probe_is_due(
        data_dir: Path, fake_tg: FakeTelegram, fake_ollama: FakeOllama,
        probe_seconds: int) -> None:
    async with FakeOpenAI(models=("gpt-test",)) as cloud:
        raw = sections(fake_tg, fake_ollama, [CLOUD], cloud)
        raw["gateway"]["residency"]["fallback_probe_seconds"] = probe_seconds
        # The server is up but fails the request (503): the model counts as down.
        fake_ollama.script(ScriptedReply(status=503), ScriptedReply(chunks=("Home.",)))
        cloud.script(ScriptedReply(chunks=("Cloud.",)), ScriptedReply(chunks=("Cloud again.",)))
        async with serve(data_dir, raw, fake_tg, fake_ollama) as running:
            assert await ask(running, "one") == "Cloud."
            pings = len(fake_ollama.requests_to("/api/version"))
            chats = len(fake_ollama.requests_to("/api/chat"))
            if probe_seconds == 0:
                # Due at once: one ping, then the model itself answers.
                assert await ask(running, "two") == "Home."
                assert turns(running)[-1] == (HOME, None, "answered")
                assert len(fake_ollama.requests_to("/api/version")) == pings + 1
            else:
                # Not due: the turn goes straight to the fallback; the model is not asked.
                assert await ask(running, "two") == "Cloud again."
                assert turns(running)[-1] == (CLOUD, HOME, "answered")
                assert len(fake_ollama.requests_to("/api/version")) == pings
                assert len(fake_ollama.requests_to("/api/chat")) == chats


async def test_hearthbot_status_of_the_running_service_names_the_fallback(
        tmp_path: Path, data_dir: Path, fake_tg: FakeTelegram, fake_ollama: FakeOllama,
        cli_env: dict[str, str]) -> None:
    async with FakeOpenAI(models=("gpt-test",)) as cloud:
        raw = sections(fake_tg, fake_ollama, [CLOUD], cloud)
        raw["gateway"]["port"] = 0
        raw["channels"]["telegram"].pop("token")
        config = tmp_path / "config.json"
        config.write_text(json.dumps(raw))
        env = {**cli_env, "TELEGRAM_BOT_TOKEN": fake_tg.token, "HEARTHBOT_CONFIG": str(config)}
        async with hearthbot_run(env, fake_tg, data_dir):
            await fake_ollama.stop()
            cloud.script(ScriptedReply(chunks=("From the cloud.",)))
            fake_tg.push_text(chat_id=STRANGER, from_id=STRANGER, text="anyone there?")
            await until(lambda: texts(fake_tg, STRANGER), "the reply", within=30)
            assert texts(fake_tg, STRANGER) == ["From the cloud."]

            code, out, err = await hearthbot("status", env=env)
            assert code == 0, err
            (line,) = [line for line in out.splitlines() if line.startswith("fallback")]
            assert f"{HOME} is down since" in line
            assert f"answered by {CLOUD} instead (1 request)" in line
        assert f"model {HOME} is down; answered by {CLOUD} instead" in (
            data_dir / "logs" / "hearthbot.log").read_text()


