"""Any OpenAI-compatible server: mlx_lm.server, llama-server, llama_cpp.server, vLLM, LM Studio."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.config import GenerationParams, ModelSpec, ProviderSpec
from bot.errors import StreamInterrupted
from bot.providers.base import (
    ChatMessage,
    Delta,
    StreamEnd,
    TextDelta,
    ToolCallDelta,
    ToolSpec,
)
from bot.providers.http import HttpBackend, int_or_none, parse_json_line


@dataclass
class _PartialToolCall:
    """Servers stream a tool call's arguments as string fragments; they are joined here."""

    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)

    def finish(self, backend: str) -> ToolCallDelta:
        text = "".join(self.arguments) or "{}"
        try:
            arguments = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StreamInterrupted(f"{backend}: tool call {self.name} has bad arguments") from exc
        return ToolCallDelta(id=self.id, name=self.name, arguments=dict(arguments))


class OpenAICompatProvider:
    def __init__(self, name: str, spec: ProviderSpec) -> None:
        assert spec.base_url, "validated by the config"
        self.http = HttpBackend(name, spec, spec.base_url)

    async def stream(
        self,
        model: ModelSpec,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        tools: Sequence[ToolSpec] = (),
    ) -> AsyncIterator[Delta]:
        body: dict[str, object] = {
            "model": model.id,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens or model.max_tokens,
        }
        if params.repeat_penalty != 1.0:
            # Not part of OpenAI's API, but llama.cpp, mlx_lm.server and vLLM all read it.
            body["repetition_penalty"] = params.repeat_penalty
        if tools:
            body["tools"] = [
                {"type": "function", "function": {"name": t.name, "description": t.description,
                                                  "parameters": t.parameters}}
                for t in tools
            ]
        finish_reason: str | None = None
        usage: dict[str, object] = {}
        calls: dict[int, _PartialToolCall] = {}
        async with self.http.post_stream("/chat/completions", body) as response:
            async for line in self.http.lines(response):
                if not line.startswith("data:"):
                    continue  # SSE comments and event names carry nothing we use
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = parse_json_line(data, self.http.name)
                if error := chunk.get("error"):
                    raise StreamInterrupted(f"{self.http.name}: {error}")
                if isinstance(chunk.get("usage"), dict):
                    usage = chunk["usage"]  # type: ignore[assignment]
                choices: Any = chunk.get("choices") or []
                for choice in choices:
                    delta = choice.get("delta") or {}
                    if content := delta.get("content"):
                        yield TextDelta(str(content))
                    for fragment in delta.get("tool_calls") or []:
                        _merge(calls.setdefault(int(fragment.get("index", 0)),
                                                _PartialToolCall()), fragment)
                    finish_reason = choice.get("finish_reason") or finish_reason
            else:
                if finish_reason is None:
                    raise StreamInterrupted(f"{self.http.name}: stream ended without [DONE]")
        for index in sorted(calls):
            yield calls[index].finish(self.http.name)
        yield StreamEnd(
            finish_reason=finish_reason or "stop",
            prompt_tokens=int_or_none(usage.get("prompt_tokens")),
            completion_tokens=int_or_none(usage.get("completion_tokens")),
        )

    async def warm(self, model: ModelSpec) -> None:
        # A one-token completion: the server loads (or touches) the model and proves it answers.
        await self.http.post_json(
            "/chat/completions",
            {"model": model.id, "messages": [{"role": "user", "content": "hi"}],
             "max_tokens": 1, "stream": False},
            within=self.http.spec.first_token_timeout,
        )

    async def unload(self, model: ModelSpec) -> None:
        """The OpenAI API has no unload; a managed server process is stopped instead."""

    async def close(self) -> None:
        await self.http.close()


def _merge(call: _PartialToolCall, fragment: dict[str, object]) -> None:
    call.id = str(fragment.get("id") or call.id)
    function = fragment.get("function")
    if isinstance(function, dict):
        call.name = str(function.get("name") or call.name)
        if arguments := function.get("arguments"):
            call.arguments.append(str(arguments))
