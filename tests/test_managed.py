"""Managed model servers: a real `llama_cpp.server` serving the bundled GGUF, started, killed,
restarted and stopped by the service, with messages through the real Telegram client."""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from bot.config import Config
from bot.errors import ModelDoesNotFit, ProviderUnavailable
from bot.model_host import ModelHost
from bot.providers.bundled import bundled_model_path
from tests.fakes.llm_backends import FakeOllama
from tests.fakes.telegram import FakeTelegram
from tests.support.helpers import make_config, until
from tests.support.telegram import STRANGER, start, texts

pytest.importorskip("llama_cpp.server", reason="needs llama-cpp-python[server]")

LABEL = "llama/smollm2"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def server_provider(port: int, command: list[str] | None = None) -> dict[str, Any]:
    command = command or [
        sys.executable, "-m", "llama_cpp.server", "--model", "{path}", "--model_alias",
        "{model}", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
        "--n_threads", "1", "--n_threads_batch", "1"]
    return {"type": "openai-compat", "base_url": f"http://127.0.0.1:{port}/v1",
            "first_token_timeout": 120, "read_timeout": 60,
            "managed": {"command": command, "start_timeout": 120},
            "models": [{"id": "smollm2", "path": str(bundled_model_path()),
                        "context_window": 2048, "max_tokens": 16}]}


def managed_config(data_dir: Path, port: int, *, fake_tg: FakeTelegram | None = None,
                   fake_ollama: FakeOllama | None = None,
                   command: list[str] | None = None) -> Config:
    providers: dict[str, Any] = {"llama": server_provider(port, command)}
    registry = {LABEL: {"alias": "server"}}
    if fake_ollama is not None:
        providers["ollama"] = {"type": "ollama", "base_url": fake_ollama.base_url,
                               "models": [{"id": fake_ollama.models[0]}]}
        registry[f"ollama/{fake_ollama.models[0]}"] = {"alias": "other"}
    sections: dict[str, Any] = {}
    if fake_tg is not None:
        sections["channels"] = {"telegram": {
            "token": fake_tg.token, "api_base_url": fake_tg.base_url,
            "file_base_url": fake_tg.base_file_url, "poll_timeout": 2,
            "draft_interval": 0.05}}
    return make_config(data_dir, gateway={"providers": providers},
                       agents={"default": {"active_model": LABEL,
                                           "model_registry": registry}}, **sections)


def alive(pid: int) -> bool:
    """Whether a process exists and has not been reaped (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def servers_on(port: int) -> list[int]:
    """Pids of any process whose command line serves this port."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"llama_cpp.server" in cmdline and str(port).encode() in cmdline:
            found.append(int(entry.name))
    return [pid for pid in found if alive(pid)]


async def test_a_killed_server_is_back_and_answers_the_next_message_and_stops_with_us(
        data_dir: Path, fake_tg: FakeTelegram, fake_ollama: FakeOllama) -> None:
    port = free_port()
    config = managed_config(data_dir, port, fake_tg=fake_tg)
    async for running in start(config, fake_tg, fake_ollama):
        host = running.service.models
        await host.start()
        (server,) = host.status().managed
        first_pid = server.pid
        assert first_pid is not None and alive(first_pid)
        fake_tg.push_text(chat_id=STRANGER, from_id=STRANGER, text="Say hello.")
        await until(lambda: texts(fake_tg, STRANGER), "the first reply", within=120)

        os.kill(first_pid, signal.SIGKILL)
        # The next message is sent at once, while the server is down or coming back.
        fake_tg.push_text(chat_id=STRANGER, from_id=STRANGER, text="Say hello again.")
        await until(lambda: len(texts(fake_tg, STRANGER)) == 2, "the second reply",
                    within=120)
        (server,) = host.status().managed
        assert server.restarts == 1 and server.state == "running"
        assert server.pid is not None and server.pid != first_pid
        pids = [first_pid, server.pid]
    assert all(text.strip() for text in texts(fake_tg, STRANGER))
    assert fake_tg.sent_messages(STRANGER)[-1].get("text") != \
        "The model isn't reachable right now. Please try again in a moment."
    assert not any(alive(pid) for pid in pids), "no server outlives the service"
    assert servers_on(port) == []


async def test_switching_away_stops_the_server_and_back_starts_it(
        data_dir: Path, fake_ollama: FakeOllama) -> None:
    port = free_port()
    host = ModelHost(managed_config(data_dir, port, fake_ollama=fake_ollama))
    try:
        await host.start()
        (server,) = host.status().managed
        assert server.pid is not None
        first_pid = server.pid
        await host.switch("other")
        (server,) = host.status().managed
        assert server.state == "stopped" and server.pid is None
        assert not alive(first_pid)
        assert fake_ollama.loaded == [fake_ollama.models[0]]
        await host.switch("server")
        (server,) = host.status().managed
        assert server.state == "running" and server.pid is not None
        assert fake_ollama.loaded == [], "the Ollama model was unloaded first"
        assert server.restarts == 0, "a stop asked for is not a crash"
    finally:
        await host.close()
    assert servers_on(port) == []


async def test_the_memory_check_reads_the_served_file_and_refuses_before_starting(
        data_dir: Path) -> None:
    port = free_port()
    host = ModelHost(managed_config(data_dir, port), available_memory=lambda: 200_000_000)
    need = await host.memory_need(LABEL)
    assert need is not None and need.weights_bytes == bundled_model_path().stat().st_size
    with pytest.raises(ModelDoesNotFit) as raised:
        await host.start()
    await host.close()
    assert "needs about 0.54 GB" in str(raised.value)
    assert "only 0.20 GB is available" in str(raised.value)
    assert host.status().managed == [], "no server was started"


async def test_a_server_that_exits_at_start_fails_with_its_last_words(
        data_dir: Path) -> None:
    port = free_port()
    command = [sys.executable, "-c",
               "import sys; print('error: unknown flag --bogus', flush=True); sys.exit(3)"]
    host = ModelHost(managed_config(data_dir, port, command=command))
    with pytest.raises(ProviderUnavailable) as raised:
        await host.start()
    await host.close()
    assert str(raised.value) == ("llama: the server exited with status 3 while starting; its "
                                 "last output: error: unknown flag --bogus")
    (server,) = host.status().managed
    assert server.state == "stopped" and server.pid is None


def test_the_config_refuses_a_managed_server_it_could_not_run_here(data_dir: Path) -> None:
    from bot.errors import ConfigError

    remote = server_provider(8080) | {"base_url": "http://192.168.1.20:8080/v1"}
    with pytest.raises(ConfigError) as raised:
        make_config(data_dir, gateway={"providers": {"llama": remote}},
                    agents={"default": {"active_model": LABEL}})
    assert raised.value.user_message == (
        "config error at gateway.providers.llama.base_url: a managed server runs on this "
        "machine; base_url must name 127.0.0.1, ::1 or localhost, not '192.168.1.20'")
    embedded = {"type": "embedded", "managed": {"command": ["x"]},
                "models": [{"id": "smollm2"}]}
    with pytest.raises(ConfigError) as raised:
        make_config(data_dir, gateway={"providers": {"llama": embedded}},
                    agents={"default": {"active_model": LABEL}})
    assert raised.value.path == "gateway.providers.llama.managed"
