"""system_process: list the machine's processes, show one, or stop one the owner names.

Read straight from /proc (Linux); psutil would add a compiled dependency for three fields.
Stopping goes through a pidfd, so the signal reaches the process that was looked at even if
its number is reused meanwhile: SIGTERM first, SIGKILL after a grace period. PID 1, kernel
threads, the service itself and its parent are never stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bot.errors import ToolFailed, ToolRefused
from bot.providers.base import ToolSpec
from bot.tools.base import ToolContext, integer_argument, string_argument

PROC = Path("/proc")

SPEC = ToolSpec(
    name="system_process",
    description=("Look at the processes on the owner's machine: 'list' the busiest ones, "
                 "'show' one by pid, or 'stop' one by pid (only when the owner asked for that "
                 "process to be stopped)."),
    parameters={
        "type": "object",
        "properties": {
            "action": {"type": "string", "enum": ["list", "show", "stop"]},
            "pid": {"type": "integer", "minimum": 1, "maximum": 4194304,
                    "description": "Process id, for show and stop"},
            "sort": {"type": "string", "enum": ["cpu", "memory"],
                     "description": "Order of the list (default cpu)"},
        },
        "required": ["action"],
        "additionalProperties": False,
    },
)


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    name: str
    state: str
    ppid: int
    cpu_ticks: int
    start_ticks: int
    rss_bytes: int


def _clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def read_process(pid: int) -> ProcessInfo | None:
    try:
        raw = (PROC / str(pid) / "stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    name = raw[raw.index("(") + 1: raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2:].split()
    return ProcessInfo(pid=pid, name=name, state=fields[0], ppid=int(fields[1]),
                       cpu_ticks=int(fields[11]) + int(fields[12]),
                       start_ticks=int(fields[19]),
                       rss_bytes=int(fields[21]) * os.sysconf("SC_PAGE_SIZE"))


def all_processes() -> dict[int, ProcessInfo]:
    found: dict[int, ProcessInfo] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (info := read_process(int(entry.name))) is not None:
            found[info.pid] = info
    return found


def _size(value: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024  # type: ignore[assignment]
    raise AssertionError


def _uptime() -> float:
    return float((PROC / "uptime").read_text().split()[0])


class SystemProcess:
    spec = SPEC

    async def run(self, arguments: dict[str, object], context: ToolContext) -> str:
        if not sys.platform.startswith("linux"):
            raise ToolFailed("system_process works on Linux only.")
        action = string_argument(arguments, "action")
        if action == "list":
            return await self._list(string_argument(arguments, "sort", "cpu"),
                                    context.limits.process_list_rows)
        if "pid" not in arguments:
            raise ToolFailed(f"system_process: '{action}' needs a pid.")
        pid = integer_argument(arguments, "pid", 0)
        if action == "show":
            return self._show(pid)
        return await self._stop(pid, context.limits.stop_grace_seconds)

    async def _list(self, sort: str, rows: int) -> str:
        before = all_processes()
        started = time.monotonic()
        await asyncio.sleep(0.3)
        after = all_processes()
        elapsed_ticks = (time.monotonic() - started) * _clock_ticks()
        usage: list[tuple[float, ProcessInfo]] = []
        for pid, info in after.items():
            previous = before.get(pid)
            used = info.cpu_ticks - previous.cpu_ticks if previous \
                and previous.start_ticks == info.start_ticks else 0
            usage.append((100.0 * used / elapsed_ticks, info))
        if sort == "memory":
            usage.sort(key=lambda item: item[1].rss_bytes, reverse=True)
        else:
            usage.sort(key=lambda item: (item[0], item[1].rss_bytes), reverse=True)
        lines = [f"{len(after)} processes; the top {min(rows, len(usage))} by {sort}:",
                 f"{'PID':>7} {'CPU%':>6} {'RSS':>10}  NAME"]
        lines += [f"{info.pid:>7} {cpu:>6.1f} {_size(info.rss_bytes):>10}  {info.name}"
                  for cpu, info in usage[:rows]]
        return "\n".join(lines)

    def _show(self, pid: int) -> str:
        info = read_process(pid)
        if info is None:
            raise ToolFailed(f"There is no process {pid}.")
        try:
            command = (PROC / str(pid) / "cmdline").read_bytes().replace(b"\x00", b" ")
        except OSError:
            command = b""
        uid = "?"
        with contextlib.suppress(OSError):
            for line in (PROC / str(pid) / "status").read_text().splitlines():
                if line.startswith("Uid:"):
                    uid = line.split()[1]
        ticks = _clock_ticks()
        age = _uptime() - info.start_ticks / ticks
        return "\n".join([
            f"pid {info.pid}: {info.name}",
            f"state {info.state}, parent {info.ppid}, user id {uid}",
            f"memory (RSS) {_size(info.rss_bytes)}, CPU time {info.cpu_ticks / ticks:.1f} s, "
            f"running for {age:.0f} s",
            "command: " + (command.decode("utf-8", errors="replace").strip()[:500]
                           or f"[{info.name}]"),
        ])

    async def _stop(self, pid: int, grace: float) -> str:
        protected = {1: "it is the system's init process",
                     os.getpid(): "it is this service itself",
                     os.getppid(): "it is the process that started this service"}
        if pid in protected:
            raise ToolRefused(f"Refused to stop process {pid}: {protected[pid]}.")
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            raise ToolFailed(f"There is no process {pid}.") from None
        except OSError as exc:
            raise ToolFailed(f"Cannot reach process {pid}: {exc.strerror}.") from None
        try:
            info = read_process(pid)
            if info is None:
                return f"Process {pid} had already ended."
            if (info.ppid == 0 and pid != 1) or info.ppid == 2 or pid == 2:
                raise ToolRefused(f"Refused to stop process {pid}: it is a kernel thread.")
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGTERM)
            except PermissionError:
                raise ToolFailed(f"Not allowed to stop process {pid} ({info.name}): it "
                                 "belongs to another user.") from None
            except ProcessLookupError:
                return f"Process {pid} ({info.name}) had already ended."
            if await _ended(pidfd, grace):
                return f"Stopped process {pid} ({info.name}) with SIGTERM."
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            if await _ended(pidfd, 5.0):
                return (f"Process {pid} ({info.name}) ignored SIGTERM for {grace:g} s and "
                        "was killed with SIGKILL.")
            return f"Sent SIGKILL to process {pid} ({info.name}), but it has not ended yet."
        finally:
            os.close(pidfd)


async def _ended(pidfd: int, seconds: float) -> bool:
    """Wait until the process behind `pidfd` has ended (a pidfd turns readable then)."""
    loop = asyncio.get_running_loop()
    ended = loop.create_future()

    def readable() -> None:
        if not ended.done():
            ended.set_result(None)

    loop.add_reader(pidfd, readable)
    try:
        await asyncio.wait_for(ended, seconds)
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(pidfd)
