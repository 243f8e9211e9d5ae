"""What both trials share: the service as a child process, its config, its database and its log.

The fakes run in the driving process; `hearthbot run` runs as a child in a process group of its
own, so that a trial can signal exactly it and nothing of it outlives the trial (every child is
killed at exit, on Ctrl-C and on SIGTERM to the driver).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from tests.support.helpers import make_config

Json = dict[str, Any]

HERE = Path(__file__).resolve().parent
# The checkout these trials live in; by default the service runs this checkout's code too.
OWN_CHECKOUT = HERE.parents[1]
DISCORD_RUNNER = HERE / "discord_runner.py"
MODEL = "llama3.2:3b"

_live: set[subprocess.Popen[bytes]] = set()


def _kill_all() -> None:
    for process in list(_live):
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)
        _live.discard(process)


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    _kill_all()
    raise SystemExit(128 + signum)


def install_cleanup() -> None:
    """No stray service survives the driver: at exit, on Ctrl-C and on SIGTERM."""
    atexit.register(_kill_all)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)


def code_under_test(repo: Path) -> str:
    """The commit whose code the service runs, and whether its tree had local changes."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                              check=False)
        return done.stdout.strip()

    code = ("bot", "adapters", "persona", "migrations")
    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    changed = git("log", "-1", "--format=%h %s", "--", *code)[:80]
    dirty = git("status", "--porcelain", "--", *code)
    return (f"{commit} in {repo} (service code last changed in {changed}"
            f"{'; with uncommitted changes' if dirty else ''})")


def service_config(data_dir: Path, llm_base_url: str, channels: Json) -> Path:
    """A config file as a user would write it: the fake model, the given channels, no voice.

    It is checked with the project's own parser (through make_config) before it is written.
    """
    sections: Json = {
        # A free port for the web face: trials must not hold the default one that a test run
        # or the owner's own service on this machine expects.
        "gateway": {"log_level": "info", "port": 0, "providers": {"ollama": {
            "type": "ollama", "base_url": llm_base_url, "first_token_timeout": 10,
            "read_timeout": 10,
            "models": [{"id": MODEL, "context_window": 8192, "max_tokens": 512}]}}},
        "agents": {"default": {"active_model": f"ollama/{MODEL}"}},
        "channels": channels,
        # Speech models are not what these trials attack; loading them would only slow starts.
        "voice": {"stt": {"enabled": False}, "tts": {"enabled": False}},
    }
    make_config(data_dir, **sections)
    path = data_dir / "config.json"
    path.write_text(json.dumps({"data_dir": str(data_dir), **sections}, indent=2))
    return path


