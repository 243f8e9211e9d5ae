"""Wiring: open the store, seed bindings, prepare models and personas, hand out the gateway;
and run the chat platforms under supervision until a stop signal."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from bot import commands, control
from bot.approvals import ASKER_GRACE_SECONDS, Approvals
from bot.config import Config
from bot.errors import AdapterStartError, ProviderError
from bot.events import MessageStatus
from bot.gateway import Gateway
from bot.memory_fit import available_memory_bytes, process_rss_bytes
from bot.model_host import ModelHost
from bot.store import Store
from bot.store.bindings import seed_bindings
from bot.store.retention import prune_history
from bot.store.tables import InboxRow
from bot.store.usage import prices
from bot.tools import ToolGate, build_tools
from persona import build_personas

if TYPE_CHECKING:
    from adapters.base import Adapter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Service:
    config: Config
    store: Store
    models: ModelHost
    gateway: Gateway


@asynccontextmanager
async def open_store(config: Config, *, migrate_apart: bool = False) -> AsyncIterator[Store]:
    """The migrated store with the config's bindings present. `migrate_apart`: see
    Store.migrate."""
    store = Store(config.store_url())
    try:
        await store.migrate(apart=migrate_apart)
        await seed_bindings(store, config.agents.bindings)
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def open_service(config: Config, *, voice: bool = True,
                       migrate_apart: bool = False) -> AsyncIterator[Service]:
    """Everything a turn needs. `voice=False` (the terminal chat) skips loading speech models;
    `migrate_apart` (the long-running service) keeps Alembic out of this process."""
    async with open_store(config, migrate_apart=migrate_apart) as store:
        models = ModelHost(config)
        speech = None
        if voice:
            from bot.voice.speech import Speech

            speech = Speech(config.voice)
            if config.voice.preload:
                speech.preload()
        personas = build_personas(config)
        # Calls to tools under a persona's `tools.ask` wait for the owner's answer, asked on
        # the platform the call came from by the adapter registered there.
        approvals = Approvals(store, {name: p.role for name, p in personas.items()},
                              seconds=config.gateway.approval_seconds)
        tools = ToolGate(store, build_tools(), approve=approvals.approve,
                         secrets=config.secrets(),
                         approval_seconds=approvals.seconds + ASKER_GRACE_SECONDS)
        gateway = Gateway(store, models, personas, speech, tools, config.data_path(),
                          approvals, config.context, config.images, prices(config))
        try:
            yield Service(config, store, models, gateway)
        finally:
            await gateway.settle()
            if speech is not None:
                await speech.close()
            await models.close()


# A platform that fails is restarted after a pause that doubles up to this, and starts over at
# the shortest pause once it has run this long without failing.
MAX_BACKOFF_SECONDS = 60.0
HEALTHY_SECONDS = 60.0
PRUNE_EVERY_SECONDS = 3600.0


async def supervise(adapter: Adapter, stopping: asyncio.Event) -> None:
    """Serve one platform until a stop, restarting it with backoff when it fails.

    Only what a person must fix (an AdapterStartError: a rejected token, a refused intent)
    ends it; one platform failing never takes another down.
    """
    backoff = 1.0
    while not stopping.is_set():
        started = time.monotonic()
        try:
            await adapter.serve()
            if stopping.is_set():
                return
            log.warning("%s: the adapter stopped by itself; restarting it", adapter.platform)
        except AdapterStartError:
            raise
        except Exception:
            log.exception("%s: the adapter failed; restarting it in %.0f s", adapter.platform,
                          backoff)
        if time.monotonic() - started >= HEALTHY_SECONDS:
            backoff = 1.0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), backoff)
        backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)


async def serve_platforms(service: Service, adapters: Sequence[Adapter],
                          stopping: asyncio.Event) -> AdapterStartError | None:
    """Run every adapter under supervision until `stopping` is set, then stop them gracefully
    (replies under way get `gateway.stop_seconds`). Returns the first start error that a
    person must fix, after stopping the rest."""
    supervisors = [asyncio.create_task(supervise(a, stopping), name=a.platform)
                   for a in adapters]
    stopped = asyncio.create_task(stopping.wait())
    upkeep = asyncio.create_task(_keep_tidy(service))
    warmth = asyncio.create_task(keep_warm(service))
    socket = await _open_control(service, adapters)
    try:
        done, _ = await asyncio.wait([*supervisors, stopped],
                                     return_when=asyncio.FIRST_COMPLETED)
        failure = next((t.exception() for t in done if t is not stopped and not t.cancelled()
                        and isinstance(t.exception(), AdapterStartError)), None)
        stopping.set()
        await asyncio.gather(*(a.stop() for a in adapters), return_exceptions=True)
        await asyncio.gather(*supervisors, return_exceptions=True)
    finally:
        if socket is not None:
            socket.close()
            control.remove(control.socket_path(service.config.data_path()))
        for task in (*supervisors, stopped, upkeep, warmth):
            task.cancel()
        await asyncio.gather(*supervisors, stopped, upkeep, warmth, return_exceptions=True)
    assert failure is None or isinstance(failure, AdapterStartError)
    return failure


async def _keep_tidy(service: Service) -> None:
    """Drop history past its retention, now and every hour."""
    while True:
        try:
            removed = await prune_history(service.store, service.config.store.history_days)
            if removed.total:
                log.info("retention: %s", removed.describe())
        except Exception:
            log.exception("pruning old history failed; trying again in an hour")
        await asyncio.sleep(PRUNE_EVERY_SECONDS)


async def keep_warm(service: Service) -> None:
    """Check the active model every `residency.check_seconds`: loaded again when its backend
    evicted it anyway, or loaded at last when the backend was not up at start."""
    every = service.config.gateway.residency.check_seconds
    while True:
        await asyncio.sleep(every)
        try:
            await service.models.keep_warm()
        except ProviderError as exc:
            log.warning("keeping the model warm failed: %s", exc)
        except Exception:
            log.exception("keeping the model warm failed")


async def _open_control(service: Service, adapters: Sequence[Adapter]) -> asyncio.Server | None:
    started = datetime.now(UTC)

    async def status(_: dict[str, Any]) -> dict[str, Any]:
        return await status_report(service, adapters, started)

    async def use(body: dict[str, Any]) -> dict[str, Any]:
        name = str(body.get("model") or "")
        if not name:
            return {"text": commands.model_list(service.models)}
        switched, text = await commands.switch_model(service.models, name)
        return {"ok": switched, "text": text}

    async def warm(_: dict[str, Any]) -> dict[str, Any]:
        seconds = await service.models.warm()
        return {"text": f"{service.models.state.active} is loaded and warm ({seconds:.2f} s)."}

    try:
        return await control.serve(control.socket_path(service.config.data_path()),
                                   {"status": status, "use": use, "warm": warm})
    except OSError as exc:
        log.error("cannot open the control socket: %s", exc)
        return None


async def status_report(service: Service, adapters: Sequence[Adapter],
                        started: datetime) -> dict[str, Any]:
    """What `hearthbot status` prints, as JSON data."""
    residency = service.models.status()
    async with service.store.read() as session:
        depth = (await session.execute(
            select(func.count()).select_from(InboxRow)
            .where(InboxRow.state == MessageStatus.RECEIVED))).scalar_one()
    last = residency.last_turn
    return {
        "pid": os.getpid(),
        "started_at": started.isoformat(),
        "active": residency.active,
        "resident": residency.resident,
        "state": residency.state,
        "cold_start_seconds": residency.cold_start_seconds,
        "loaded_at": residency.loaded_at.isoformat() if residency.loaded_at else None,
        "switches": residency.switches,
        "waiting_for_replies": residency.waiting_for_replies,
        "rewarms": residency.rewarms,
        "last_error": residency.last_error,
        "last_turn": None if last is None else {
            "model": last.label, "at": last.at.isoformat(),
            "first_token_seconds": last.first_token_seconds,
            "completion_tokens": last.completion_tokens,
            "tokens_per_second": last.tokens_per_second, "total_seconds": last.total_seconds},
        "memory": {"rss_bytes": process_rss_bytes(),
                   "available_bytes": available_memory_bytes(),
                   "model_needs_gb": residency.memory_needed_gb},
        "adapters": [{"platform": a.platform, "connected": a.ready.is_set()} for a in adapters],
        "inbox_depth": depth,
        "managed": [dataclasses.asdict(m) for m in residency.managed],
        "down": [{"model": d.label, "since": d.since.isoformat(), "error": d.error,
                  "answered_by": d.answered_by, "requests": d.requests} for d in residency.down],
    }
