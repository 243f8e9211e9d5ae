"""Ollama through its native API (`/api/chat`, NDJSON): the one whose tool calls survive."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence

from bot.config import GenerationParams, ModelSpec, ProviderSpec
from bot.errors import StreamInterrupted
from bot.providers.base import (
    ChatMessage,
    Delta,
    StreamEnd,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
    ToolSpec,
    output_cap,
    thinking_switch,
)
from bot.providers.http import HttpBackend, int_or_none, parse_json_line
from bot.providers.toolcalls import ToolOfferingProvider, function_schema, make_call

DEFAULT_BASE_URL = "http://127.0.0.1:11434"


class OllamaProvider(ToolOfferingProvider):
    def __init__(self, name: str, spec: ProviderSpec) -> None:
        self.http = HttpBackend(name, spec, spec.base_url or DEFAULT_BASE_URL)
        self.keep_alive = spec.keep_alive

    async def generate(
        self,
        model: ModelSpec,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        tools: Sequence[ToolSpec],
    ) -> AsyncGenerator[Delta, None]:
        body: dict[str, object] = {
            "model": model.id,
            "messages": [wire_message(m) for m in messages],
            "stream": True,
            # Ollama otherwise shortens a prompt that does not fit and answers 200 as if it
            # had read it all; hearthbot fits prompts itself, and an overflow must be loud.
            "truncate": False,
            # Sent on every request: without it Ollama unloads the model after 5 idle minutes.
            "keep_alive": self.keep_alive,
            "options": {
                "temperature": params.temperature,
                "top_p": params.top_p,
                "repeat_penalty": params.repeat_penalty,
                "num_predict": output_cap(model, params),
                # Ollama otherwise uses its own default window and silently truncates.
                "num_ctx": model.context_window,
            },
        }
        if tools:
            body["tools"] = [function_schema(t) for t in tools]
        if (think := thinking_switch(model, params)) is not None:
            # Ollama then sends the thoughts apart, as `message.thinking`.
            body["think"] = think
        calls_seen = 0
        async with self.http.post_stream("/api/chat", body) as response:
            async for line in self.http.lines(response):
                item = parse_json_line(line, self.http.name)
                if error := item.get("error"):
                    raise StreamInterrupted(f"{self.http.name}: {error}")
                message = item.get("message")
                if isinstance(message, dict):
                    if thinking := message.get("thinking"):
                        yield ThinkingDelta(str(thinking))
                    if content := message.get("content"):
                        yield TextDelta(str(content))
                    # Several calls may share one line (with empty content) or come one a line;
                    # numbering runs over the whole reply so made-up ids stay distinct.
                    for call in message.get("tool_calls") or []:
                        yield _tool_call(call, calls_seen)
                        calls_seen += 1
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

    async def ping(self) -> None:
        await self.http.get_json("/api/version", within=self.http.spec.connect_timeout)

    async def loaded_models(self) -> list[str] | None:
        answer = await self.http.get_json("/api/ps", within=self.http.spec.connect_timeout)
        models = answer.get("models") if isinstance(answer, dict) else None
        return [str(m.get("name") or m.get("model")) for m in models or []
                if isinstance(m, dict)]

    async def model_size(self, model: ModelSpec) -> int | None:
        # /api/show describes the model; versions that report a size say it there. /api/tags
        # lists every pulled model with its size on disk.
        show = await self.http.post_json("/api/show", {"model": model.id},
                                         within=self.http.spec.connect_timeout)
        if isinstance(show, dict) and int_or_none(show.get("size")):
            return int_or_none(show.get("size"))
        tags = await self.http.get_json("/api/tags", within=self.http.spec.connect_timeout)
        for entry in (tags.get("models") if isinstance(tags, dict) else None) or []:
            if isinstance(entry, dict) and same_model(str(entry.get("name") or
                                                          entry.get("model")), model.id):
                return int_or_none(entry.get("size"))
        return None

    async def close(self) -> None:
        await self.http.close()


def same_model(reported: str, configured: str) -> bool:
    """Ollama names a model with its tag; a bare name means ":latest"."""
    def tagged(name: str) -> str:
        return name if ":" in name else f"{name}:latest"

    return tagged(reported) == tagged(configured)


def wire_message(message: ChatMessage) -> dict[str, object]:
    """A history message as `/api/chat` reads it.

    Ollama takes call arguments as an object and matches a result to its call by `tool_name`;
    versions that number calls also read `id` / `tool_call_id`, which older ones ignore.
    """
    out: dict[str, object] = {"role": message.role, "content": message.content}
    if message.images:
        # Ollama takes a message's images as bare base64 (no data: prefix) beside its text.
        out["images"] = [image.base64() for image in message.images]
    if message.tool_calls:
        # A call whose arguments were unreadable goes back with none: Ollama rejects a string.
        out["tool_calls"] = [{"id": c.id, "function": {"name": c.name, "arguments": c.arguments}}
                             for c in message.tool_calls]
    if message.role == "tool":
        if message.tool_name:
            out["tool_name"] = message.tool_name
        out["tool_call_id"] = message.tool_call_id
    return out


def _tool_call(call: object, index: int) -> ToolCallDelta:
    call = call if isinstance(call, dict) else {}
    function = call.get("function")
    function = function if isinstance(function, dict) else {}
    # Arguments arrive as a JSON object; some builds and proxies send them as JSON text.
    return make_call(index, str(function.get("name") or ""), function.get("arguments"),
                     call.get("id"))
