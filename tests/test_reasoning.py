"""Reasoning models and the output cap, end to end.

A fake backend streams a chain of thought, then the answer, in each form real servers use
(Ollama's `message.thinking`, OpenAI-compatible `reasoning_content` and `reasoning`, and
`<think>…</think>` in the text, cut across chunks). The chat gets only the answer, the turn's
record keeps the thoughts, the spoken reply says only the answer, and the thoughts never go
back to the model as history. A reply cut by `max_tokens` ends with a visible marker.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import pytest

from bot.config import Config, GenerationParams, ModelSpec, ProviderSpec
from bot.providers import (
    ChatMessage,
    Delta,
    StreamEnd,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
    ToolSpec,
    build_provider,
)
from bot.providers.thinking import ThinkTagSplitter
from bot.service import Service, open_service
from bot.turn import CUT_MARKER, THOUGHT_CUT_REPLY
from bot.voice.stt import Transcriber
from tests.fakes.discord import FakeDiscord
from tests.fakes.llm_backends import FakeOllama, FakeOpenAI, ScriptedReply, ToolCall
from tests.fakes.telegram import FakeTelegram
from tests.support.discord import STRANGER_ID, bot_messages, serving, settled
from tests.support.helpers import db_rows, make_config, until
from tests.support.telegram import OWNER, STRANGER, polling, texts
from tests.support.voice import heard

Fake = FakeOllama | FakeOpenAI
Form = Literal["separate", "reasoning", "tag"]

SECRET = "ZEBRA"
THOUGHTS = (f"The user asks about pineapples; the word {SECRET} ", "must stay hidden. ",
            "Answer in one sentence.")
ANSWER = ("Pineapples grow ", "on low plants, ", "not on trees.")
QUESTION = (ChatMessage("user", "Where do pineapples grow?"),)
FILE_READ = ToolSpec("file_read", "Read a file", {
    "type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]})

# (backend, form): every way a thought reaches hearthbot.
FORMS: list[tuple[str, Form]] = [("ollama", "separate"), ("ollama", "tag"),
                                 ("openai", "separate"), ("openai", "reasoning"),
                                 ("openai", "tag")]
FORM_IDS = ["ollama-thinking", "ollama-tag", "openai-reasoning_content", "openai-reasoning",
            "openai-tag"]


async def backend(kind: str) -> Fake:
    return FakeOllama() if kind == "ollama" else FakeOpenAI()


def thinking_reply(form: Form, **options: Any) -> ScriptedReply:
    return ScriptedReply(chunks=ANSWER, thinking=THOUGHTS, thinking_form=form, **options)


# ---- the <think> splitter ---------------------------------------------------------------------


def split_all(chunks: Sequence[str]) -> tuple[str, str]:
    splitter = ThinkTagSplitter()
    pieces = [p for chunk in chunks for p in splitter.feed(chunk)] + splitter.finish()
    thought = "".join(p.text for p in pieces if isinstance(p, ThinkingDelta))
    said = "".join(p.text for p in pieces if isinstance(p, TextDelta))
    return thought, said


def test_think_tags_split_at_every_chunk_boundary() -> None:
    raw = "Well. <think>weigh <b> and </b>, then\nanswer</think>\n\nThe answer is 4."
    expected = ("weigh <b> and </b>, then\nanswer", "Well. The answer is 4.")
    assert split_all([raw]) == expected
    for cut in range(1, len(raw)):
        assert split_all([raw[:cut], raw[cut:]]) == expected, cut
    for first, second in [(a, b) for a in range(1, len(raw)) for b in range(a + 1, len(raw))
                          if b - a < 9]:
        assert split_all([raw[:first], raw[first:second], raw[second:]]) == expected
    assert split_all(list(raw)) == expected  # one character at a time


def test_a_thought_never_closed_stays_a_thought() -> None:
    assert split_all(["<think>I should consider", " the options </thi"]) == (
        "I should consider the options </thi", "")
    assert split_all(["<thi", "nk>", "x"]) == ("x", "")


def test_text_that_only_looks_like_a_tag_stays_text() -> None:
    assert split_all(["a <thin", " ice> b <"]) == ("", "a <thin ice> b <")
    assert split_all(["no tags at all"]) == ("", "no tags at all")
    assert split_all(["x </think> y"]) == ("", "x </think> y")


# ---- providers: the thought, the switch, the cap, tool calls ------------------------------------


REASONING = ModelSpec(id="llama3.2:3b", context_window=8192, max_tokens=64, reasoning=True)
PLAIN = replace(REASONING, reasoning=False)


@pytest.fixture(params=["ollama", "openai"])
async def fake(request: pytest.FixtureRequest) -> AsyncIterator[Fake]:
    server: Fake = FakeOllama() if request.param == "ollama" else FakeOpenAI()
    async with server:
        yield server


def provider_for(fake: Fake, *models: ModelSpec) -> Any:
    kind: Literal["ollama", "openai-compat"] = (
        "ollama" if isinstance(fake, FakeOllama) else "openai-compat")
    return build_provider("test", ProviderSpec(type=kind, base_url=fake.base_url,
                                               models=models or (REASONING,)))


async def collect(stream: AsyncIterator[Delta]) -> list[Delta]:
    return [delta async for delta in stream]


def parts(deltas: Sequence[Delta]) -> tuple[str, str]:
    return ("".join(d.text for d in deltas if isinstance(d, ThinkingDelta)),
            "".join(d.text for d in deltas if isinstance(d, TextDelta)))


@pytest.mark.parametrize(("kind", "form"), FORMS, ids=FORM_IDS)
async def test_every_form_of_thought_comes_apart_from_the_answer(kind: str, form: Form) -> None:
    async with await backend(kind) as llm:
        llm.script(thinking_reply(form))
        provider = provider_for(llm)
        deltas = await collect(provider.stream(REASONING, QUESTION, GenerationParams(think=True)))
        await provider.close()
    assert parts(deltas) == ("".join(THOUGHTS), "".join(ANSWER))
    assert isinstance(deltas[-1], StreamEnd)


def switch_sent(fake: Fake) -> object:
    body = fake.chat_bodies()[-1]
    if isinstance(fake, FakeOllama):
        return body.get("think", "absent")
    kwargs = body.get("chat_template_kwargs")
    return kwargs.get("enable_thinking", "absent") if isinstance(kwargs, dict) else "absent"


def cap_sent(fake: Fake) -> object:
    body = fake.chat_bodies()[-1]
    if isinstance(fake, FakeOllama):
        return body["options"]["num_predict"]
    return body["max_tokens"]


async def test_the_switch_and_the_cap_reach_every_request(fake: Fake) -> None:
    provider = provider_for(fake, REASONING, replace(PLAIN, id="plain"))
    cases: list[tuple[ModelSpec, GenerationParams, object, int]] = [
        (REASONING, GenerationParams(think=True), True, 64),
        (REASONING, GenerationParams(think=False, max_tokens=20), False, 20),
        (REASONING, GenerationParams(max_tokens=500), "absent", 64),  # never above the model's
        (PLAIN, GenerationParams(think=True), "absent", 64),  # only reasoning models are told
    ]
    for model, params, switch, cap in cases:
        fake.script(thinking_reply("separate"))
        deltas = await collect(provider.stream(model, QUESTION, params))
        assert (switch_sent(fake), cap_sent(fake)) == (switch, cap), (model, params)
        # A model told not to think does not (the fake obeys as real templates do).
        assert bool(parts(deltas)[0]) == (switch is not False)
    await provider.close()


async def test_a_long_think_does_not_trip_the_first_token_timeout(fake: Fake) -> None:
    # Thoughts for longer in all than the first-token timeout, each piece well within the read
    # timeout: the backend is alive and answering, so the reply must arrive.
    fake.script(ScriptedReply(chunks=("Done.",), thinking=tuple(f"step {n}. " for n in range(6)),
                              token_delay=0.8))
    kind: Literal["ollama", "openai-compat"] = (
        "ollama" if isinstance(fake, FakeOllama) else "openai-compat")
    provider = build_provider("test", ProviderSpec(
        type=kind, base_url=fake.base_url, models=(REASONING,), first_token_timeout=3.0,
        read_timeout=5.0))
    deltas = await collect(provider.stream(REASONING, QUESTION, GenerationParams(think=True)))
    await provider.close()
    assert parts(deltas) == ("".join(f"step {n}. " for n in range(6)), "Done.")


async def test_json_inside_a_thought_is_not_a_tool_call(fake: Fake) -> None:
    model = replace(REASONING, capabilities=("tools",))
    musing = ('I could send {"name": "file_read", "arguments": {"path": "secret.txt"}} ',
              "but I will not.")
    fake.script(ScriptedReply(chunks=("Just ", "an answer."), thinking=musing,
                              thinking_form="tag"),
                # A real call written as text after the thought is still recovered.
                ScriptedReply(chunks=('{"name": "file_read", ', '"arguments": {"path": "a.txt"}}'),
                              thinking=musing, thinking_form="tag"))
    provider = provider_for(fake, model)
    answer = await collect(provider.stream(model, QUESTION, GenerationParams(), [FILE_READ]))
    call = await collect(provider.stream(model, QUESTION, GenerationParams(), [FILE_READ]))
    await provider.close()
    assert not any(isinstance(d, ToolCallDelta) for d in answer)
    assert parts(answer) == ("".join(musing), "Just an answer.")
    calls = [d for d in call if isinstance(d, ToolCallDelta)]
    assert [(c.name, c.arguments) for c in calls] == [("file_read", {"path": "a.txt"})]
    assert parts(call) == ("".join(musing), "")


async def test_embedded_text_is_split_too_and_the_engine_gets_the_cap(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.providers import embedded
    from bot.providers.embedded import EmbeddedProvider, Generated

    caps: list[int] = []

    class ThinkingEngine:
        def generate(self, messages: object, params: object, max_tokens: int,
                     emit: embedded.Emit, cancelled: threading.Event,
                     tools: object = ()) -> Generated:
            caps.append(max_tokens)
            for piece in ("<th", "ink>pondering", "</thi", "nk>\n", "\nDone."):
                emit(piece)
            return Generated("length", 1, 5)

        def close(self) -> None:
            pass

    monkeypatch.setattr(embedded, "open_engine", lambda model, threads: ThinkingEngine())
    model = ModelSpec(id="local-model", max_tokens=40)
    local = EmbeddedProvider("local", ProviderSpec(type="embedded", models=(model,)))
    deltas = await collect(local.stream(model, QUESTION, GenerationParams(max_tokens=300)))
    await local.close()
    assert parts(deltas) == ("pondering", "Done.")
    assert deltas[-1] == StreamEnd("length", 1, 5)
    assert caps == [40]


async def test_the_bundled_model_stops_at_its_cap_and_says_length() -> None:
    from bot.config import BUNDLED_MODEL_ID
    from bot.providers.embedded import EmbeddedProvider

    model = ModelSpec(id=BUNDLED_MODEL_ID, context_window=2048, max_tokens=3)
    local = EmbeddedProvider("local", ProviderSpec(type="embedded", models=(model,)))
    try:
        deltas = await asyncio.wait_for(collect(local.stream(
            model, (ChatMessage("user", "Tell me a long story about a dragon."),),
            GenerationParams())), timeout=120)
    finally:
        await local.close()
    end = deltas[-1]
    assert isinstance(end, StreamEnd)
    assert end.finish_reason == "length"
    assert end.completion_tokens is not None and end.completion_tokens <= 3


# ---- through the real Telegram client -----------------------------------------------------------


@dataclass
class Chat:
    service: Service
    tg: FakeTelegram
    llm: Fake


def reasoning_config(data_dir: Path, tg: FakeTelegram, llm: Fake, *, think: bool | None = True,
                     voice_replies: str = "off", max_tokens: int = 512,
                     capabilities: Sequence[str] = ()) -> Config:
    kind = "ollama" if isinstance(llm, FakeOllama) else "openai-compat"
    params: dict[str, object] = {} if think is None else {"think": think}
    return make_config(
        data_dir,
        gateway={"providers": {"thinker": {
            "type": kind, "base_url": llm.base_url, "first_token_timeout": 5,
            "models": [{"id": llm.models[0], "context_window": 8192, "max_tokens": max_tokens,
                        "reasoning": True, "capabilities": list(capabilities)}]}}},
        agents={"default": {"active_model": f"thinker/{llm.models[0]}"},
                "instances": {"admin": {"role": "admin", "params": params,
                                        "voice_replies": voice_replies},
                              "guest": {"role": "guest", "params": params}}},
        channels={"telegram": {"token": tg.token, "api_base_url": tg.base_url,
                               "file_base_url": tg.base_file_url, "poll_timeout": 2,
                               "edit_interval": 0.2, "draft_interval": 0.05}},
    )


@asynccontextmanager
async def telegram_chat(config: Config, tg: FakeTelegram, llm: Fake,
                        voice: bool = False) -> AsyncIterator[Chat]:
    async with polling(config, voice) as (service, _adapter):
        yield Chat(service, tg, llm)


def record_speech(service: Service, spoken: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep each text handed to the real synthesizer (what the voice note says)."""
    speech = service.gateway.speech
    assert speech is not None and speech.synthesizer is not None
    real = speech.synthesizer.synthesize_pcm48k

    async def recorded(text: str) -> bytes:
        spoken.append(text)
        return await real(text)

    monkeypatch.setattr(speech.synthesizer, "synthesize_pcm48k", recorded)


