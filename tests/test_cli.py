"""The real `hearthbot` command in a subprocess, against a fake model server."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from pathlib import Path

from bot.service import open_store
from tests.fakes.llm_backends import FakeOllama, ScriptedReply
from tests.support.cli import hearthbot, write_config
from tests.support.helpers import converse, make_config


async def test_once_prints_the_reply_as_owner(tmp_path: Path, fake_ollama: FakeOllama,
                                             cli_env: dict[str, str]) -> None:
    fake_ollama.script(ScriptedReply(chunks=("Forty", "-two", ".")))
    config = write_config(tmp_path, fake_ollama.base_url)
    code, out, err = await hearthbot("--config", config, "chat", "--once", "The answer?",
                                     env=cli_env)
    assert (code, out, err) == (0, "Forty-two.\n", "")
    body = fake_ollama.requests_to("/api/chat")[-1].body
    assert body is not None
    assert body["messages"][0]["content"].startswith("You are hearthbot, the owner's")  # type: ignore[index]
    assert body["model"] == "llama3.2:3b" and body["keep_alive"] == "24h"


async def test_once_as_guest_and_each_once_stands_alone(tmp_path: Path, fake_ollama: FakeOllama,
                                                        cli_env: dict[str, str]) -> None:
    config = write_config(tmp_path, fake_ollama.base_url)
    for question in ("first", "second"):
        code, _, _ = await hearthbot("--config", config, "chat", "--as", "guest", "--once",
                                     question, env=cli_env)
        assert code == 0
    body = fake_ollama.requests_to("/api/chat")[-1].body
    assert body is not None
    messages = body["messages"]
    assert messages[0]["content"].startswith("You are hearthbot, a friendly public")  # type: ignore[index]
    assert [m["content"] for m in messages[1:]] == ["second"]  # type: ignore[index]


async def test_backend_down_is_one_plain_sentence_and_exit_1(tmp_path: Path,
                                                            cli_env: dict[str, str]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = write_config(tmp_path, f"http://127.0.0.1:{port}")
    code, out, err = await hearthbot("--config", config, "chat", "--once", "hello", env=cli_env)
    assert (code, out) == (1, "")
    assert err == "The model isn't reachable right now. Please try again in a moment.\n"
    log = (Path(cli_env["HEARTHBOT_HOME"]) / "logs" / "hearthbot.log").read_text()
    # The turn's first request is the warm-up that loads the model (it finds nothing loaded).
    assert f"cannot reach http://127.0.0.1:{port}/api/generate" in log


async def test_bind_list_unbind(cli_env: dict[str, str]) -> None:
    code, out, _ = await hearthbot("bind", "--platform", "telegram", "--chat-kind", "dm",
                                   "--peer", "4242", "--persona", "admin", "--note", "me",
                                   env=cli_env)
    assert code == 0 and "telegram / dm / peer 4242 -> admin" in out
    binding_id = out.split(":", 1)[0].removeprefix("binding ").strip()
    code, out, _ = await hearthbot("bindings", "--platform", "telegram", env=cli_env)
    assert code == 0 and "peer 4242 -> admin  [cli]  (me)" in out
    code, out, _ = await hearthbot("unbind", binding_id, env=cli_env)
    assert (code, out) == (0, f"binding {binding_id} removed\n")
    code, out, _ = await hearthbot("bindings", "--platform", "telegram", env=cli_env)
    assert out == "no bindings: everyone gets the guest persona\n"


async def test_bind_refuses_admin_for_groups_and_wildcards(cli_env: dict[str, str]) -> None:
    for extra in (["--chat-kind", "group", "--peer", "1"], ["--chat-kind", "dm"],
                  ["--chat-kind", "dm", "--peer", "*"]):
        code, _, err = await hearthbot("bind", "--platform", "telegram", "--persona", "admin",
                                       *extra, env=cli_env)
        assert code == 2 and "only ever granted in a DM" in err


async def test_forget_removes_one_chats_history(data_dir: Path, cli_env: dict[str, str]) -> None:
    async with open_store(make_config(data_dir)) as store:
        await converse(store, "telegram", "555", "my secret plan", "more of it")
        await converse(store, "discord", "555", "the same id on discord")
    code, out, err = await hearthbot("forget", "--chat", "555", "--platform", "telegram",
                                     env=cli_env)
    assert (code, out, err) == (0, "forgot chat 555 on telegram: removed 1 session, 4 messages, "
                                   "2 turn records and 2 inbox entries\n", "")
    stored = await asyncio.to_thread(
        lambda: b"".join(path.read_bytes() for path in data_dir.glob("hearthbot.db*")))
    assert b"secret plan" not in stored and b"more of it" not in stored
    code, out, _ = await hearthbot("forget", "--chat", "555", env=cli_env)
    assert (code, out) == (0, "forgot chat 555: removed 1 session, 2 messages, 1 turn record "
                              "and 1 inbox entry\n")
    code, out, _ = await hearthbot("forget", "--chat", "555", env=cli_env)
    assert (code, out) == (0, "nothing was stored for chat 555\n")


async def test_run_without_platforms_web_pages_or_terminal_says_so(
        tmp_path: Path, cli_env: dict[str, str]) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"gateway": {"web": {"enabled": False}}}))
    code, out, err = await hearthbot("--config", str(config), "run", env=cli_env)
    assert (code, out) == (2, "")
    assert err.startswith("No chat platforms are configured")
    assert len(err.strip().splitlines()) == 1


async def test_run_without_platforms_or_terminal_serves_the_web_pages(
        tmp_path: Path, fake_ollama: FakeOllama, cli_env: dict[str, str]) -> None:
    import signal

    import aiohttp

    (tmp_path / "config.json").write_text(json.dumps({
        "gateway": {"port": 0, "providers": {"home": {
            "type": "ollama", "base_url": fake_ollama.base_url,
            "models": [{"id": "llama3.2:3b"}]}}},
        "agents": {"default": {"active_model": "home/llama3.2:3b"}}}))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "--config", str(tmp_path / "config.json"), "run",
        env=cli_env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        assert process.stderr is not None
        lines: list[str] = []
        while not any(line.startswith("Web chat and dashboard: ") for line in lines):
            line = await asyncio.wait_for(process.stderr.readline(), timeout=120)
            assert line, "".join(lines)
            lines.append(line.decode())
        url = next(line for line in lines if line.startswith("Web chat")).split()[4]
        async with aiohttp.ClientSession() as session, session.get(f"{url}/chat") as page:
            assert page.status == 401
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0


async def test_run_on_a_terminal_opens_the_chat(tmp_path: Path, fake_ollama: FakeOllama,
                                               cli_env: dict[str, str]) -> None:
    fake_ollama.script(ScriptedReply(chunks=("Hi", " from", " the", " terminal.")))
    config = write_config(tmp_path, fake_ollama.base_url)
    screen = await asyncio.to_thread(_type_into_terminal,
                                     [sys.executable, "-m", "bot.cli", "--config", config, "run"],
                                     cli_env, "hello\n", "terminal.")
    assert "opening the terminal chat" in screen
    assert "Hi from the terminal." in screen
    assert "/new starts over" in screen


def _type_into_terminal(argv: list[str], env: dict[str, str], keys: str, wait_for: str) -> str:
    """Run a command on a pseudo-terminal, type, read until `wait_for`, then send Ctrl-D."""
    import os
    import pty
    import select
    import subprocess
    import time

    controller, terminal = pty.openpty()
    process = subprocess.Popen(argv, stdin=terminal, stdout=terminal, stderr=terminal, env=env,
                               close_fds=True)
    os.close(terminal)
    screen = ""
    deadline = time.monotonic() + 60
    typed = False
    try:
        while wait_for not in screen and time.monotonic() < deadline:
            if not typed and "you> " in screen:
                os.write(controller, keys.encode())
                typed = True
            ready, _, _ = select.select([controller], [], [], 0.2)
            if ready:
                screen += os.read(controller, 4096).decode(errors="replace")
        os.write(controller, b"\x04")
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(controller)
    assert process.returncode == 0, screen
    return screen


async def test_audit_lists_the_tool_calls_with_filters(cli_env: dict[str, str],
                                                        data_dir: Path) -> None:
    from bot.store.audit import ToolCallRecord, record_tool_call

    async with open_store(make_config(data_dir)) as store:
        await record_tool_call(store, ToolCallRecord(
            persona="guest", platform="telegram", chat_id="5", tool="shell_exec",
            arguments='{"command": "id"}', outcome="refused", error="not available here"))
        await record_tool_call(store, ToolCallRecord(
            persona="admin", platform="console", chat_id="owner", tool="file_read",
            arguments='{"path": "notes.md"}', outcome="ok"))
    code, out, _ = await hearthbot("audit", env=cli_env)
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 2 and "shell_exec" in lines[0] and "-> refused" in lines[0]
    assert "(not available here)" in lines[0] and "file_read" in lines[1]
    code, out, _ = await hearthbot("audit", "--persona", "guest", "--since", "1h", env=cli_env)
    assert code == 0 and out.count("\n") == 1 and "shell_exec" in out
    code, out, _ = await hearthbot("audit", "--since", "2999-01-01", env=cli_env)
    assert code == 0 and out.strip() == "no tool calls recorded in that time"
    code, _, err = await hearthbot("audit", "--since", "yesterday", env=cli_env)
    assert code == 2 and "neither a date" in err
