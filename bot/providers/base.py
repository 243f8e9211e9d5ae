"""What every model backend offers: a stream of deltas, warm-up, unload; and its errors."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar, runtime_checkable

from bot.config import GenerationParams, ModelSpec
from bot.errors import ProviderTimeout

Role = Literal["system", "user", "assistant", "tool"]


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
class ThinkingDelta:
    """A piece of the model's chain of thought: kept in the turn's record, never shown as the
    reply, never spoken, never sent back to the model as history."""

    text: str


@dataclass(frozen=True)
class ToolCallDelta:
    """One complete tool call the model made; several may come in one reply.

    `id` is the backend's call id, or a stable one made up from the call when the backend gives
    none (Ollama, a raw-JSON reply). When the model wrote arguments that are not a JSON object,
    `arguments` is empty and `raw_arguments` keeps exactly what it wrote, so the caller can
    tell the model its call was malformed instead of running the tool with nothing.
    """

    id: str
    name: str
    arguments: dict[str, object]
    raw_arguments: str | None = None

    @property
    def malformed(self) -> bool:
        return self.raw_arguments is not None


@dataclass(frozen=True)
class ImagePart:
    """An image for the model, already downscaled and re-encoded (see bot/images.py)."""

    data: bytes = field(repr=False)
    mime_type: str

    def base64(self) -> str:
        return base64.b64encode(self.data).decode("ascii")

    def data_url(self) -> str:
        return f"data:{self.mime_type};base64,{self.base64()}"


@dataclass(frozen=True)
class ChatMessage:
    """One message of the history sent to the model.

    Besides plain text, history carries tool traffic: an assistant message holding the calls the
    model made (`tool_calls`, content usually empty), then one `tool` message per call with the
    result as `content` and the id (and name) of the call it answers. Build those two with
    `ChatMessage.tool_request(calls)` and `ChatMessage.tool_result(call, text)`.
    """

    role: Role
    content: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()
    tool_call_id: str | None = None
    tool_name: str | None = None
    # Images the user sent with this message; only ever on this turn's own user message (the
    # history keeps text alone), and only for a model that sees images (see `sees_images`).
    images: tuple[ImagePart, ...] = ()

    def __post_init__(self) -> None:
        if self.tool_calls and self.role != "assistant":
            raise ValueError(f"a {self.role} message cannot carry tool calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the id of the call it answers")
        if self.role != "tool" and (self.tool_call_id or self.tool_name):
            raise ValueError(f"a {self.role} message cannot answer a tool call")
        if self.images and self.role != "user":
            raise ValueError(f"a {self.role} message cannot carry images")

    @classmethod
    def tool_request(cls, tool_calls: Sequence[ToolCallDelta], text: str = "") -> ChatMessage:
        """The assistant's step that asked for these calls (and any text it said with them)."""
        return cls("assistant", text, tool_calls=tuple(tool_calls))

    @classmethod
    def tool_result(cls, call: ToolCallDelta, content: str) -> ChatMessage:
        """What running `call` produced (or the error to show the model), to send back."""
        return cls("tool", content, tool_call_id=call.id, tool_name=call.name)


@dataclass(frozen=True)
class StreamEnd:
    finish_reason: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    # Of the prompt tokens, those the backend served from its prompt cache; None when the
    # backend does not say (Ollama, the embedded engines).
    cached_tokens: int | None = None


Delta = TextDelta | ThinkingDelta | ToolCallDelta | StreamEnd

# The finish reason every backend's stream reports for a reply cut off by its token cap.
LENGTH = "length"


class ChatProvider(Protocol):
    """A model backend. One instance per configured provider; it may hold a resident model."""

    def stream(
        self,
        model: ModelSpec,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        tools: Sequence[ToolSpec] = (),
    ) -> AsyncIterator[Delta]:
        """Stream one reply. Ends with exactly one StreamEnd, or raises a ProviderError.

        Text comes as TextDeltas as it is produced; each tool call comes as one complete
        ToolCallDelta (arguments already assembled), before the StreamEnd. A reply that made
        calls is recognised by its ToolCallDeltas, not by `finish_reason`: backends disagree on
        it ("tool_calls", or "stop" from Ollama and from replies recovered out of raw JSON).
        `tools` reach the model only if its capabilities list "tools" (see `offered_tools`).
        """
        ...

    async def warm(self, model: ModelSpec) -> None:
        """Make the model resident so the first real request does not pay for loading it."""

    async def unload(self, model: ModelSpec) -> None:
        """Release the model (the next model to load needs the memory)."""

    async def ping(self) -> None:
        """Return when the backend answers at all; ProviderUnavailable when it does not."""

    async def loaded_models(self) -> list[str] | None:
        """The models the backend holds in memory now; None when it cannot tell."""

    async def model_size(self, model: ModelSpec) -> int | None:
        """The size of the model's weights in bytes, as the backend reports it; None if not."""

    async def close(self) -> None: ...


@runtime_checkable
class TokenCounting(Protocol):
    """A backend that holds the model's own tokenizer (the in-process ones)."""

    async def count_tokens(self, model: ModelSpec, messages: Sequence[ChatMessage],
                           tools: Sequence[ToolSpec] = ()) -> int | None:
        """The prompt tokens this request would take, exactly as the backend would render and
        tokenize it; None when the tokenizer is not at hand (the model is not loaded)."""
        ...


TOOLS_CAPABILITY = "tools"


def offered_tools(model: ModelSpec, tools: Sequence[ToolSpec]) -> tuple[ToolSpec, ...]:
    """The tools a provider actually offers `model`: none unless its config lists "tools".

    The one place that decides it, called by every provider: a model that cannot call tools
    gets a plain prompt (schemas would only cost it prompt tokens and invite made-up calls),
    and its text is never read as a tool call.
    """
    return tuple(tools) if TOOLS_CAPABILITY in model.capabilities else ()


def output_cap(model: ModelSpec, params: GenerationParams) -> int:
    """The most tokens one request may write: the model's `max_tokens`, or the persona's when
    that is smaller. Every backend sends it with every request."""
    if params.max_tokens is None:
        return model.max_tokens
    return min(params.max_tokens, model.max_tokens)


def thinking_switch(model: ModelSpec, params: GenerationParams) -> bool | None:
    """Whether to tell the backend to think (True), not to (False), or nothing (None): only a
    model marked `reasoning` is told, so a plain model never gets a field it may reject."""
    return params.think if model.reasoning else None


IMAGE_CAPABILITY = "image"


def sees_images(model: ModelSpec) -> bool:
    """Whether photos reach `model`: only when its config lists "image".

    The one place that decides it. A model that does not see images is never sent any (a
    text-only server would reject the request or, worse, read the base64 as text); the person is
    told so in one sentence instead, and their caption is answered.
    """
    return IMAGE_CAPABILITY in model.capabilities


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
