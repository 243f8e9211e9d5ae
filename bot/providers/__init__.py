"""Model backends behind one streaming interface."""

from __future__ import annotations

from bot.config import ProviderSpec
from bot.providers.base import (
    ChatMessage,
    ChatProvider,
    Delta,
    StreamEnd,
    TextDelta,
    ThinkingDelta,
    TokenCounting,
    ToolCallDelta,
    ToolSpec,
)

__all__ = [
    "ChatMessage",
    "ChatProvider",
    "Delta",
    "StreamEnd",
    "TextDelta",
    "ThinkingDelta",
    "TokenCounting",
    "ToolCallDelta",
    "ToolSpec",
    "build_provider",
]


def build_provider(name: str, spec: ProviderSpec) -> ChatProvider:
    # Imported here so that a service without an embedded model never loads llama.cpp.
    if spec.type == "ollama":
        from bot.providers.ollama import OllamaProvider

        return OllamaProvider(name, spec)
    if spec.type == "openai-compat":
        from bot.providers.openai_compat import OpenAICompatProvider

        return OpenAICompatProvider(name, spec)
    from bot.providers.embedded import EmbeddedProvider

    return EmbeddedProvider(name, spec)
