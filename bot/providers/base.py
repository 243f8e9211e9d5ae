"""What every model backend offers: a stream of deltas, warm-up, unload; and its errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar

from bot.config import GenerationParams, ModelSpec
from bot.errors import ProviderTimeout


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["system", "user", "assistant", "tool"]
    content: str


@dataclass(frozen=True)
class ToolSpec:
    """A tool the model may call, described as a JSON schema."""

    name: str
    description: str
    parameters: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ToolCallDelta:
    id: str
    name: str
    arguments: dict[str, object]


@dataclass(frozen=True)
class StreamEnd:
    finish_reason: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


Delta = TextDelta | ToolCallDelta | StreamEnd


class ChatProvider(Protocol):
    """A model backend. One instance per configured provider; it may hold a resident model."""

    def stream(
        self,
        model: ModelSpec,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        tools: Sequence[ToolSpec] = (),
    ) -> AsyncIterator[Delta]:
        """Stream one reply. Ends with exactly one StreamEnd, or raises a ProviderError."""
        ...

    async def warm(self, model: ModelSpec) -> None:
        """Make the model resident so the first real request does not pay for loading it."""

    async def unload(self, model: ModelSpec) -> None:
        """Release the model (the next model to load needs the memory)."""

    async def close(self) -> None: ...


T = TypeVar("T")


async def next_within(items: AsyncIterator[T], seconds: float, waiting_for: str) -> T:
    """The next item of a stream, or ProviderTimeout naming what did not arrive in time.

    Raises StopAsyncIteration at the end of the stream, like `anext`.
    """
    try:
        async with asyncio.timeout(seconds):
            return await anext(items)
    except TimeoutError:
        raise ProviderTimeout(f"no {waiting_for} within {seconds:g} s") from None
