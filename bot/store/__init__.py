"""Everything hearthbot keeps: bindings, the inbox, conversation history and turn records."""

from bot.store.db import Store

__all__ = ["Store"]
