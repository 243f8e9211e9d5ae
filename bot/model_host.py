"""The models the service talks to: one provider object each, the active model warmed first."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from bot.config import Config, ModelSpec
from bot.providers import ChatProvider, build_provider

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelTarget:
    label: str  # "provider/model-id", as written in the config and stored with each turn
    provider: ChatProvider
    model: ModelSpec


class ModelHost:
    def __init__(self, config: Config) -> None:
        self._config = config
        self._providers: dict[str, ChatProvider] = {}
        # Models warmed in this process, with their cold-start seconds: what the dashboard
        # shows as resident (nothing unloads a model yet).
        self.warmed: dict[str, float] = {}

    def target(self, reference: str | None) -> ModelTarget:
        """The provider and model for a reference (validated at config load)."""
        provider_name, spec, model = self._config.resolve_model(reference)
        provider = self._providers.get(provider_name)
        if provider is None:
            provider = self._providers[provider_name] = build_provider(provider_name, spec)
        return ModelTarget(f"{provider_name}/{model.id}", provider, model)

    async def warm(self, reference: str | None = None) -> float:
        """Load the model before any traffic; returns the cold-start time in seconds."""
        target = self.target(reference)
        started = time.perf_counter()
        await target.provider.warm(target.model)
        seconds = time.perf_counter() - started
        self.warmed[target.label] = seconds
        log.info("model %s warm in %.2f s", target.label, seconds)
        return seconds

    async def close(self) -> None:
        for provider in self._providers.values():
            await provider.close()
        self._providers.clear()
        self.warmed.clear()