def everything_shown(tg: FakeTelegram, chat: int) -> list[str]:
    """Every text the chat saw: messages, drafts and edits."""
    edits = [str(c.params.get("text", "")) for c in tg.calls_to("editMessageText")]
    return texts(tg, chat) + tg.drafts(chat) + edits


def turn_rows(service: Service) -> list[tuple[Any, ...]]:
    return db_rows(service, "select thinking, thinking_ms, status from turns order by id")


def history_contents(llm: Fake) -> str:
    return " ".join(str(m.get("content") or "") for body in llm.chat_bodies()
                    for m in body["messages"])


@pytest.mark.parametrize(("kind", "form"), FORMS, ids=FORM_IDS)
async def test_chat_gets_only_the_answer_and_the_record_keeps_the_thought(
        data_dir: Path, fake_tg: FakeTelegram, kind: str, form: Form) -> None:
    async with await backend(kind) as llm:
        llm.script(thinking_reply(form, token_delay=0.02),
                   ScriptedReply(chunks=("Yes, ", "really.")))
        config = reasoning_config(data_dir, fake_tg, llm)
        async with telegram_chat(config, fake_tg, llm) as chat:
            fake_tg.push_text(chat_id=OWNER, from_id=OWNER, text="Where do pineapples grow?")
            await until(lambda: texts(fake_tg, OWNER))
            fake_tg.push_text(chat_id=OWNER, from_id=OWNER, text="Really?")
            await until(lambda: len(turn_rows(chat.service)) == 2)
            rows = turn_rows(chat.service)
    assert texts(fake_tg, OWNER) == ["".join(ANSWER), "Yes, really."]
    assert not any(SECRET in shown or "think>" in shown
                   for shown in everything_shown(fake_tg, OWNER))
    (thinking, thinking_ms, status), second = rows
    assert (thinking, status) == ("".join(THOUGHTS), "answered")
    assert isinstance(thinking_ms, int) and thinking_ms >= 0
    assert second[:1] == (None,)
    # The next request carries the answer as history, never the thought.
    assert "".join(ANSWER) in history_contents(llm)
    assert SECRET not in history_contents(llm)


