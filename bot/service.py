"""Wiring: open the store, seed bindings, prepare models and personas, hand out the gateway;
and run the chat platforms under supervision until a stop signal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.config import Config
from bot.errors import AdapterStartError
from bot.gateway import Gateway
from bot.model_host import ModelHost
from bot.store import Store
from bot.store.bindings import seed_bindings
from bot.store.retention import prune_history
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
async def open_store(config: Config) -> AsyncIterator[Store]:
    """The migrated store with the config's bindings present."""
    store = Store(config.store_url())
    try:
        await store.migrate()
        await seed_bindings(store, config.agents.bindings)
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def open_service(config: Config, *, voice: bool = True) -> AsyncIterator[Service]:
    """Everything a turn needs. `voice=False` (the terminal chat) skips loading speech models."""
    async with open_store(config) as store:
        models = ModelHost(config)
        speech = None
        if voice:
            from bot.voice.speech import Speech

            speech = Speech(config.voice)
            speech.preload()
        gateway = Gateway(store, models, build_personas(config), speech,
                          ToolGate(store, build_tools(), secrets=config.secrets()),
                          config.data_path(), config.context)
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
    try:
        done, _ = await asyncio.wait([*supervisors, stopped],
                                     return_when=asyncio.FIRST_COMPLETED)
        failure = next((t.exception() for t in done if t is not stopped and not t.cancelled()
                        and isinstance(t.exception(), AdapterStartError)), None)
        stopping.set()
        await asyncio.gather(*(a.stop() for a in adapters), return_exceptions=True)
        await asyncio.gather(*supervisors, return_exceptions=True)
    finally:
        for task in (*supervisors, stopped, upkeep):
            task.cancel()
        await asyncio.gather(*supervisors, stopped, upkeep, return_exceptions=True)
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
