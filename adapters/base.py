"""What every platform adapter offers the service."""

from __future__ import annotations

import asyncio
from typing import Protocol


class Adapter(Protocol):
    platform: str
    # Set once the adapter is connected and receiving; tests and the CLI wait for it.
    ready: asyncio.Event

    async def serve(self) -> None:
        """Connect, answer messages until `stop()` (or cancellation), then disconnect.

        Raises AdapterStartError (one sentence a person can act on) when it cannot start, for
        example with a rejected token; any other error is worth a restart. Unanswered messages
        stay in the inbox and are answered at the next start. serve() may be called again after
        it returned or failed.
        """
        ...

    async def stop(self) -> None:
        """Stop taking new messages; serve() lets replies under way finish, then returns."""
        ...
