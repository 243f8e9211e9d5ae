"""Any OpenAI-compatible server: mlx_lm.server, llama-server, llama_cpp.server, vLLM, LM Studio."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any

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


@dataclass
class _PartialToolCall:
    """Servers stream a tool call's id and name first, then its arguments as string fragments
    (several calls' fragments may interleave); they are joined here, keyed by `index`."""

    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)

    def merge(self, fragment: dict[str, Any]) -> None:
        self.id = str(fragment.get("id") or self.id)
        function = fragment.get("function")
        if isinstance(function, dict):
            self.name = str(function.get("name") or self.name)
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                self.arguments.append(arguments)
            elif arguments:  # a server that sends the object itself, not its text
                self.arguments.append(json.dumps(arguments))

    def finish(self, index: int) -> ToolCallDelta:
        # Arguments that are not a JSON object keep their text (ToolCallDelta.raw_arguments):
        # the caller can tell the model, and the stream goes on.
        return make_call(index, self.name, "".join(self.arguments), self.id)


class _ToolCallAssembler:
    def __init__(self) -> None:
        self.partial: dict[int, _PartialToolCall] = {}
        self.finished = 0

    def add(self, fragment: object) -> None:
        if not isinstance(fragment, dict):
            return
        index = fragment.get("index")
        if isinstance(index, int) and not isinstance(index, bool):
            self.partial.setdefault(index, _PartialToolCall()).merge(fragment)
            return
        # No index (seen from servers that send each call whole): a fragment that names a
        # new call starts one, anything else continues the latest.
        latest = self.partial[max(self.partial)] if self.partial else None
        function = fragment.get("function")
        named = isinstance(function, dict) and bool(function.get("name"))
        new_id = fragment.get("id") and latest is not None and fragment.get("id") != latest.id
        if latest is None or new_id or (named and latest.name):
            latest = self.partial.setdefault(max(self.partial, default=-1) + 1,
                                             _PartialToolCall())
        latest.merge(fragment)

    def flush(self) -> list[ToolCallDelta]:
        calls = []
        for key in sorted(self.partial):
            calls.append(self.partial[key].finish(self.finished))
            self.finished += 1
        self.partial.clear()
        return calls


class OpenAICompatProvider(ToolOfferingProvider):
    def __init__(self, name: str, spec: ProviderSpec) -> None:
        assert spec.base_url, "validated by the config"
        self.http = HttpBackend(name, spec, spec.base_url)

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
            "stream_options": {"include_usage": True},
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": output_cap(model, params),
        }
        if params.repeat_penalty != 1.0:
            # Not part of OpenAI's API, but llama.cpp, mlx_lm.server and vLLM all read it.
            body["repetition_penalty"] = params.repeat_penalty
        if tools:
            body["tools"] = [function_schema(t) for t in tools]
            body["tool_choice"] = "auto"
        if (think := thinking_switch(model, params)) is not None:
            # No standard field turns thinking on or off; vLLM, llama-server, SGLang and
            # mlx_lm.server all hand `chat_template_kwargs` to the chat template, and the
            # templates of switchable models (Qwen3, SmolLM3, GLM, Gemma) read
            # `enable_thinking`. (`reasoning_effort` only grades effort, it cannot turn off.)
            body["chat_template_kwargs"] = {"enable_thinking": think}
        finish_reason: str | None = None
        usage: dict[str, object] = {}
        timings: dict[str, object] = {}
        calls = _ToolCallAssembler()
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
                if isinstance(chunk.get("timings"), dict):  # llama-server's own figures
                    timings = {**timings, **chunk["timings"]}  # type: ignore[dict-item]
                if "tokens_cached" in chunk:  # older llama-server builds, beside the usage
                    timings = {**timings, "tokens_cached": chunk["tokens_cached"]}
                choices: Any = chunk.get("choices") or []
                for choice in choices:
                    delta = choice.get("delta") or {}
                    # llama-server and DeepSeek name it `reasoning_content`; vLLM's newer
                    # releases, OpenRouter and LM Studio `reasoning`. A server in transition
                    # may send both with the same text: one is read.
                    thinking = delta.get("reasoning_content") or delta.get("reasoning")
                    if isinstance(thinking, str) and thinking:
                        yield ThinkingDelta(thinking)
                    if content := delta.get("content"):
                        yield TextDelta(str(content))
                    for fragment in delta.get("tool_calls") or []:
                        calls.add(fragment)
                    if reason := choice.get("finish_reason"):
                        finish_reason = reason
                        # The step is over ("tool_calls", or "stop" from some servers): its
                        # calls are complete, so they go out now, ahead of the usage chunk.
                        for call in calls.flush():
                            yield call
            else:
                if finish_reason is None:
                    raise StreamInterrupted(f"{self.http.name}: stream ended without [DONE]")
        for call in calls.flush():  # a server that never said why it stopped
            yield call
        yield StreamEnd(
            finish_reason=finish_reason or "stop",
            prompt_tokens=int_or_none(usage.get("prompt_tokens")),
            completion_tokens=int_or_none(usage.get("completion_tokens")),
            cached_tokens=cached_tokens(usage, timings),
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

    async def ping(self) -> None:
        await self.http.get_json("/models", within=self.http.spec.connect_timeout)

    async def loaded_models(self) -> list[str] | None:
        return None  # /models lists what a server can serve, not what it holds in memory

    async def model_size(self, model: ModelSpec) -> int | None:
        return None

    async def close(self) -> None:
        await self.http.close()


def cached_tokens(usage: dict[str, object], timings: dict[str, object]) -> int | None:
    """The prompt tokens served from the server's cache: OpenAI's (and vLLM's, and newer
    llama-server's) `usage.prompt_tokens_details.cached_tokens`, else llama-server's
    `timings.cache_n` or `tokens_cached`; None when the server says nothing about it."""
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict) and int_or_none(details.get("cached_tokens")) is not None:
        return int_or_none(details.get("cached_tokens"))
    for key in ("cache_n", "tokens_cached"):
        if int_or_none(timings.get(key)) is not None:
            return int_or_none(timings.get(key))
    return None


def wire_message(message: ChatMessage) -> dict[str, object]:
    """A history message as `/v1/chat/completions` reads it: call arguments as JSON text, and
    a result tied to its call by `tool_call_id`."""
    out: dict[str, object] = {"role": message.role, "content": message.content}
    if message.images:
        # With images, content becomes a list of parts: the text (if any), then each image as
        # a data URL. Servers without a vision model refuse the request; the turn never sends
        # images to a model whose config does not list "image".
        text = [{"type": "text", "text": message.content}] if message.content else []
        out["content"] = [*text, *({"type": "image_url", "image_url": {"url": image.data_url()}}
                                   for image in message.images)]
    if message.tool_calls:
        # Empty content rather than null: several local servers' chat templates choke on null.
        # A malformed call goes back with empty arguments, as to Ollama: servers that re-parse
        # history (vLLM, llama-server) reject broken JSON, and the tool result is where the
        # model learns what went wrong.
        out["tool_calls"] = [
            {"id": c.id, "type": "function",
             "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
            for c in message.tool_calls]
    if message.role == "tool":
        out["tool_call_id"] = message.tool_call_id
    return out