@pytest.mark.parametrize(("kind", "form"), [("ollama", "separate"), ("openai", "reasoning"),
                                            ("openai", "tag")],
                         ids=["ollama-thinking", "openai-reasoning", "openai-tag"])
async def test_the_voice_reply_speaks_only_the_answer(
        data_dir: Path, fake_tg: FakeTelegram, kind: str, form: Form,
        monkeypatch: pytest.MonkeyPatch) -> None:
    spoken: list[str] = []
    async with await backend(kind) as llm:
        llm.script(thinking_reply(form))
        config = reasoning_config(data_dir, fake_tg, llm, voice_replies="always")
        async with telegram_chat(config, fake_tg, llm, voice=True) as chat:
            record_speech(chat.service, spoken, monkeypatch)
            fake_tg.push_text(chat_id=OWNER, from_id=OWNER, text="Where do pineapples grow?")
            await until(lambda: fake_tg.voices_sent, within=60)
    said = " ".join(spoken)
    assert "pineapples grow" in said.lower() and "trees" in said
    assert SECRET not in said and "hidden" not in said and "think" not in said
    assert texts(fake_tg, OWNER)[0] == "".join(ANSWER)
    # And what the voice note really says, heard back by the real speech-to-text.
    (voice,) = fake_tg.voices_sent
    heard_back = (await Transcriber().transcribe(voice.files["voice"])).text.lower()
    assert heard(heard_back, "pineapples", "grow", "plants", "trees") >= 3, heard_back
    assert heard(heard_back, "zebra", "hidden", "sentence") == 0, heard_back