@dataclass
class ServiceProcess:
    """One `hearthbot run`, started again after every death; stderr of all runs in one file."""

    argv: list[str]
    env: dict[str, str]
    stderr_path: Path
    ready_pattern: re.Pattern[str]
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    exits: list[int] = field(default_factory=list)  # return codes of every run that ended
    _offset: int = 0  # where the current run's stderr begins
    _stderr: IO[bytes] | None = None

    @classmethod
    def for_platform(cls, platform: str, repo: Path, config: Path, data_dir: Path,
                     ready_pattern: str, discord_url: str | None = None) -> ServiceProcess:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("HEARTHBOT_", "TELEGRAM_", "DISCORD_"))}
        env.update(PYTHONPATH=str(repo), HEARTHBOT_HOME=str(data_dir),
                   XDG_CONFIG_HOME=str(data_dir / "xdg-config"), PYTHONUNBUFFERED="1")
        command = ["--config", str(config), "run"]
        if platform == "discord":
            assert discord_url is not None
            argv = [sys.executable, str(DISCORD_RUNNER), discord_url, *command]
        else:
            argv = [sys.executable, "-m", "bot.cli", *command]
        return cls(argv, env, data_dir / "service-stderr.log", re.compile(ready_pattern))

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        assert not self.alive()
        if self._stderr is None:
            self._stderr = self.stderr_path.open("ab")
        self.starts += 1
        self._offset = self.stderr_path.stat().st_size
        self.process = subprocess.Popen(
            self.argv, env=self.env, cwd=self.stderr_path.parent, stdin=subprocess.DEVNULL,
            stdout=self._stderr, stderr=self._stderr, start_new_session=True)
        _live.add(self.process)

    def current_output(self) -> str:
        with self.stderr_path.open("rb") as file:
            file.seek(self._offset)
            return file.read().decode("utf-8", "replace")

    async def wait_ready(self, within: float = 60.0,
                         also: Callable[[], bool] | None = None) -> bool:
        """Until this run logs its ready line (or `also()` holds); False if it died first."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if not self.alive():
                self.reap()
                return False
            if self.ready_pattern.search(self.current_output()) or (also and also()):
                return True
            await asyncio.sleep(0.05)
        return False

    def send(self, signum: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    async def wait_exit(self, within: float) -> int | None:
        deadline = time.monotonic() + within
        while self.alive():
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.02)
        return self.reap()

    def reap(self) -> int | None:
        """Collect an ended run's return code, once."""
        process = self.process
        if process is None or process.poll() is None:
            return None
        self.process = None
        _live.discard(process)
        code = process.returncode
        self.exits.append(code)
        return code

    def kill_group(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.reap()

    async def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it has not gone within 20 s."""
        self.send(signal.SIGTERM)
        code = await self.wait_exit(20)
        if code is None:
            self.kill_group()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        return code


class Database:
    """The service's SQLite file, read with sqlite3 while the service writes it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        connection = sqlite3.connect(self.path, timeout=2.0)
        try:
            yield connection
        finally:
            connection.close()

    def query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        if not self.path.exists():
            return []
        try:
            with self._connect() as db:
                return db.execute(sql, args).fetchall()
        except sqlite3.OperationalError:  # not migrated yet, or busy past the timeout
            return []

    def message(self, platform: str, chat_id: str, message_id: str) -> tuple[str | None, int]:
        """The inbox state of one inbound message (None: never stored) and its turn rows."""
        rows = self.query(
            "select i.state, (select count(*) from turns t where t.inbox_id = i.id) "
            "from inbox i where i.platform = ? and i.chat_id = ? and i.message_id = ?",
            platform, chat_id, message_id)
        if not rows:
            return None, 0
        return str(rows[0][0]), int(rows[0][1])


SETTLED_STATES = frozenset({"answered", "failed", "ignored"})


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile; `share` in [0, 1]."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(share * len(ordered) + 0.4999)))
    return ordered[rank - 1]


# ---- the service's log, as written to stderr ----------------------------------------------------

_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) +(?P<name>\S+): "
                     r"(?P<message>.*)$")
# Lines Python writes to stderr itself, outside any log record.
_RAW_START = ("--- Logging error ---", "Exception ignored", "Fatal Python error")


@dataclass
class LogRecord:
    level: str
    name: str
    message: str
    tracebacks: int = 0


@dataclass
class LogSummary:
    records: list[LogRecord]
    raw_tracebacks: int  # printed outside logging (logging errors, ignored exceptions, ...)

    def matching(self, pattern: re.Pattern[str]) -> list[LogRecord]:
        return [r for r in self.records if pattern.search(r.message)]


def read_log(text: str) -> LogSummary:
    """Log records with the tracebacks that follow each; tracebacks outside records apart."""
    records: list[LogRecord] = []
    raw = 0
    in_raw = False
    for line in text.splitlines():
        match = _RECORD.match(line)
        if match is not None:
            records.append(LogRecord(match["level"], match["name"], match["message"]))
            in_raw = False
            continue
        if line.startswith(_RAW_START) or not records:
            in_raw = True
        if line.startswith("Traceback (most recent call last)"):
            if in_raw:
                raw += 1
            else:
                records[-1].tracebacks += 1
    return LogSummary(records, raw)
