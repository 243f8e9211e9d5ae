"""shell_exec, system_process and external_fetch against real processes and a local server."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bot.errors import ToolFailed, ToolRefused
from bot.tools.fetch import ExternalFetch, html_to_text
from bot.tools.processes import SystemProcess
from bot.tools.shell import ShellExec
from persona import Persona
from tests.support.tools import context, personas

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="process tools read /proc")


@pytest.fixture
def admin(data_dir: Path) -> Persona:
    return personas(data_dir)["admin"]


async def wait_until(check: Callable[[], bool], within: float = 30.0) -> None:
    """Poll until `check()` holds; the deadline only keeps a broken test from hanging."""
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "the state never came"
        await asyncio.sleep(0.02)


def marked(marker: str) -> list[int]:
    """Live processes whose command line contains `marker` (one only these tests use)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def running(marker: str) -> bool:
    return bool(marked(marker))


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen(["sleep", "1000"])
    yield child
    child.kill()
    child.wait()


@pytest.fixture
def stubborn() -> Iterator[subprocess.Popen[bytes]]:
    """A child that ignores SIGTERM, once it says it is ready."""
    code = ("import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ready', flush=True)\n"
            "time.sleep(1000)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"
    yield child
    child.kill()
    child.wait()
    child.stdout.close()


@pytest.fixture
def gone_pid() -> int:
    gone = subprocess.Popen(["true"])
    gone.wait()
    return gone.pid


# --- shell_exec -----------------------------------------------------------------------------


async def shell(persona: Persona, data_dir: Path, command: str, **limits: Any) -> str:
    return await ShellExec().run({"command": command}, context(persona, data_dir, **limits))


async def test_shell_runs_in_the_workspace_and_reports_status(admin: Persona,
                                                              data_dir: Path) -> None:
    text = await shell(admin, data_dir, "pwd; echo oops >&2; exit 3")
    assert text == f"exit status 3\nstdout:\n{admin.workspace.resolve()}\nstderr:\noops"
    assert (await shell(admin, data_dir, "cat")).startswith("exit status 0")  # no stdin: EOF


async def test_shell_environment_carries_no_secrets(admin: Persona, data_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {"TELEGRAM_BOT_TOKEN": "111:tg-secret", "DISCORD_BOT_TOKEN": "dc-secret",
               "OPENAI_API_KEY": "sk-secret", "DB_PASSWORD": "pw-secret",
               "MY_SECRET": "plain-secret", "HEARTHBOT_HOME": "/srv/hb-home-x"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    text = await shell(admin, data_dir, "env")
    for name, value in secrets.items():
        assert value not in text and name not in text
    assert "PATH=" in text and "TERM=dumb" in text


async def test_shell_timeout_kills_the_whole_process_group(admin: Persona,
                                                           data_dir: Path) -> None:
    marker = "7391.5"
    text = await shell(admin, data_dir, f"sleep {marker} & sleep {marker}; echo never",
                       shell_seconds=1)
    assert text.startswith("stopped after the 1 s time limit") and "never" not in text
    await wait_until(lambda: not running(marker))


async def test_shell_output_is_capped(admin: Persona, data_dir: Path) -> None:
    text = await shell(admin, data_dir, "yes hello", shell_output_bytes=1000)
    assert text.startswith("stopped: more than 1000 bytes of output")
    assert text.count("hello") <= 200


async def test_a_background_child_holding_stdout_does_not_hold_the_call(
        admin: Persona, data_dir: Path) -> None:
    marker = "7391.75"
    text = await shell(admin, data_dir, f"sleep {marker} & echo started", shell_seconds=30)
    assert text == "exit status 0\nstdout:\nstarted"
    for pid in marked(marker):  # the sleep it left behind, by its id
        os.kill(pid, signal.SIGKILL)


# --- system_process -------------------------------------------------------------------------


async def processes(persona: Persona, data_dir: Path, **arguments: Any) -> str:
    return await SystemProcess().run(arguments, context(persona, data_dir,
                                                        stop_grace_seconds=1.0,
                                                        process_list_rows=100000))


async def test_list_and_show_read_proc(admin: Persona, data_dir: Path) -> None:
    listing = await processes(admin, data_dir, action="list", sort="memory")
    own = [line for line in listing.splitlines() if line.split()[:1] == [str(os.getpid())]]
    # The test process's own size, in whatever unit fits it (a long run grows past 1 GiB).
    assert len(own) == 1 and re.search(r"\d+(\.\d)? [KMG]iB", own[0])
    shown = await processes(admin, data_dir, action="show", pid=os.getpid())
    assert shown.startswith(f"pid {os.getpid()}: ") and "pytest" in shown
    with pytest.raises(ToolFailed, match="needs a pid"):
        await processes(admin, data_dir, action="show")


@pytest.mark.parametrize("which", ["init", "self", "parent"])
async def test_stopping_init_the_service_or_its_parent_is_refused(
        admin: Persona, data_dir: Path, which: str) -> None:
    pid = {"init": 1, "self": os.getpid(), "parent": os.getppid()}[which]
    with pytest.raises(ToolRefused, match=f"Refused to stop process {pid}"):
        await processes(admin, data_dir, action="stop", pid=pid)


async def test_stop_sends_sigterm(admin: Persona, data_dir: Path,
                                  sleeper: subprocess.Popen[bytes]) -> None:
    text = await processes(admin, data_dir, action="stop", pid=sleeper.pid)
    assert text == f"Stopped process {sleeper.pid} (sleep) with SIGTERM."
    await wait_until(lambda: sleeper.poll() is not None)
    assert sleeper.returncode == -signal.SIGTERM


async def test_stop_escalates_to_sigkill_when_sigterm_is_ignored(
        admin: Persona, data_dir: Path, stubborn: subprocess.Popen[bytes]) -> None:
    text = await processes(admin, data_dir, action="stop", pid=stubborn.pid)
    assert "ignored SIGTERM" in text and "SIGKILL" in text
    await wait_until(lambda: stubborn.poll() is not None)
    assert stubborn.returncode == -signal.SIGKILL


async def test_stopping_a_process_that_does_not_exist(admin: Persona, data_dir: Path,
                                                     gone_pid: int) -> None:
    with pytest.raises(ToolFailed, match="There is no process"):
        await processes(admin, data_dir, action="stop", pid=gone_pid)


# --- external_fetch -------------------------------------------------------------------------

PAGE = """<!doctype html><html><head><title>The  Lighthouse</title>
<style>body { color: red }</style><script>alert('steal')</script></head>
<body><h1>Keeper's log</h1><p>Lamp lit at <b>dusk</b>.</p><noscript>enable js</noscript>
<ul><li>oil</li><li>wicks</li></ul></body></html>"""


@pytest.fixture
async def site() -> AsyncIterator[str]:
    never = asyncio.Event()

    async def page(_: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def big(_: web.Request) -> web.Response:
        return web.Response(text="z" * 50_000, content_type="text/plain")

    async def binary(_: web.Request) -> web.Response:
        return web.Response(body=b"\x89PNG", content_type="image/png")

    async def hang(_: web.Request) -> web.Response:
        await never.wait()
        raise AssertionError

    async def hop(request: web.Request) -> web.Response:
        left = int(request.match_info["left"])
        raise web.HTTPFound("/page" if left == 0 else f"/hop/{left - 1}")

    async def to_ftp(_: web.Request) -> web.Response:
        raise web.HTTPFound("ftp://127.0.0.1/file")

    app = web.Application()
    app.router.add_get("/page", page)
    app.router.add_get("/big", big)
    app.router.add_get("/binary", binary)
    app.router.add_get("/hang", hang)
    app.router.add_get("/hop/{left}", hop)
    app.router.add_get("/ftp", to_ftp)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        never.set()
        await runner.cleanup()


async def fetch(persona: Persona, data_dir: Path, url: str, **limits: Any) -> str:
    limits.setdefault("fetch_private_addresses", True)
    return await ExternalFetch().run({"url": url}, context(persona, data_dir, **limits))


async def test_fetch_returns_the_readable_text_of_a_page(admin: Persona, data_dir: Path,
                                                         site: str) -> None:
    text = await fetch(admin, data_dir, f"{site}/page")
    assert text.startswith(f"URL: {site}/page\nStatus: 200\nTitle: The Lighthouse\n\n")
    assert text.endswith("\n\nKeeper's log\nLamp lit at dusk.\noil\nwicks")
    for hidden in ("alert", "color: red", "enable js", "<p>"):
        assert hidden not in text


async def test_fetch_follows_a_few_redirects_and_no_more(admin: Persona, data_dir: Path,
                                                         site: str) -> None:
    text = await fetch(admin, data_dir, f"{site}/hop/2", fetch_redirects=3)
    assert text.startswith(f"URL: {site}/page\n")
    with pytest.raises(ToolFailed, match="more than 3 redirects"):
        await fetch(admin, data_dir, f"{site}/hop/5", fetch_redirects=3)
    with pytest.raises(ToolRefused, match="only http and https"):
        await fetch(admin, data_dir, f"{site}/ftp")


async def test_fetch_limits_size_time_and_kind(admin: Persona, data_dir: Path,
                                               site: str) -> None:
    cut = await fetch(admin, data_dir, f"{site}/big", fetch_bytes=1000)
    assert cut.count("z") == 1000 and "cut after 1000 bytes" in cut
    with pytest.raises(ToolFailed, match="image/png, not text"):
        await fetch(admin, data_dir, f"{site}/binary")
    with pytest.raises(ToolFailed, match="took longer than 1 s"):
        await fetch(admin, data_dir, f"{site}/hang", fetch_seconds=1)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x",
                                 "http://user:pw@127.0.0.1/"])
async def test_fetch_refuses_other_schemes_and_credentials(admin: Persona, data_dir: Path,
                                                           url: str) -> None:
    with pytest.raises(ToolRefused):
        await fetch(admin, data_dir, url)


async def test_fetch_refuses_local_addresses_unless_allowed(admin: Persona, data_dir: Path,
                                                            site: str) -> None:
    for url in (f"{site}/page", site.replace("127.0.0.1", "localhost") + "/page"):
        with pytest.raises(ToolRefused, match="local or private network"):
            await fetch(admin, data_dir, url, fetch_private_addresses=False)


def test_html_to_text_keeps_words_and_drops_code() -> None:
    title, text = html_to_text("<title>T</title><p>a&amp;b</p><script>x()</script><p>c</p>")
    assert (title, text) == ("T", "a&b\nc")