async def test_a_cut_voice_reply_ends_with_the_short_spoken_marker(
        data_dir: Path, fake_tg: FakeTelegram, monkeypatch: pytest.MonkeyPatch) -> None:
    spoken: list[str] = []
    async with FakeOllama() as llm:
        llm.script(ScriptedReply(chunks=("Pineapples grow on low plants and they ta",),
                                 finish_reason="length"))
        config = reasoning_config(data_dir, fake_tg, llm, voice_replies="always")
        async with telegram_chat(config, fake_tg, llm, voice=True) as chat:
            record_speech(chat.service, spoken, monkeypatch)
            fake_tg.push_text(chat_id=OWNER, from_id=OWNER, text="Tell me about pineapples")
            await until(lambda: fake_tg.voices_sent, within=60)
    assert texts(fake_tg, OWNER)[0] == "Pineapples grow on low plants and they ta" + CUT_MARKER
    said = " ".join(spoken)
    assert said.rstrip().endswith("Cut off at the length limit."), said
    assert "(" not in said


async def test_thoughts_around_a_tool_call_are_recorded_and_never_sent_back(
        data_dir: Path, fake_tg: FakeTelegram) -> None:
    async with FakeOllama() as llm:
        llm.script(ScriptedReply.calling(ToolCall("knowledge_lookup", {"query": "pineapples"}),
                                         thinking=(f"I will look it up; {SECRET}.",)),
                   ScriptedReply(chunks=ANSWER, thinking=("The notes say ground level.",)))
        config = reasoning_config(data_dir, fake_tg, llm, capabilities=["tools"])
        async with telegram_chat(config, fake_tg, llm) as chat:
            fake_tg.push_text(chat_id=OWNER, from_id=OWNER, text="Where do pineapples grow?")
            await until(lambda: turn_rows(chat.service))
            rows = turn_rows(chat.service)
    assert texts(fake_tg, OWNER) == ["".join(ANSWER)]
    ((thinking, _, status),) = rows
    assert (thinking, status) == (
        f"I will look it up; {SECRET}.\n\nThe notes say ground level.", "answered")
    _, second = llm.chat_bodies()
    assert any(m.get("tool_calls") for m in second["messages"]), "the call went back"
    assert SECRET not in history_contents(llm)


