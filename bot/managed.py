"""Model servers hearthbot runs itself: started, health-checked, restarted when they die, and
stopped on shutdown or when another model takes their place.

Each server runs in its own process group, so stopping it stops whatever it started too. Its
output goes into our log, line by line, under `hearthbot.managed.<provider>`. When it dies
without being asked to, it is started again at once, then after pauses that double up to
`MAX_BACKOFF_SECONDS` while it keeps dying; a server that stayed up for `HEALTHY_SECONDS`
starts over at no pause. Requests that arrive meanwhile wait for it (`ready`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import httpx

from bot.config import ManagedSpec
from bot.errors import ProviderUnavailable

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 30.0
HEALTHY_SECONDS = 60.0
STOP_GRACE_SECONDS = 5.0
HEALTH_POLL_SECONDS = 0.1
KEPT_OUTPUT_LINES = 20


@dataclass(frozen=True)
class ManagedStatus:
    provider: str
    state: str  # stopped | starting | running | restarting
    pid: int | None
    restarts: int
    command: tuple[str, ...]
    started_seconds: float | None  # the last start, from spawning to a healthy answer


class ManagedServer:
    def __init__(self, provider: str, spec: ManagedSpec, health_url: str) -> None:
        self.provider = provider
        self.spec = spec
        self.health_url = health_url
        self.command: tuple[str, ...] = spec.command
        self.restarts = 0
        self.started_seconds: float | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._state = "stopped"
        self._running = asyncio.Event()
        self._wanted = False
        self._watcher: asyncio.Task[None] | None = None
        self._output: asyncio.Task[None] | None = None
        self._recent: collections.deque[str] = collections.deque(maxlen=KEPT_OUTPUT_LINES)
        self._out_log = logging.getLogger(f"hearthbot.managed.{provider}")

    def status(self) -> ManagedStatus:
        pid = self._process.pid if self._process is not None else None
        return ManagedStatus(self.provider, self._state, pid, self.restarts, self.command,
                             self.started_seconds)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self, substitutions: Mapping[str, str]) -> float:
        """Start the server for one model and wait until it answers; the seconds it took.

        Raises ProviderUnavailable, with the server's last output, when it exits or stays
        silent past `start_timeout`."""
        command = tuple(_substitute(part, substitutions) for part in self.spec.command)
        if self._wanted and command == self.command and self._state == "running":
            return 0.0
        await self.stop()
        self.command = command
        self._wanted = True
        try:
            seconds = await self._spawn_until_healthy()
        except BaseException:
            await self.stop()
            raise
        self._watcher = asyncio.create_task(self._watch(), name=f"managed-{self.provider}")
        return seconds

    async def ready(self, within: float) -> None:
        """Wait until the server is up (after a crash it is being restarted)."""
        if not self._wanted:
            raise ProviderUnavailable(f"{self.provider}: the managed server is not started")
        try:
            async with asyncio.timeout(within):
                await self._running.wait()
        except TimeoutError:
            raise ProviderUnavailable(
                f"{self.provider}: the managed server is not back after {within:g} s") from None

    async def healthy(self, within: float) -> bool:
        """Whether the server answers its health check within `within` seconds (a crashed
        one is restarted meanwhile)."""
        deadline = time.monotonic() + within
        async with httpx.AsyncClient(trust_env=False, timeout=2.0) as client:
            while self._wanted:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(self.health_url)).status_code == 200:
                        return True
                if time.monotonic() > deadline:
                    return False
                await asyncio.sleep(HEALTH_POLL_SECONDS)
        return False

    async def stop(self) -> None:
        """Stop the server and everything it started; returns once they are gone."""
        self._wanted = False
        self._running.clear()
        watcher, self._watcher = self._watcher, None
        if watcher is not None and watcher is not asyncio.current_task():
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        await self._terminate()
        self._state = "stopped"

    async def _spawn_until_healthy(self) -> float:
        self._state = "starting"
        started = time.perf_counter()
        log.info("%s: starting %s", self.provider, " ".join(self.command))
        try:
            self._process = await asyncio.create_subprocess_exec(
                *self.command, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.spec.env},
                start_new_session=True)  # its own process group: stopped as a whole
        except OSError as exc:
            self._state = "stopped"
            raise ProviderUnavailable(
                f"{self.provider}: cannot start {self.command[0]}: {exc.strerror}") from exc
        self._recent.clear()
        self._output = asyncio.create_task(self._pipe_output(self._process))
        await self._wait_healthy(self._process, started)
        self.started_seconds = time.perf_counter() - started
        self._state = "running"
        self._running.set()
        log.info("%s: server (pid %d) answering after %.2f s", self.provider,
                 self._process.pid, self.started_seconds)
        return self.started_seconds

    async def _wait_healthy(self, process: asyncio.subprocess.Process, started: float) -> None:
        deadline = started + self.spec.start_timeout
        async with httpx.AsyncClient(trust_env=False, timeout=2.0) as client:
            while True:
                if process.returncode is not None:
                    raise ProviderUnavailable(
                        f"{self.provider}: the server exited with status {process.returncode} "
                        f"while starting; its last output: {self._last_output()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(self.health_url)).status_code == 200:
                        return
                if time.perf_counter() > deadline:
                    raise ProviderUnavailable(
                        f"{self.provider}: the server did not answer {self.health_url} within "
                        f"{self.spec.start_timeout:g} s; its last output: {self._last_output()}")
                await asyncio.sleep(HEALTH_POLL_SECONDS)

    async def _watch(self) -> None:
        """Restart the server whenever it dies without being asked to."""
        backoff = 0.0
        while self._wanted:
            process = self._process
            assert process is not None
            up_since = time.monotonic()
            status = await process.wait()
            if not self._wanted:
                return
            self._running.clear()
            self._state = "restarting"
            self.restarts += 1
            if time.monotonic() - up_since >= HEALTHY_SECONDS:
                backoff = 0.0
            log.warning("%s: the server (pid %d) exited with %s; restarting it%s",
                        self.provider, process.pid, _describe_exit(status),
                        f" in {backoff:g} s" if backoff else "")
            await self._terminate()  # whatever it left running in its group
            while self._wanted:
                await asyncio.sleep(backoff)
                backoff = min(max(backoff * 2, 1.0), MAX_BACKOFF_SECONDS)
                try:
                    await self._spawn_until_healthy()
                    break
                except ProviderUnavailable as exc:
                    log.warning("%s; trying again in %g s", exc, backoff)
                    await self._terminate()
                    self._state = "restarting"

    async def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.returncode is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_GRACE_SECONDS)
            except TimeoutError:
                log.warning("%s: the server did not stop within %g s; killing it",
                            self.provider, STOP_GRACE_SECONDS)
        # The leader is gone; anything else of its group goes too.
        _signal_group(process.pid, signal.SIGKILL)
        await process.wait()
        output, self._output = self._output, None
        if output is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(output, STOP_GRACE_SECONDS)
            output.cancel()

    async def _pipe_output(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line:
                self._recent.append(line)
                self._out_log.info("%s", line)

    def _last_output(self) -> str:
        return " | ".join(list(self._recent)[-5:]) or "(nothing)"


def _substitute(part: str, substitutions: Mapping[str, str]) -> str:
    # Plain replacement, not str.format: arguments may hold braces of their own (JSON).
    for key, value in substitutions.items():
        part = part.replace("{" + key + "}", value)
    return part


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def _describe_exit(status: int) -> str:
    if status < 0:
        try:
            return f"signal {signal.Signals(-status).name}"
        except ValueError:
            return f"signal {-status}"
    return f"status {status}"


def default_health_url(provider_type: str, base_url: str) -> str:
    base = base_url.rstrip("/")
    return f"{base}/api/version" if provider_type == "ollama" else f"{base}/models"


def describe_command(command: Sequence[str]) -> str:
    return " ".join(command)
