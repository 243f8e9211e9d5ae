"""One module per chat platform: wire payloads in as InboundEvents, replies out as calls."""

from __future__ import annotations

from typing import TYPE_CHECKING

import bot  # noqa: F401  (sets the process environment before any platform library loads)

if TYPE_CHECKING:
    from adapters.base import Adapter
    from bot.config import Config
    from bot.gateway import Gateway


def build_adapters(config: Config, gateway: Gateway) -> list[Adapter]:
    """The adapters the config enables; platform libraries load only when used."""
    adapters: list[Adapter] = []
    telegram = config.channels.telegram
    if telegram is not None and telegram.enabled:
        from adapters.telegram import TelegramAdapter

        adapters.append(TelegramAdapter(telegram, gateway,
                                        stop_seconds=config.gateway.stop_seconds))
    discord = config.channels.discord
    if discord is not None and discord.enabled:
        from adapters.discord import DiscordAdapter

        adapters.append(DiscordAdapter(discord, gateway,
                                       stop_seconds=config.gateway.stop_seconds))
    return adapters