async def test_a_reply_that_only_thinks_gets_a_plain_sentence_not_an_empty_message(
        data_dir: Path, fake_tg: FakeTelegram) -> None:
    async with FakeOpenAI() as llm:
        llm.script(ScriptedReply(chunks=(), thinking=THOUGHTS, thinking_form="tag",
                                 thinking_closed=False, finish_reason="length"))
        config = reasoning_config(data_dir, fake_tg, llm)
        async with telegram_chat(config, fake_tg, llm) as chat:
            fake_tg.push_text(chat_id=OWNER, from_id=OWNER, text="Hard question")
            await until(lambda: texts(fake_tg, OWNER))
            await until(lambda: turn_rows(chat.service))
            rows = turn_rows(chat.service)
    assert texts(fake_tg, OWNER) == [THOUGHT_CUT_REPLY]
    assert all(shown.strip() for shown in everything_shown(fake_tg, OWNER))
    assert not any(SECRET in shown for shown in everything_shown(fake_tg, OWNER))
    ((thinking, _, status),) = rows
    assert (thinking, status) == ("".join(THOUGHTS), "failed")


async def test_typing_stays_on_and_nothing_is_posted_while_the_model_thinks(
        data_dir: Path, fake_tg: FakeTelegram) -> None:
    go_on = asyncio.Event()
    async with FakeOllama() as llm:
        llm.script(thinking_reply("separate", pause_after_first=go_on))
        config = reasoning_config(data_dir, fake_tg, llm)
        async with telegram_chat(config, fake_tg, llm) as _chat:
            fake_tg.push_text(chat_id=OWNER, from_id=OWNER, text="Think first")
            await until(lambda: llm.chat_bodies())
            # Two chat actions: the indicator was refreshed while only thoughts arrived.
            await until(lambda: len(fake_tg.calls_to("sendChatAction")) >= 2, within=20)
            assert fake_tg.drafts(OWNER) == [] and texts(fake_tg, OWNER) == []
            go_on.set()
            await until(lambda: texts(fake_tg, OWNER))
    assert texts(fake_tg, OWNER) == ["".join(ANSWER)]


