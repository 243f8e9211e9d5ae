"""The fake model servers, checked over plain HTTP so their wire formats can be trusted."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from tests.fakes.llm_backends import FakeOllama, FakeOpenAI, ScriptedReply, ToolCall

pytestmark = pytest.mark.asyncio

MODEL = "llama3.2:3b"
HI = [{"role": "user", "content": "hi"}]


@pytest_asyncio.fixture
async def ollama() -> AsyncIterator[FakeOllama]:
    async with FakeOllama() as server:
        yield server


@pytest_asyncio.fixture
async def openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest_asyncio.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    # trust_env=False: a proxy from the environment must never carry test traffic off the host.
    async with httpx.AsyncClient(trust_env=False, timeout=10) as c:
        yield c


async def ndjson(resp: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) async for line in resp.aiter_lines() if line]


async def sse_payloads(resp: httpx.Response) -> list[str]:
    """The `data:` payloads of an event stream, checking the framing on the way."""
    text = "".join([part async for part in resp.aiter_text()])
    assert text.endswith("\n\n")
    events = text[:-2].split("\n\n")
    assert all(e.startswith("data: ") and "\n" not in e for e in events)
    return [e.removeprefix("data: ") for e in events]


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": HI, **extra}


# --- Ollama ---------------------------------------------------------------------------------


async def test_ollama_catalogue_endpoints(ollama: FakeOllama, client: httpx.AsyncClient) -> None:
    tags = (await client.get(f"{ollama.base_url}/api/tags")).json()
    assert [m["name"] for m in tags["models"]] == [MODEL]
    assert {"model", "size", "digest", "details", "modified_at"} <= tags["models"][0].keys()
    assert (await client.get(f"{ollama.base_url}/api/ps")).json() == {"models": []}
    assert "version" in (await client.get(f"{ollama.base_url}/api/version")).json()
    show = (await client.post(f"{ollama.base_url}/api/show", json={"model": MODEL})).json()
    assert show["model_info"]["llama.context_length"] == 8192
    missing = await client.post(f"{ollama.base_url}/api/show", json={"model": "nope"})
    assert missing.status_code == 404 and "error" in missing.json()
    assert [(r.method, r.path) for r in ollama.requests] == [
        ("GET", "/api/tags"), ("GET", "/api/ps"), ("GET", "/api/version"),
        ("POST", "/api/show"), ("POST", "/api/show")]
    assert ollama.requests[0].body is None and ollama.requests[3].body == {"model": MODEL}
    assert "user-agent" in ollama.requests[0].headers
    assert (await client.get(f"{ollama.base_url}/api/nothing")).status_code == 404
    assert ollama.requests[-1].path == "/api/nothing"


async def test_ollama_chat_streams_ndjson(ollama: FakeOllama, client: httpx.AsyncClient) -> None:
    async with client.stream("POST", f"{ollama.base_url}/api/chat", json=chat_body()) as resp:
        assert resp.headers["content-type"] == "application/x-ndjson"
        lines = await ndjson(resp)
    *parts, final = lines
    assert all(p["done"] is False and p["message"]["role"] == "assistant" for p in parts)
    assert "".join(p["message"]["content"] for p in parts) == "Hello there."
    assert final["done"] is True and final["done_reason"] == "stop"
    assert final["eval_count"] == 3 and final["prompt_eval_count"] == 12
    for field in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(final[field], int) and final[field] >= 0
    assert all(line["model"] == MODEL and line["created_at"].endswith("Z") for line in lines)
    assert ollama.loaded == [MODEL]
    assert ollama.requests_to("/api/chat")[0].body == chat_body()


async def test_ollama_tool_calls_follow_the_text(
    ollama: FakeOllama, client: httpx.AsyncClient
) -> None:
    calls = (ToolCall("file_read", {"path": "a.txt"}), ToolCall("knowledge_lookup", {"q": "x"}))
    ollama.script(ScriptedReply(chunks=("Let me look.",), tool_calls=calls))
    async with client.stream("POST", f"{ollama.base_url}/api/chat", json=chat_body()) as resp:
        lines = await ndjson(resp)
    assert lines[0]["message"] == {"role": "assistant", "content": "Let me look."}
    got = [c["function"] for line in lines for c in line["message"].get("tool_calls", [])]
    assert got == [
        {"index": 0, "name": "file_read", "arguments": {"path": "a.txt"}},
        {"index": 1, "name": "knowledge_lookup", "arguments": {"q": "x"}},
    ]
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 1


async def test_ollama_non_streaming(ollama: FakeOllama, client: httpx.AsyncClient) -> None:
    ollama.script(ScriptedReply(chunks=("a", "b"), tool_calls=(ToolCall("f", {"n": 1}),)))
    resp = await client.post(f"{ollama.base_url}/api/chat", json=chat_body(stream=False))
    body = resp.json()
    assert body["message"]["content"] == "ab" and body["done"] is True
    assert body["message"]["tool_calls"][0]["function"]["arguments"] == {"n": 1}
    assert body["eval_count"] == 2


async def test_ollama_calls_batched_in_one_line_without_ids(
    ollama: FakeOllama, client: httpx.AsyncClient
) -> None:
    ollama.script(ScriptedReply.calling(
        ToolCall("file_read", {"path": "a.txt"}, id=""),
        ToolCall("knowledge_lookup", raw_arguments="{bad", id=""), batch_tool_calls=True))
    async with client.stream("POST", f"{ollama.base_url}/api/chat", json=chat_body()) as resp:
        lines = await ndjson(resp)
    call_line, final = lines
    assert call_line["message"]["content"] == ""
    assert call_line["message"]["tool_calls"] == [
        {"function": {"index": 0, "name": "file_read", "arguments": {"path": "a.txt"}}},
        {"function": {"index": 1, "name": "knowledge_lookup", "arguments": "{bad"}}]
    assert final["done"] is True


async def test_scripts_advance_per_chat_request_and_bodies_are_kept(
    ollama: FakeOllama, client: httpx.AsyncClient
) -> None:
    ollama.script(ScriptedReply.calling(ToolCall("file_read", {"path": "a.txt"})),
                  ScriptedReply(chunks=("done",)))
    url = f"{ollama.base_url}/api/chat"
    tools = [{"type": "function", "function": {"name": "file_read"}}]
    first = (await client.post(url, json=chat_body(stream=False, tools=tools))).json()
    await client.get(f"{ollama.base_url}/api/ps")  # other endpoints take nothing off the script
    result = {"role": "tool", "content": "hi", "tool_name": "file_read"}
    follow_up = chat_body(stream=False, messages=[*HI, first["message"], result])
    second = (await client.post(url, json=follow_up)).json()
    assert first["message"]["tool_calls"][0]["function"]["name"] == "file_read"
    assert second["message"] == {"role": "assistant", "content": "done"}
    assert ollama.chat_bodies() == [chat_body(stream=False, tools=tools), follow_up]


async def test_ollama_generate_streams_response_field(
    ollama: FakeOllama, client: httpx.AsyncClient
) -> None:
    body = {"model": MODEL, "prompt": "hi"}
    async with client.stream("POST", f"{ollama.base_url}/api/generate", json=body) as resp:
        lines = await ndjson(resp)
    assert "".join(line["response"] for line in lines) == "Hello there."
    assert lines[-1]["done"] is True and "context" in lines[-1]


async def test_ollama_unknown_and_missing_model(
    ollama: FakeOllama, client: httpx.AsyncClient
) -> None:
    resp = await client.post(f"{ollama.base_url}/api/chat", json={"model": "x", "messages": HI})
    assert resp.status_code == 404
    assert resp.json() == {"error": 'model "x" not found, try pulling it first'}
    resp = await client.post(f"{ollama.base_url}/api/chat", json={"messages": HI})
    assert resp.status_code == 400 and "error" in resp.json()
    resp = await client.post(f"{ollama.base_url}/api/chat", content=b"{not json")
    assert resp.status_code == 400 and ollama.requests[-1].body is None


async def test_ollama_keep_alive_loads_and_unloads(client: httpx.AsyncClient) -> None:
    async with FakeOllama(models=("qwen3:latest", MODEL)) as server:
        url = server.base_url

        async def resident() -> list[str]:
            return [m["name"] for m in (await client.get(f"{url}/api/ps")).json()["models"]]

        warm = {"model": "qwen3", "prompt": "", "keep_alive": "24h", "stream": False}
        reply = (await client.post(f"{url}/api/generate", json=warm)).json()
        assert reply["done"] is True and reply["done_reason"] == "load"
        assert await resident() == ["qwen3:latest"]
        for zero in (0, "0", "0s"):
            cold = {"model": "qwen3", "prompt": "", "keep_alive": zero}
            reply = (await client.post(f"{url}/api/generate", json=cold)).json()
            assert reply["done_reason"] == "unload" and await resident() == []
            await client.post(f"{url}/api/generate", json=warm)
        # A chat with keep_alive 0 answers in full and then lets the model go.
        await client.post(f"{url}/api/chat", json=chat_body(keep_alive=0, stream=False))
        assert server.loaded == ["qwen3:latest"] and server.peak_loaded == 2
        assert server.requests_to("/api/generate")[0].body == warm


async def test_ollama_scripted_error_then_queue_order(
    ollama: FakeOllama, client: httpx.AsyncClient
) -> None:
    ollama.script(ScriptedReply(status=500), ScriptedReply(chunks=("second",)))
    url = f"{ollama.base_url}/api/chat"
    failed = await client.post(url, json=chat_body())
    assert failed.status_code == 500 and failed.headers["content-type"].startswith(
        "application/json")
    assert isinstance(failed.json()["error"], str)
    texts = []
    for _ in range(2):
        body = (await client.post(url, json=chat_body(stream=False))).json()
        texts.append(body["message"]["content"])
    assert texts == ["second", "Hello there."]


async def test_ollama_disconnect_mid_stream(ollama: FakeOllama, client: httpx.AsyncClient) -> None:
    ollama.script(ScriptedReply(chunks=("a", "b", "c", "d"), disconnect_after=2))
    received: list[dict[str, Any]] = []
    with pytest.raises(httpx.RemoteProtocolError):
        async with client.stream("POST", f"{ollama.base_url}/api/chat", json=chat_body()) as r:
            async for line in r.aiter_lines():
                received.append(json.loads(line))
    assert [x["message"]["content"] for x in received] == ["a", "b"]
    assert not any(x["done"] for x in received)
    # The server survives the cut and answers the next request normally.
    assert (await client.get(f"{ollama.base_url}/api/version")).status_code == 200


async def test_first_token_delay_comes_after_headers(
    ollama: FakeOllama, client: httpx.AsyncClient
) -> None:
    ollama.script(ScriptedReply(first_token_delay=0.3, token_delay=0.1))
    start = time.monotonic()
    async with client.stream("POST", f"{ollama.base_url}/api/chat", json=chat_body()) as resp:
        headers_at = time.monotonic() - start
        stamps = [time.monotonic() - start async for _ in resp.aiter_lines()]
    assert headers_at < 0.25 and stamps[0] >= 0.29
    assert stamps[2] - stamps[0] >= 0.19
    assert ollama.requests[0].at >= start


# --- OpenAI-compatible ----------------------------------------------------------------------


async def test_openai_models_list(openai: FakeOpenAI, client: httpx.AsyncClient) -> None:
    assert openai.base_url.endswith("/v1")
    body = (await client.get(f"{openai.base_url}/models")).json()
    assert body["object"] == "list"
    assert body["data"] == [
        {"id": MODEL, "object": "model", "created": body["data"][0]["created"],
         "owned_by": body["data"][0]["owned_by"]}]


async def test_openai_stream_sse_with_usage(openai: FakeOpenAI, client: httpx.AsyncClient) -> None:
    body = chat_body(stream=True, stream_options={"include_usage": True})
    async with client.stream("POST", f"{openai.base_url}/chat/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        payloads = await sse_payloads(r)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    *streamed, last, usage = chunks
    assert streamed[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in streamed)
    assert text == "Hello there."
    assert all(c["choices"][0]["finish_reason"] is None for c in streamed)
    assert last["choices"][0]["finish_reason"] == "stop"
    assert usage["choices"] == []
    assert usage["usage"] == {
        "prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}}


async def test_openai_stream_without_usage(openai: FakeOpenAI, client: httpx.AsyncClient) -> None:
    openai.script(ScriptedReply(chunks=("x",), finish_reason="length"))
    body = chat_body(stream=True)
    async with client.stream("POST", f"{openai.base_url}/chat/completions", json=body) as r:
        payloads = await sse_payloads(r)
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert payloads[-1] == "[DONE]" and len(chunks) == 2
    assert not any("usage" in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_openai_tool_calls_merge_by_index(
    openai: FakeOpenAI, client: httpx.AsyncClient
) -> None:
    calls = (ToolCall("file_read", {"path": "a.txt"}), ToolCall("shell_exec", {"cmd": "ls"}))
    openai.script(ScriptedReply(chunks=(), tool_calls=calls))
    async with client.stream(
        "POST", f"{openai.base_url}/chat/completions", json=chat_body(stream=True)
    ) as r:
        chunks = [json.loads(p) for p in (await sse_payloads(r))[:-1]]
    merged: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for call in chunk["choices"][0]["delta"].get("tool_calls", []):
            slot = merged.setdefault(call["index"], {"id": "", "name": "", "arguments": ""})
            slot["id"] += call.get("id", "")
            slot["name"] += call["function"].get("name", "")
            slot["arguments"] += call["function"].get("arguments", "")
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [(m["name"], json.loads(m["arguments"])) for m in merged.values()] == [
        ("file_read", {"path": "a.txt"}), ("shell_exec", {"cmd": "ls"})]
    assert all(m["id"] for m in merged.values())
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def _tool_deltas(openai: FakeOpenAI, client: httpx.AsyncClient,
                       reply: ScriptedReply) -> list[list[dict[str, Any]]]:
    openai.script(reply)
    async with client.stream(
        "POST", f"{openai.base_url}/chat/completions", json=chat_body(stream=True)
    ) as r:
        chunks = [json.loads(p) for p in (await sse_payloads(r))[:-1]]
    return [c["choices"][0]["delta"]["tool_calls"] for c in chunks
            if "tool_calls" in c["choices"][0]["delta"]]


async def test_openai_argument_fragments_interleave_across_calls(
    openai: FakeOpenAI, client: httpx.AsyncClient
) -> None:
    deltas = await _tool_deltas(openai, client, ScriptedReply.calling(
        ToolCall("file_read", {"path": "abc"}, pieces=3),
        ToolCall("shell_exec", raw_arguments='{"cmd": "l', pieces=2, id=""),
        interleave_arguments=True))
    assert [len(d) for d in deltas] == [1] * 7
    assert [d[0]["index"] for d in deltas] == [0, 1, 0, 1, 0, 1, 0]
    assert deltas[0][0]["id"] == "call_1_0" and "id" not in deltas[1][0]
    args = {0: "", 1: ""}
    for d in deltas:
        args[d[0]["index"]] += d[0]["function"]["arguments"]
    assert args == {0: '{"path": "abc"}', 1: '{"cmd": "l'}


async def test_openai_batched_calls_share_deltas(
    openai: FakeOpenAI, client: httpx.AsyncClient
) -> None:
    deltas = await _tool_deltas(openai, client, ScriptedReply.calling(
        ToolCall("file_read", {"path": "a"}, pieces=2), ToolCall("shell_exec", {}),
        batch_tool_calls=True))
    assert [[c["index"] for c in d] for d in deltas] == [[0, 1], [0, 1], [0]]
    assert [c["function"]["name"] for c in deltas[0]] == ["file_read", "shell_exec"]


async def test_openai_non_streaming(openai: FakeOpenAI, client: httpx.AsyncClient) -> None:
    openai.script(ScriptedReply(tool_calls=(ToolCall("f", {"a": [1, 2]}),)))
    body = (await client.post(f"{openai.base_url}/chat/completions", json=chat_body())).json()
    assert body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["message"]["content"] == "Hello there."
    assert json.loads(choice["message"]["tool_calls"][0]["function"]["arguments"]) == {
        "a": [1, 2]}
    assert choice["finish_reason"] == "tool_calls" and body["usage"]["completion_tokens"] == 3


async def test_openai_errors(openai: FakeOpenAI, client: httpx.AsyncClient) -> None:
    url = f"{openai.base_url}/chat/completions"
    resp = await client.post(url, json={"model": "ghost", "messages": HI, "stream": True})
    assert resp.status_code == 404
    assert set(resp.json()["error"]) >= {"message", "type", "code"}
    assert resp.json()["error"]["code"] == "model_not_found"
    openai.script(ScriptedReply(status=500), ScriptedReply(status=429))
    for status in (500, 429):
        resp = await client.post(url, json=chat_body(stream=True))
        assert resp.status_code == status
        assert not resp.text.startswith("data:")
        assert isinstance(resp.json()["error"]["message"], str)


async def test_openai_api_key(client: httpx.AsyncClient) -> None:
    async with FakeOpenAI(api_key="sekrit") as server:
        denied = await client.get(f"{server.base_url}/models")
        assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"
        wrong = await client.get(f"{server.base_url}/models", headers={"Authorization": "x"})
        assert wrong.status_code == 401
        ok = await client.get(
            f"{server.base_url}/models", headers={"Authorization": "Bearer sekrit"})
        assert ok.status_code == 200
        assert len(server.requests) == 3  # refused requests are recorded too
        assert server.requests[2].headers["authorization"] == "Bearer sekrit"


async def test_openai_disconnect_mid_stream(
    openai: FakeOpenAI, client: httpx.AsyncClient
) -> None:
    openai.script(ScriptedReply(disconnect_after=1))
    received: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):
        async with client.stream(
            "POST", f"{openai.base_url}/chat/completions", json=chat_body(stream=True)
        ) as r:
            async for line in r.aiter_lines():
                received.append(line)
    data = [line for line in received if line.startswith("data: ")]
    assert len(data) == 1 and "[DONE]" not in data[0]
    openai.script(ScriptedReply(disconnect_after=0))
    with pytest.raises(httpx.RemoteProtocolError):
        await client.post(f"{openai.base_url}/chat/completions", json=chat_body())


async def test_stop_is_fast_with_an_open_stream(client: httpx.AsyncClient) -> None:
    server = FakeOpenAI()
    await server.start()
    server.script(ScriptedReply(first_token_delay=60))
    streaming = asyncio.Event()

    async def listen() -> None:
        async with client.stream(
            "POST", f"{server.base_url}/chat/completions", json=chat_body(stream=True)
        ) as r:
            streaming.set()
            async for _ in r.aiter_lines():
                pass

    listener = asyncio.create_task(listen())
    await asyncio.wait_for(streaming.wait(), 2)
    start = time.monotonic()
    await server.stop()
    assert time.monotonic() - start < 1.0
    with pytest.raises(httpx.HTTPError):
        await asyncio.wait_for(listener, 2)
