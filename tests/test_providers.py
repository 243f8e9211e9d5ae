"""The HTTP providers against fake Ollama and OpenAI-compatible servers on 127.0.0.1."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Sequence
from typing import Literal

import pytest

from bot.config import GenerationParams, ModelSpec, ProviderSpec
from bot.errors import ModelNotFound, ProviderTimeout, ProviderUnavailable, StreamInterrupted
from bot.providers import (
    ChatMessage,
    ChatProvider,
    Delta,
    StreamEnd,
    TextDelta,
    ToolCallDelta,
    ToolSpec,
    build_provider,
)
from tests.fakes.llm_backends import FakeOllama, FakeOpenAI, ScriptedReply, ToolCall

MODEL = ModelSpec(id="llama3.2:3b", context_window=8192, max_tokens=64)
MESSAGES = (ChatMessage("system", "Be brief."), ChatMessage("user", "Hi there"))
PARAMS = GenerationParams(temperature=0.3, top_p=0.8, repeat_penalty=1.1)


def provider_for(fake: FakeOllama | FakeOpenAI, first_token_timeout: float = 5.0,
                 read_timeout: float = 5.0) -> ChatProvider:
    kind: Literal["ollama", "openai-compat"] = (
        "ollama" if isinstance(fake, FakeOllama) else "openai-compat")
    return build_provider("test", ProviderSpec(
        type=kind, base_url=fake.base_url, models=(MODEL,), keep_alive="24h",
        first_token_timeout=first_token_timeout, read_timeout=read_timeout))


async def collect(stream: AsyncIterator[Delta]) -> list[Delta]:
    return [delta async for delta in stream]


def text_of(deltas: Sequence[Delta]) -> str:
    return "".join(d.text for d in deltas if isinstance(d, TextDelta))


@pytest.fixture(params=["ollama", "openai"])
async def fake(request: pytest.FixtureRequest) -> AsyncIterator[FakeOllama | FakeOpenAI]:
    server = FakeOllama() if request.param == "ollama" else FakeOpenAI()
    async with server:
        yield server


async def test_streams_text_then_one_end_with_usage(fake: FakeOllama | FakeOpenAI) -> None:
    fake.script(ScriptedReply(chunks=("Bonjour", ", ", "monde", "!"), prompt_tokens=21))
    provider = provider_for(fake)
    deltas = await collect(provider.stream(MODEL, MESSAGES, PARAMS))
    await provider.close()
    assert [d.text for d in deltas if isinstance(d, TextDelta)] == ["Bonjour", ", ", "monde", "!"]
    assert deltas[-1] == StreamEnd("stop", prompt_tokens=21, completion_tokens=4)
    assert sum(isinstance(d, StreamEnd) for d in deltas) == 1


async def test_ollama_request_carries_model_prompt_keep_alive_and_window(
        fake_ollama: FakeOllama) -> None:
    provider = provider_for(fake_ollama)
    await collect(provider.stream(MODEL, MESSAGES, PARAMS))
    await provider.close()
    (request,) = fake_ollama.requests_to("/api/chat")
    body = request.body
    assert body is not None
    assert body["model"] == "llama3.2:3b"
    assert body["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Hi there"}]
    assert body["keep_alive"] == "24h"
    assert body["stream"] is True
    assert body["options"] == {"temperature": 0.3, "top_p": 0.8, "repeat_penalty": 1.1,
                               "num_predict": 64, "num_ctx": 8192}


async def test_openai_request_asks_for_usage_and_sampling(fake_openai: FakeOpenAI) -> None:
    provider = provider_for(fake_openai)
    await collect(provider.stream(MODEL, MESSAGES, PARAMS))
    await provider.close()
    (request,) = fake_openai.requests_to("/v1/chat/completions")
    assert request.body is not None
    assert request.body["model"] == "llama3.2:3b"
    assert request.body["messages"][0] == {"role": "system", "content": "Be brief."}  # type: ignore[index]
    assert request.body["stream_options"] == {"include_usage": True}
    assert (request.body["temperature"], request.body["max_tokens"]) == (0.3, 64)


async def test_tool_calls_arrive_as_structured_deltas(fake: FakeOllama | FakeOpenAI) -> None:
    fake.script(ScriptedReply(chunks=("Checking.",),
                              tool_calls=(ToolCall("file_read", {"path": "notes.txt"}),)))
    provider = provider_for(fake)
    tool = ToolSpec("file_read", "Read a file", {"type": "object"})
    deltas = await collect(provider.stream(MODEL, MESSAGES, PARAMS, tools=[tool]))
    await provider.close()
    calls = [d for d in deltas if isinstance(d, ToolCallDelta)]
    assert [(c.name, c.arguments) for c in calls] == [("file_read", {"path": "notes.txt"})]
    sent = fake.requests[-1].body
    assert sent is not None and sent["tools"][0]["function"]["name"] == "file_read"  # type: ignore[index]


async def test_mid_stream_disconnect_is_interrupted(fake: FakeOllama | FakeOpenAI) -> None:
    fake.script(ScriptedReply(chunks=("one", " two", " three", " four"), disconnect_after=2))
    provider = provider_for(fake)
    seen: list[str] = []
    with pytest.raises(StreamInterrupted):
        async for delta in provider.stream(MODEL, MESSAGES, PARAMS):
            if isinstance(delta, TextDelta):
                seen.append(delta.text)
    await provider.close()
    assert seen == ["one", " two"]


async def test_server_error_means_unavailable(fake: FakeOllama | FakeOpenAI) -> None:
    fake.script(ScriptedReply(status=500))
    provider = provider_for(fake)
    with pytest.raises(ProviderUnavailable, match="500"):
        await collect(provider.stream(MODEL, MESSAGES, PARAMS))
    await provider.close()


async def test_slow_first_token_times_out(fake: FakeOllama | FakeOpenAI) -> None:
    fake.script(ScriptedReply(first_token_delay=2.0))
    provider = provider_for(fake, first_token_timeout=0.3)
    with pytest.raises(ProviderTimeout, match="first token"):
        await collect(provider.stream(MODEL, MESSAGES, PARAMS))
    await provider.close()


async def test_stalled_stream_times_out(fake: FakeOllama | FakeOpenAI) -> None:
    fake.script(ScriptedReply(chunks=("a", "b", "c"), token_delay=2.0))
    provider = provider_for(fake, read_timeout=0.3)
    with pytest.raises(ProviderTimeout, match="further output"):
        await collect(provider.stream(MODEL, MESSAGES, PARAMS))
    await provider.close()


async def test_slow_but_steady_first_token_within_limit_is_fine(
        fake: FakeOllama | FakeOpenAI) -> None:
    fake.script(ScriptedReply(chunks=("late", " but", " fine"), first_token_delay=0.4))
    provider = provider_for(fake, first_token_timeout=3.0, read_timeout=0.3)
    assert text_of(await collect(provider.stream(MODEL, MESSAGES, PARAMS))) == "late but fine"
    await provider.close()


async def test_unknown_model_is_named(fake: FakeOllama | FakeOpenAI) -> None:
    provider = provider_for(fake)
    with pytest.raises(ModelNotFound, match="404"):
        await collect(provider.stream(ModelSpec(id="nope:1b"), MESSAGES, PARAMS))
    await provider.close()


async def test_nothing_listening_means_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    kinds: tuple[Literal["ollama", "openai-compat"], ...] = ("ollama", "openai-compat")
    for kind in kinds:
        provider = build_provider("down", ProviderSpec(
            type=kind, base_url=f"http://127.0.0.1:{port}", models=(MODEL,)))
        with pytest.raises(ProviderUnavailable, match="cannot reach"):
            await collect(provider.stream(MODEL, MESSAGES, PARAMS))
        await provider.close()


async def test_ollama_warm_and_unload_use_keep_alive(fake_ollama: FakeOllama) -> None:
    provider = provider_for(fake_ollama)
    await provider.warm(MODEL)
    assert fake_ollama.loaded == ["llama3.2:3b"]
    await provider.unload(MODEL)
    await provider.close()
    assert fake_ollama.loaded == []
    bodies = [r.body for r in fake_ollama.requests_to("/api/generate")]
    assert [b["keep_alive"] for b in bodies if b] == ["24h", 0]


async def test_openai_warm_is_a_one_token_completion(fake_openai: FakeOpenAI) -> None:
    provider = provider_for(fake_openai)
    await provider.warm(MODEL)
    await provider.close()
    (request,) = fake_openai.requests_to("/v1/chat/completions")
    assert request.body is not None
    assert (request.body["max_tokens"], request.body["stream"]) == (1, False)