async def test_think_on_adds_the_thought_for_line_for_the_owner_only(
        data_dir: Path, fake_tg: FakeTelegram) -> None:
    async with FakeOllama() as llm:
        llm.script(thinking_reply("separate"), thinking_reply("separate"),
                   thinking_reply("separate"))
        config = reasoning_config(data_dir, fake_tg, llm)
        async with telegram_chat(config, fake_tg, llm) as _chat:
            fake_tg.push_text(chat_id=STRANGER, from_id=STRANGER, text="/think on")
            await until(lambda: texts(fake_tg, STRANGER))
            fake_tg.push_text(chat_id=OWNER, from_id=OWNER, text="/think on")
            await until(lambda: texts(fake_tg, OWNER))
            fake_tg.push_text(chat_id=OWNER, from_id=OWNER, text="Where do they grow?")
            await until(lambda: len(texts(fake_tg, OWNER)) == 2)
            fake_tg.push_text(chat_id=STRANGER, from_id=STRANGER, text="Where do they grow?")
            await until(lambda: len(texts(fake_tg, STRANGER)) == 2)
            fake_tg.push_text(chat_id=OWNER, from_id=OWNER, text="/think off")
            await until(lambda: len(texts(fake_tg, OWNER)) == 3)
            fake_tg.push_text(chat_id=OWNER, from_id=OWNER, text="And now?")
            await until(lambda: len(texts(fake_tg, OWNER)) == 4)
    refused, guest_reply = texts(fake_tg, STRANGER)
    assert refused == "/think is only available to the owner."
    assert guest_reply == "".join(ANSWER)
    _, with_line, _, without_line = texts(fake_tg, OWNER)
    answer, line = with_line.rsplit("\n\n", 1)
    assert answer == "".join(ANSWER)
    assert line.startswith("(thought for ") and line.endswith(")")
    assert without_line == "".join(ANSWER)


async def test_think_off_in_the_params_reaches_the_backend(data_dir: Path,
                                                         fake_tg: FakeTelegram) -> None:
    async with FakeOpenAI() as llm:
        llm.script(thinking_reply("reasoning"))
        config = reasoning_config(data_dir, fake_tg, llm, think=False)
        async with telegram_chat(config, fake_tg, llm) as chat:
            fake_tg.push_text(chat_id=OWNER, from_id=OWNER, text="Quick one")
            await until(lambda: texts(fake_tg, OWNER))
            await until(lambda: turn_rows(chat.service))
            rows = turn_rows(chat.service)
    (body,) = llm.chat_bodies()
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert texts(fake_tg, OWNER) == ["".join(ANSWER)]
    assert rows[0][:2] == (None, None)


# ---- the length marker on both platforms --------------------------------------------------------


CUT = ("The first reason is the climate, ", "and the second is the so")


async def test_a_reply_cut_by_max_tokens_carries_the_marker_on_telegram(
        data_dir: Path, fake_tg: FakeTelegram) -> None:
    async with FakeOllama() as llm:
        llm.script(ScriptedReply(chunks=CUT, finish_reason="length"),
                   ScriptedReply(chunks=("Fine.",)))
        config = reasoning_config(data_dir, fake_tg, llm, max_tokens=12)
        async with telegram_chat(config, fake_tg, llm) as _chat:
            fake_tg.push_text(chat_id=OWNER, from_id=OWNER, text="Why?")
            await until(lambda: texts(fake_tg, OWNER))
            fake_tg.push_text(chat_id=STRANGER, from_id=STRANGER, text="Why?")
            await until(lambda: texts(fake_tg, STRANGER))
    assert texts(fake_tg, OWNER) == ["".join(CUT) + CUT_MARKER]
    assert texts(fake_tg, STRANGER) == ["Fine."], "a reply that ended by itself has no marker"
    first = llm.chat_bodies()[0]
    assert first["options"]["num_predict"] == 12
    # The model's own words go back as history, without the marker.
    assert "length limit" not in history_contents(llm)


async def test_a_reply_cut_by_max_tokens_carries_the_marker_on_discord(
        data_dir: Path, fake_discord: FakeDiscord) -> None:
    async with FakeOllama() as llm:
        llm.script(ScriptedReply(chunks=CUT, finish_reason="length"))
        config = make_config(data_dir, gateway={"providers": {"ollama": {
            "type": "ollama", "base_url": llm.base_url,
            "models": [{"id": llm.models[0], "max_tokens": 12}]}}},
            agents={"default": {"active_model": f"ollama/{llm.models[0]}"}})
        async with open_service(config, voice=False) as service, serving(service):
            msg = fake_discord.dm(author_id=STRANGER_ID, author_name="stranger",
                                  content="Why?")
            await settled(service, msg)
    (reply,) = bot_messages(fake_discord, fake_discord.dm_channel_id(STRANGER_ID))
    assert reply["content"] == "".join(CUT) + CUT_MARKER
    assert llm.chat_bodies()[0]["options"]["num_predict"] == 12
