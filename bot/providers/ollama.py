"""Ollama through its native API (`/api/chat`, NDJSON): the one whose tool calls survive."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence

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

DEFAULT_BASE_URL = "http://127.0.0.1:11434"


class OllamaProvider:
    def __init__(self, name: str, spec: ProviderSpec) -> None:
        self.http = HttpBackend(name, spec, spec.base_url or DEFAULT_BASE_URL)
        self.keep_alive = spec.keep_alive

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
            # Sent on every request: without it Ollama unloads the model after 5 idle minutes.
            "keep_alive": self.keep_alive,
            "options": {
                "temperature": params.temperature,
                "top_p": params.top_p,
                "repeat_penalty": params.repeat_penalty,
                "num_predict": params.max_tokens or model.max_tokens,
                # Ollama otherwise uses its own default window and silently truncates.
                "num_ctx": model.context_window,
            },
        }
        if tools:
            body["tools"] = [_tool_schema(t) for t in tools]
        async with self.http.post_stream("/api/chat", body) as response:
            async for line in self.http.lines(response):
                item = parse_json_line(line, self.http.name)
                if error := item.get("error"):
                    raise StreamInterrupted(f"{self.http.name}: {error}")
                message = item.get("message")
                if isinstance(message, dict):
                    if content := message.get("content"):
                        yield TextDelta(str(content))
                    for number, call in enumerate(message.get("tool_calls") or []):
                        yield _tool_call(call, number)
                if item.get("done"):
                    yield StreamEnd(
                        finish_reason=str(item.get("done_reason") or "stop"),
                        prompt_tokens=int_or_none(item.get("prompt_eval_count")),
                        completion_tokens=int_or_none(item.get("eval_count")),
                    )
                    return
        raise StreamInterrupted(f"{self.http.name}: stream ended before the final line")

    async def warm(self, model: ModelSpec) -> None:
        # An empty prompt makes Ollama load the model and return without generating.
        await self.http.post_json(
            "/api/generate",
            {"model": model.id, "prompt": "", "stream": False, "keep_alive": self.keep_alive},
            within=self.http.spec.first_token_timeout,
        )

    async def unload(self, model: ModelSpec) -> None:
        await self.http.post_json(
            "/api/generate",
            {"model": model.id, "prompt": "", "stream": False, "keep_alive": 0},
            within=self.http.spec.first_token_timeout,
        )

    async def close(self) -> None:
        await self.http.close()


def _tool_schema(tool: ToolSpec) -> dict[str, object]:
    return {"type": "function", "function": {"name": tool.name, "description": tool.description,
                                             "parameters": tool.parameters}}


def _tool_call(call: object, number: int) -> ToolCallDelta:
    function = call.get("function", {}) if isinstance(call, dict) else {}
    arguments = function.get("arguments") or {}
    if isinstance(arguments, str):
        arguments = json.loads(arguments or "{}")
    call_id = call.get("id") if isinstance(call, dict) else None
    return ToolCallDelta(id=str(call_id or f"call_{number}"), name=str(function.get("name", "")),
                         arguments=dict(arguments))
