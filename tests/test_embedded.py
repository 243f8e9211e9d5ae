"""The bundled model, really run in-process by llama.cpp."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from bot.config import BUNDLED_MODEL_ID, GenerationParams, ModelSpec, ProviderSpec
from bot.errors import ContextOverflow
from bot.providers import ChatMessage, Delta, StreamEnd, TextDelta, ToolCallDelta, ToolSpec
from bot.providers.embedded import EmbeddedProvider, template_message

MODEL = ModelSpec(id=BUNDLED_MODEL_ID, context_window=2048, max_tokens=48)
PARAMS = GenerationParams()
QUESTION = (ChatMessage("system", "You are a helpful assistant."),
            ChatMessage("user", "Name three colours."))
TOOL_MODEL = ModelSpec(id=BUNDLED_MODEL_ID, context_window=2048, max_tokens=8,
                       capabilities=("tools",))
FILE_READ = ToolSpec("file_read", "Read a file",
                     {"type": "object", "properties": {"path": {"type": "string"}}})
READ = ToolCallDelta("call_0", "file_read", {"path": "a.txt"})


@pytest.fixture(scope="module")
def provider() -> EmbeddedProvider:
    return EmbeddedProvider("local", ProviderSpec(type="embedded", models=(MODEL,)))


async def test_bundled_model_streams_a_reply(provider: EmbeddedProvider) -> None:
    await provider.warm(MODEL)
    deltas = [d async for d in provider.stream(MODEL, QUESTION, PARAMS)]
    texts = [d.text for d in deltas if isinstance(d, TextDelta)]
    end = deltas[-1]
    assert len(texts) > 3, "expected the reply in several pieces, as it is produced"
    assert "".join(texts).strip()
    assert isinstance(end, StreamEnd)
    assert end.completion_tokens == len(texts)
    assert end.prompt_tokens is not None and end.prompt_tokens > 10


async def test_stopping_early_frees_the_model_for_the_next_reply(
        provider: EmbeddedProvider) -> None:
    stream: AsyncIterator[object] = provider.stream(MODEL, QUESTION, PARAMS)
    async for _ in stream:
        break
    await stream.aclose()  # type: ignore[attr-defined]
    deltas = await asyncio.wait_for(
        _collect(provider.stream(MODEL, QUESTION, PARAMS)), timeout=60)
    assert isinstance(deltas[-1], StreamEnd)


async def test_prompt_beyond_the_window_is_a_context_overflow(
        provider: EmbeddedProvider) -> None:
    huge = (ChatMessage("user", "apple " * 4000),)
    with pytest.raises(ContextOverflow):
        await _collect(provider.stream(MODEL, huge, PARAMS))


async def test_zero_config_cli_answers_with_the_bundled_model(cli_env: dict[str, str]) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "chat", "--once", "Say hello.", env=cli_env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout=180)
    assert process.returncode == 0, err.decode()
    assert out.decode().strip()
    assert err.decode() == ""


async def _collect(stream: AsyncIterator[object]) -> list[object]:
    return [item async for item in stream]


async def test_a_turn_for_another_model_waits_instead_of_unloading_a_busy_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from bot.providers import embedded
    from bot.providers.embedded import Generated

    class CountingEngine:
        """Stands in for weights: it records use after release, which would crash llama.cpp."""

        def __init__(self, name: str) -> None:
            self.name, self.closed, self.misuse = name, False, False

        def generate(self, messages: object, params: object, max_tokens: int,
                     emit: embedded.Emit, cancelled: threading.Event,
                     tools: object = ()) -> Generated:
            for word in ("one ", "two ", "three"):
                self.misuse |= self.closed
                threading.Event().wait(0.05)
                emit(word)
            return Generated("stop", 1, 3)

        def close(self) -> None:
            self.closed = True

    engines: list[CountingEngine] = []

    def open_engine(model: ModelSpec, threads: int) -> CountingEngine:
        engines.append(CountingEngine(model.id))
        return engines[-1]

    monkeypatch.setattr(embedded, "open_engine", open_engine)
    first, second = ModelSpec(id="a"), ModelSpec(id="b")
    provider = EmbeddedProvider("local", ProviderSpec(type="embedded", models=(first, second)))
    replies = await asyncio.gather(*(_collect(provider.stream(model, QUESTION, PARAMS))
                                     for model in (first, first, second, first)))
    await provider.close()
    assert all(isinstance(reply[-1], StreamEnd) for reply in replies)
    assert not any(engine.misuse for engine in engines)
    assert all(engine.closed for engine in engines)


async def test_tools_and_tool_history_pass_through_llama_cpp(provider: EmbeddedProvider) -> None:
    # The bundled model's template ignores tools; what matters is that llama.cpp takes the
    # schemas and a history with a call and its result, and still answers.
    history = (*QUESTION, ChatMessage.tool_request([READ]), ChatMessage.tool_result(READ, "red"))
    deltas = await asyncio.wait_for(
        _collect(provider.stream(TOOL_MODEL, history, PARAMS, tools=[FILE_READ])), timeout=60)
    assert isinstance(deltas[-1], StreamEnd)


def test_history_reaches_chat_templates_in_their_convention() -> None:
    assert template_message(ChatMessage.tool_request([READ])) == {
        "role": "assistant", "content": "", "tool_calls": [
            {"id": "call_0", "type": "function",
             "function": {"name": "file_read", "arguments": {"path": "a.txt"}}}]}
    assert template_message(ChatMessage.tool_result(READ, "red")) == {
        "role": "tool", "content": "red", "tool_call_id": "call_0", "name": "file_read"}


async def test_a_call_written_as_text_by_an_embedded_model_is_recovered(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from bot.providers import embedded
    from bot.providers.embedded import Generated

    offered: list[object] = []

    class ScriptedEngine:
        def generate(self, messages: object, params: object, max_tokens: int,
                     emit: embedded.Emit, cancelled: threading.Event,
                     tools: object = ()) -> Generated:
            offered.append(tools)
            for piece in ("<tool_call>", '{"name": "file_read", ', '"arguments": {"path": ',
                          '"a.txt"}}', "</tool_call>"):
                emit(piece)
            return Generated("stop", 1, 5)

        def close(self) -> None:
            pass

    monkeypatch.setattr(embedded, "open_engine", lambda model, threads: ScriptedEngine())
    local = EmbeddedProvider("local", ProviderSpec(type="embedded", models=(TOOL_MODEL,)))
    deltas = await _collect(local.stream(TOOL_MODEL, QUESTION, PARAMS, tools=[FILE_READ]))
    plain = await _collect(local.stream(MODEL, QUESTION, PARAMS, tools=[FILE_READ]))
    await local.close()
    assert [type(d) for d in deltas] == [ToolCallDelta, StreamEnd]
    call = deltas[0]
    assert isinstance(call, ToolCallDelta)
    assert (call.name, call.arguments) == ("file_read", {"path": "a.txt"})
    # A model without the tools capability gets no schemas, and its text stays text.
    assert offered == [(FILE_READ,), ()]
    assert not any(isinstance(d, ToolCallDelta) for d in plain)


async def test_thirty_turns_with_the_bundled_model_stay_in_the_window(
        data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real model, counted with its own tokenizer: every request (turns and summaries)
    fits the window, and the fact from turn 1 travels on in the summary alone."""
    from bot.service import open_service
    from bot.summaries import SUMMARY_PROMPT
    from tests.support.chat import Chat
    from tests.support.helpers import db_rows, make_config

    window, reply_tokens = 1024, 48
    seen: list[tuple[list[ChatMessage], int, int | None]] = []  # messages, max tokens, counted
    written: list[str] = []  # what each request produced
    generate = EmbeddedProvider.generate

    async def recording(self: EmbeddedProvider, model: ModelSpec,
                        messages: Sequence[ChatMessage], params: GenerationParams,
                        tools: Sequence[ToolSpec]) -> AsyncIterator[Delta]:
        pieces: list[str] = []
        async for delta in generate(self, model, messages, params, tools):
            if isinstance(delta, TextDelta):
                pieces.append(delta.text)
            if isinstance(delta, StreamEnd):
                written.append("".join(pieces))
                seen.append((list(messages), params.max_tokens or model.max_tokens,
                             delta.prompt_tokens))
            yield delta

    monkeypatch.setattr(EmbeddedProvider, "generate", recording)
    config = make_config(data_dir, gateway={"providers": {"local": {"type": "embedded", "models": [
        {"id": BUNDLED_MODEL_ID, "context_window": window, "max_tokens": reply_tokens}]}}},
        agents={"default": {"active_model": f"local/{BUNDLED_MODEL_ID}"}})
    fact = "Hello! My cat's name is Biscuit. Please remember that."
    asks = ["What is the weather like in spring?", "Give me a quick pasta idea.",
            "How do I water tomato plants?", "Write a line about the sea.",
            "Why is the sky blue?", "Suggest a name for a goldfish.", "How can I sleep better?",
            "How do bicycles stay upright?", "Tell me a fact about owls.",
            "What should I pack for a picnic?"]
    async with open_service(config, voice=False) as service:
        await service.models.warm()
        chat = Chat(service)
        answers = []
        for n in range(1, 31):
            text = fact if n == 1 else ("What is my cat's name?" if n == 30
                                        else asks[n % len(asks)])
            result, answer = await chat.say(text)
            answers.append(answer)
            assert result.answered, answer
            await service.gateway.context.idle()
        [(summary, through)] = db_rows(service, "select summary, summary_through from sessions")
        provider, model = service.models.backend(service.models.target(None).label)
        assert isinstance(provider, EmbeddedProvider)
        counted = [await provider.count_tokens(model, messages) for messages, _, _ in seen]
    largest = max(reported + budget for _, budget, reported in seen if reported is not None)
    opening = SUMMARY_PROMPT.split(".")[0]
    summaries = [s for s in seen if s[0][0].content.startswith(opening)]
    last_turn = [s for s in seen if s not in summaries][-1][0]
    print(f"\nembedded, 30 turns: largest request {largest} of {window} tokens "
          f"({len(seen)} requests, {len(summaries)} of them summaries)")
    for (messages, _, _), text in zip(seen, written, strict=True):
        if messages[0].content.startswith(opening):
            print(f"summary written: {text!r}")
    print(f"stored summary: {summary!r}\nturn 30 answer: {answers[-1]!r}")
    assert largest <= window
    # The guard's counts are llama.cpp's own (its count after decoding may differ by a token).
    assert all(c is not None and r is not None and abs(c - r) <= 2
               for c, (_, _, r) in zip(counted, seen, strict=True)), (counted, seen)
    assert summaries and isinstance(summary, str) and summary
    assert isinstance(through, int) and through > 2
    # Turn 1 is no longer sent word for word: what reaches the model of it is the summary.
    assert all(fact not in m.content for m in last_turn)
    # The last turn carries the summary as it stood then; the model samples, so a longer
    # last reply may have it folded once more afterwards.
    written_summaries = [text.strip() for (messages, _, _), text in zip(seen, written,
                                                                         strict=True)
                         if messages[0].content.startswith(opening)]
    assert any(text and last_turn[0].content.endswith(text) for text in written_summaries)
