"""What every benchmark of the suite shares: the machine it ran on, percentiles, the printed
table, the results file, and the Telegram rig (the real client against the fake Bot API).

Every benchmark returns a `Result`; the suite prints it as a table and appends it, with the
machine and the commit, as one JSON line to the results file.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from adapters.telegram import TelegramAdapter
from bot.config import Config
from bot.events import MessageStatus
from bot.service import Service, open_service
from bot.store import inbox
from tests.fakes.llm_backends import FakeOllama
from tests.fakes.telegram import Call, FakeTelegram
from tests.support.helpers import make_config

REPO = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"
# Benchmarks wait for final states, never for a fixed time; this only bounds a stuck run.
STUCK = 120.0
PACKAGES = ("python-telegram-bot", "httpx", "httpcore", "aiohttp", "SQLAlchemy", "aiosqlite",
            "llama_cpp_python", "faster-whisper", "piper-tts", "onnxruntime", "sniffio")


@dataclass
class Result:
    """One benchmark's outcome: the table to print and the figures to keep."""

    name: str
    title: str
    columns: Sequence[str]
    rows: list[Sequence[object]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # Draws the benchmark's chart into the folder the results go to, if it has one.
    chart: Callable[[Path], Path] | None = None


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile: an observed value, never an interpolated one."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def spread(values: Sequence[float], scale: float = 1.0) -> dict[str, float | int]:
    """p50, p90, p99 and max of a sample (times `scale`), and its size."""
    return {"p50": percentile(values, 50) * scale, "p90": percentile(values, 90) * scale,
            "p99": percentile(values, 99) * scale, "max": max(values) * scale,
            "n": len(values)}


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def machine() -> dict[str, Any]:
    """Enough about this machine to tell two runs' figures apart."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or cpu
    ram = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gb": ram,
            "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "packages": versions}


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "bot",
                                "adapters", "persona"], capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return out + ("+changes" if dirty else "")


def append(result: Result, path: Path, *, quick: bool, load_at_start: Sequence[float]) -> None:
    line = {"at": datetime.now(UTC).isoformat(timespec="seconds"), "commit": git_commit(),
            "benchmark": result.name, "quick": quick,
            "load_average_at_start": [round(x, 2) for x in load_at_start],
            "figures": result.figures, "machine": machine()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as file:
        file.write(json.dumps(line) + "\n")


def render(result: Result) -> str:
    cells = [[_cell(c) for c in row] for row in result.rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h))
              for i, h in enumerate(result.columns)]
    lines = [result.title, "  " + "  ".join(str(h).ljust(w) for h, w in zip(result.columns,
                                                                             widths,
                                                                             strict=True))]
    lines.append("  " + "  ".join("-" * w for w in widths))
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
              for row in cells]
    lines += [f"  note: {n}" for n in result.notes]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return "-" if value is None else str(value)


async def wait_for(condition: Callable[[], object], what: str, within: float = STUCK) -> None:
    """Until `condition()` holds; a run that never gets there fails instead of hanging."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {within:g} s for {what}")
        await asyncio.sleep(0.0005)


def first_text_call(tg: FakeTelegram, seen: int, methods: Sequence[str],
                    chat_id: int | None = None) -> Call | None:
    """The first successful call from index `seen` on that put text in front of the user."""
    for call in tg.calls[seen:]:
        if call.status == 200 and call.method in methods and call.params.get("text") and (
                chat_id is None or call.params.get("chat_id") == chat_id):
            return call
    return None


VISIBLE = ("sendMessageDraft", "sendMessage", "editMessageText")


@dataclass
class TelegramRig:
    tg: FakeTelegram
    llm: FakeOllama
    service: Service
    adapter: TelegramAdapter

    async def answered(self, update: dict[str, Any]) -> None:
        """Until the gateway has recorded the message's turn as answered: the run is over."""
        message = update["message"]
        chat, message_id = str(message["chat"]["id"]), str(message["message_id"])
        deadline = time.monotonic() + STUCK
        while await inbox.state_of(self.service.store, "telegram", chat,
                                   message_id) != MessageStatus.ANSWERED:
            if time.monotonic() > deadline:
                raise TimeoutError(f"message {message_id} in chat {chat} was not answered")
            await asyncio.sleep(0.001)


def telegram_config(data_dir: Path, tg: FakeTelegram, llm: FakeOllama, *,
                    draft_interval: float | None, edit_interval: float | None) -> Config:
    """Pacing None: the config's default, what a user gets."""
    pacing = {key: value for key, value in (("draft_interval", draft_interval),
                                            ("edit_interval", edit_interval))
              if value is not None}
    return make_config(
        data_dir,
        gateway={"port": 0, "providers": {"ollama": {
            "type": "ollama", "base_url": llm.base_url, "first_token_timeout": 30,
            "models": [{"id": llm.models[0], "context_window": 8192, "max_tokens": 1024}]}}},
        agents={"default": {"active_model": f"ollama/{llm.models[0]}"}},
        channels={"telegram": {"token": tg.token, "api_base_url": tg.base_url,
                               "file_base_url": tg.base_file_url, **pacing}},
    )


@asynccontextmanager
async def telegram_rig(*, draft_interval: float | None = 0.0, edit_interval: float | None = 0.0,
                       voice: bool = False) -> AsyncIterator[TelegramRig]:
    """The real python-telegram-bot adapter and the real gateway, store and model host, against
    the fake Bot API and a fake Ollama, all on 127.0.0.1 in this process."""
    async with FakeTelegram() as tg, FakeOllama() as llm:
        config = telegram_config(Path(tempfile.mkdtemp(prefix="hearthbot-bench-")), tg, llm,
                                 draft_interval=draft_interval, edit_interval=edit_interval)
        assert config.channels.telegram is not None
        async with open_service(config, voice=voice) as service:
            await service.models.start()
            adapter = TelegramAdapter(config.channels.telegram, service.gateway)
            task = asyncio.create_task(adapter.serve())
            await asyncio.wait_for(adapter.ready.wait(), STUCK)
            try:
                yield TelegramRig(tg, llm, service, adapter)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


def progress(text: str) -> None:
    print(f"  … {text}", file=sys.stderr, flush=True)
