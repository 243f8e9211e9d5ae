"""The HTTP providers against fake Ollama and OpenAI-compatible servers on 127.0.0.1."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any, Literal

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
TOOL_MODEL = replace(MODEL, capabilities=("tools",))
FILE_READ = ToolSpec("file_read", "Read a file", {
    "type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]})
LOOKUP = ToolSpec("knowledge_lookup", "Look something up", {
    "type": "object", "properties": {"q": {"type": "string"}}})
TOOLS = (FILE_READ, LOOKUP)
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
    fake.script(ScriptedReply(chunks=("Bonjour", ", ", "monde", "!"), prompt_tokens=21,
                              cached_tokens=16))
    provider = provider_for(fake)
    deltas = await collect(provider.stream(MODEL, MESSAGES, PARAMS))
    await provider.close()
    assert [d.text for d in deltas if isinstance(d, TextDelta)] == ["Bonjour", ", ", "monde", "!"]
    # OpenAI reports the cached share of the prompt; Ollama says nothing about its cache.
    cached = 16 if isinstance(fake, FakeOpenAI) else None
    assert deltas[-1] == StreamEnd("stop", prompt_tokens=21, completion_tokens=4,
                                   cached_tokens=cached)
    assert sum(isinstance(d, StreamEnd) for d in deltas) == 1


async def test_llama_server_cache_reuse_comes_from_its_timings() -> None:
    async with FakeOpenAI(llama_server=True) as fake:
        fake.script(ScriptedReply(chunks=("Hi",), prompt_tokens=900, cached_tokens=850))
        provider = provider_for(fake)
        deltas = await collect(provider.stream(MODEL, MESSAGES, PARAMS))
        await provider.close()
    assert deltas[-1] == StreamEnd("stop", prompt_tokens=900, completion_tokens=1,
                                   cached_tokens=850)


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


# --- tool calls -----------------------------------------------------------------------------


def calls_of(deltas: Sequence[Delta]) -> list[ToolCallDelta]:
    return [d for d in deltas if isinstance(d, ToolCallDelta)]


async def run(fake: FakeOllama | FakeOpenAI, messages: Sequence[ChatMessage] = MESSAGES,
              model: ModelSpec = TOOL_MODEL, tools: Sequence[ToolSpec] = TOOLS) -> list[Delta]:
    provider = provider_for(fake)
    try:
        return await collect(provider.stream(model, messages, PARAMS, tools=tools))
    finally:
        await provider.close()


def sent_tools(fake: FakeOllama | FakeOpenAI) -> list[Any]:
    return list(fake.chat_bodies()[-1]["tools"])


async def test_tools_are_offered_as_function_schemas(fake: FakeOllama | FakeOpenAI) -> None:
    await run(fake)
    assert sent_tools(fake) == [
        {"type": "function", "function": {"name": "file_read", "description": "Read a file",
                                          "parameters": FILE_READ.parameters}},
        {"type": "function", "function": {"name": "knowledge_lookup",
                                          "description": "Look something up",
                                          "parameters": LOOKUP.parameters}}]
    body = fake.chat_bodies()[-1]
    if isinstance(fake, FakeOpenAI):
        assert body["tool_choice"] == "auto"
    else:
        assert "tool_choice" not in body  # not part of Ollama's API


async def test_no_tools_means_no_tool_fields(fake: FakeOllama | FakeOpenAI) -> None:
    await run(fake, tools=())
    assert not {"tools", "tool_choice"} & fake.chat_bodies()[-1].keys()


async def test_a_model_without_the_tools_capability_is_offered_none(
        fake: FakeOllama | FakeOpenAI) -> None:
    call_text = '{"name": "file_read", "arguments": {"path": "a.txt"}}'
    fake.script(ScriptedReply(chunks=(call_text,)))
    deltas = await run(fake, model=MODEL)
    assert "tools" not in fake.chat_bodies()[-1]
    # Nothing was offered, so a reply that looks like a call is just text.
    assert text_of(deltas) == call_text and not calls_of(deltas)


async def test_tool_call_after_text_arrives_as_structured_delta(
        fake: FakeOllama | FakeOpenAI) -> None:
    fake.script(ScriptedReply(chunks=("Checking.",),
                              tool_calls=(ToolCall("file_read", {"path": "notes.txt"}),)))
    deltas = await run(fake)
    assert [type(d) for d in deltas] == [TextDelta, ToolCallDelta, StreamEnd]
    assert text_of(deltas) == "Checking."
    (call,) = calls_of(deltas)
    assert (call.name, call.arguments, call.malformed) == ("file_read", {"path": "notes.txt"},
                                                           False)
    assert call.id


@pytest.mark.parametrize("batch", [False, True])
async def test_several_calls_in_one_step(fake: FakeOllama | FakeOpenAI, batch: bool) -> None:
    fake.script(ScriptedReply.calling(
        ToolCall("file_read", {"path": "a.txt"}), ToolCall("knowledge_lookup", {"q": "x"}),
        ToolCall("file_read", {"path": "b.txt"}), batch_tool_calls=batch))
    deltas = await run(fake)
    assert [(c.name, c.arguments) for c in calls_of(deltas)] == [
        ("file_read", {"path": "a.txt"}), ("knowledge_lookup", {"q": "x"}),
        ("file_read", {"path": "b.txt"})]
    assert len({c.id for c in calls_of(deltas)}) == 3
    assert not text_of(deltas) and isinstance(deltas[-1], StreamEnd)


async def test_openai_interleaved_argument_fragments_are_merged_by_index(
        fake_openai: FakeOpenAI) -> None:
    fake_openai.script(ScriptedReply.calling(
        ToolCall("file_read", {"path": "some/long/path.txt"}, pieces=5),
        ToolCall("knowledge_lookup", {"q": "what \"quotes\" do"}, pieces=7),
        interleave_arguments=True))
    deltas = await run(fake_openai)
    assert [(c.name, c.arguments) for c in calls_of(deltas)] == [
        ("file_read", {"path": "some/long/path.txt"}),
        ("knowledge_lookup", {"q": 'what "quotes" do'})]
    assert [c.id for c in calls_of(deltas)] == ["call_1_0", "call_1_1"]  # the server's ids
    assert deltas[-1] == StreamEnd("tool_calls", prompt_tokens=12, completion_tokens=0,
                                   cached_tokens=0)


async def test_malformed_arguments_keep_their_text_and_the_stream_goes_on(
        fake: FakeOllama | FakeOpenAI) -> None:
    fake.script(ScriptedReply.calling(
        ToolCall("file_read", raw_arguments='{"path": "a.txt"', pieces=3),
        ToolCall("knowledge_lookup", {"q": "fine"})))
    deltas = await run(fake)
    bad, good = calls_of(deltas)
    assert bad.malformed and bad.arguments == {} and bad.raw_arguments == '{"path": "a.txt"'
    assert bad.name == "file_read" and bad.id
    assert not good.malformed and good.arguments == {"q": "fine"}
    assert isinstance(deltas[-1], StreamEnd)


async def test_arguments_that_are_json_but_not_an_object_count_as_malformed(
        fake_openai: FakeOpenAI) -> None:
    fake_openai.script(ScriptedReply.calling(ToolCall("file_read", raw_arguments='["a.txt"]'),
                                             ToolCall("knowledge_lookup", raw_arguments="")))
    listed, empty = calls_of(await run(fake_openai))
    assert listed.raw_arguments == '["a.txt"]' and listed.arguments == {}
    assert not empty.malformed and empty.arguments == {}  # no text means no arguments


async def test_missing_call_ids_are_made_up_stable_and_distinct(
        fake: FakeOllama | FakeOpenAI) -> None:
    step = ScriptedReply.calling(ToolCall("file_read", {"path": "a.txt"}, id=""),
                                 ToolCall("file_read", {"path": "b.txt"}, id=""))
    fake.script(step, step)
    first = [c.id for c in calls_of(await run(fake))]
    again = [c.id for c in calls_of(await run(fake))]
    assert first == again and len(set(first)) == 2
    assert all(i.startswith("call_") for i in first)


async def test_ollama_tool_results_go_back_in_its_own_shape(fake_ollama: FakeOllama) -> None:
    fake_ollama.script(
        ScriptedReply.calling(ToolCall("file_read", {"path": "a.txt"}, id=""),
                              ToolCall("knowledge_lookup", raw_arguments="{oops", id="")),
        ScriptedReply(chunks=("It says hi.",)))
    step = await run(fake_ollama)
    read, lookup = calls_of(step)
    history = [*MESSAGES, ChatMessage.tool_request([read, lookup]),
               ChatMessage.tool_result(read, "hi"),
               ChatMessage.tool_result(lookup, "error: arguments were not valid JSON")]
    answer = await run(fake_ollama, history)
    assert text_of(answer) == "It says hi." and not calls_of(answer)
    first, second = fake_ollama.chat_bodies()
    assert second["tools"] == first["tools"]
    assert second["messages"][2:] == [
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": read.id, "function": {"name": "file_read", "arguments": {"path": "a.txt"}}},
            # Ollama only takes an object: a malformed call goes back with no arguments.
            {"id": lookup.id, "function": {"name": "knowledge_lookup", "arguments": {}}}]},
        {"role": "tool", "content": "hi", "tool_name": "file_read", "tool_call_id": read.id},
        {"role": "tool", "content": "error: arguments were not valid JSON",
         "tool_name": "knowledge_lookup", "tool_call_id": lookup.id}]


async def test_openai_tool_results_go_back_in_its_own_shape(fake_openai: FakeOpenAI) -> None:
    fake_openai.script(
        ScriptedReply(chunks=("Let me look.",), tool_calls=(
            ToolCall("file_read", {"path": "a.txt"}),
            ToolCall("knowledge_lookup", raw_arguments="{oops"))),
        ScriptedReply(chunks=("It says hi.",)))
    step = await run(fake_openai)
    read, lookup = calls_of(step)
    history = [*MESSAGES, ChatMessage.tool_request([read, lookup], text_of(step)),
               ChatMessage.tool_result(read, "hi"), ChatMessage.tool_result(lookup, "bad")]
    await run(fake_openai, history)
    second = fake_openai.chat_bodies()[1]
    assert second["messages"][2:] == [
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "call_1_0", "type": "function",
             "function": {"name": "file_read", "arguments": '{"path": "a.txt"}'}},
            # Not the broken text: servers that re-parse history would refuse the request.
            {"id": "call_1_1", "type": "function",
             "function": {"name": "knowledge_lookup", "arguments": "{}"}}]},
        {"role": "tool", "content": "hi", "tool_call_id": "call_1_0"},
        {"role": "tool", "content": "bad", "tool_call_id": "call_1_1"}]
    assert json.loads(second["messages"][2]["tool_calls"][0]["function"]["arguments"]) == {
        "path": "a.txt"}


# --- calls written as text ------------------------------------------------------------------


def in_pieces(text: str, size: int = 4) -> tuple[str, ...]:
    return tuple(text[i:i + size] for i in range(0, len(text), size))


@pytest.mark.parametrize("reply", [
    '{"name": "file_read", "arguments": {"path": "a.txt"}}',
    '  {"tool": "file_read", "parameters": {"path": "a.txt"}}\n',
    '{"name": "file_read", "parameters": "{\\"path\\": \\"a.txt\\"}"}',
    '<tool_call>\n{"name": "file_read", "arguments": {"path": "a.txt"}}\n</tool_call>',
])
async def test_a_call_written_as_text_becomes_a_tool_call(
        fake: FakeOllama | FakeOpenAI, reply: str) -> None:
    fake.script(ScriptedReply(chunks=in_pieces(reply)))
    deltas = await run(fake)
    assert [type(d) for d in deltas] == [ToolCallDelta, StreamEnd]
    (call,) = calls_of(deltas)
    assert (call.name, call.arguments) == ("file_read", {"path": "a.txt"})
    assert call.id.startswith("call_0_")


async def test_several_tagged_calls_written_as_text(fake: FakeOllama | FakeOpenAI) -> None:
    reply = ('<tool_call>{"name": "file_read", "arguments": {"path": "a.txt"}}</tool_call>\n'
             '<tool_call>{"name": "knowledge_lookup", "arguments": {"q": "x"}}')  # cut off
    fake.script(ScriptedReply(chunks=in_pieces(reply, 7)))
    calls = calls_of(await run(fake))
    assert [(c.name, c.arguments) for c in calls] == [
        ("file_read", {"path": "a.txt"}), ("knowledge_lookup", {"q": "x"})]


@pytest.mark.parametrize("reply", [
    '{"name": "shell_exec", "arguments": {"cmd": "ls"}}',  # a tool nobody offered
    '{"name": "file_read", "arguments": {"path": "a.txt"}} and then some',
    '{"name": "file_read", "arguments": {"path": "a.txt"}, "why": "because"}',
    '<tool_call>{"name": "shell_exec", "arguments": {}}</tool_call>',
    '{"answer": 42}',
    '<tool',
])
async def test_text_that_is_not_an_offered_call_stays_text(
        fake: FakeOllama | FakeOpenAI, reply: str) -> None:
    fake.script(ScriptedReply(chunks=in_pieces(reply)))
    deltas = await run(fake)
    assert text_of(deltas) == reply and not calls_of(deltas)
    assert isinstance(deltas[-1], StreamEnd)


async def test_ordinary_text_streams_unheld_when_tools_are_offered(
        fake: FakeOllama | FakeOpenAI) -> None:
    pieces = ("Sure", " — here is", ' {"a": 1}', " and <tool_call>.")
    fake.script(ScriptedReply(chunks=pieces))
    deltas = await run(fake)
    # Piece for piece as the server sent them: nothing was held back and re-joined.
    assert [d.text for d in deltas if isinstance(d, TextDelta)] == list(pieces)

