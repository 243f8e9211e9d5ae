"""Wiring: open the store, seed bindings, prepare models and personas, hand out the gateway."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from bot.config import Config
from bot.gateway import Gateway
from bot.model_host import ModelHost
from bot.store import Store
from bot.store.bindings import seed_bindings
from persona import build_personas

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
        try:
            yield Service(config, store, models,
                          Gateway(store, models, build_personas(config), speech))
        finally:
            if speech is not None:
                await speech.close()
            await models.close()
