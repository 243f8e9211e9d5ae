"""The context guard and running summaries, through the real gateway and store against a fake
Ollama that counts every prompt with its own tokenizer and refuses what does not fit."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from bot.config import Config, GenerationParams, ModelSpec, ProviderSpec
from bot.errors import ConfigError, ContextOverflow
from bot.events import MessageStatus
from bot.prompt_window import CUT_NOTE, SUMMARY_HEADING
from bot.providers import ChatMessage, StreamEnd
from bot.providers.ollama import OllamaProvider
from bot.service import Service, open_service
from bot.summaries import SUMMARY_PROMPT
from persona.personas import ADMIN_PROMPT
from tests.fakes.llm_backends import FakeOllama, Json, ScriptedReply, ToolCall, prompt_tokens_of
from tests.support.chat import Chat
from tests.support.helpers import db_rows, make_config, sent_messages, until
from tests.support.telegram import OWNER, Running, texts

WINDOW = 1024
MAX_TOKENS = 128
LOCKER = "Turn 1: please remember that my locker code is 4417."
FILLER = "I walked past the old mill this morning and the river was high. "
WORDS = ("amber", "birch", "cobalt", "dune", "ember", "fjord", "garnet", "heath")
SUMMARY_MARK = SUMMARY_PROMPT.split(".")[0]


def context_config(data_dir: Path, fake: FakeOllama, window: int = WINDOW,
                   max_tokens: int = MAX_TOKENS, capabilities: tuple[str, ...] = (),
                   **context: Any) -> Config:
    provider = {"type": "ollama", "base_url": fake.base_url, "first_token_timeout": 5,
                "read_timeout": 5,
                "models": [{"id": fake.models[0], "context_window": window,
                            "max_tokens": max_tokens, "capabilities": list(capabilities)}]}
    return make_config(data_dir, gateway={"providers": {"ollama": provider}},
                       agents={"default": {"active_model": f"ollama/{fake.models[0]}"}},
                       context=context)


def turn_text(n: int) -> str:
    """Short messages of three lengths, and now and then one that takes half the window: the
    guard must then leave older turns out before a summary can catch up."""
    if n == 1:
        return LOCKER
    length = 18 if n % 37 == 0 else n % 3 + 1
    return f"Turn {n}: today's word is {WORDS[n % len(WORDS)]}. " + FILLER * length


def reply_text(n: int) -> str:
    return f"Noted turn {n}."


def is_summary(body: Json) -> bool:
    return str(body["messages"][0]["content"]).startswith(SUMMARY_MARK)


class Backend:
    """The model behind the fake: answers each turn, and writes summaries that keep the
    locker code while it is in what they are given. Summaries fail from turn `fail_from` on
    (down, empty and overlong in turn); `hold` holds back the first summary request."""

    def __init__(self, fail_from: int | None = None, hold: asyncio.Event | None = None) -> None:
        self.fail_from = fail_from
        self.hold = hold
        self.turn = 0
        self.summary_requests = 0
        self.failures = 0
        # (turn in progress, summary requests so far) at each turn's request
        self.order: list[tuple[str, int]] = []

    def __call__(self, body: Json) -> ScriptedReply:
        messages = body["messages"]
        if is_summary(body):
            self.summary_requests += 1
            self.order.append(("summary", self.turn))
            if self.fail_from is not None and self.turn >= self.fail_from:
                self.failures += 1
                return (ScriptedReply(status=503), ScriptedReply(chunks=()),
                        ScriptedReply(chunks=("on and on " * 60,), finish_reason="length"),
                        )[self.failures % 3]
            text = str(messages[-1]["content"])
            newest = max(int(n) for n in re.findall(r"Turn (\d+)", text))
            fact = "The user's locker code is 4417. " if "4417" in text else ""
            hold = self.hold if self.summary_requests == 1 else None
            return ScriptedReply(chunks=(fact, f"Daily words were shared through turn {newest}."),
                                 hold=hold)
        found = re.match(r"Turn (\d+)", str(messages[-1]["content"]))
        self.turn = int(found.group(1)) if found else self.turn
        self.order.append(("turn", self.turn))
        return ScriptedReply(chunks=("Noted turn", f" {self.turn}."))


def stored_summary(service: Service) -> tuple[str, int]:
    rows = db_rows(service, "select summary, summary_through from sessions "
                            "where closed_at is null and platform = 'console'")
    assert len(rows) == 1
    summary, through = rows[0]
    assert isinstance(summary, str) and isinstance(through, int)
    return summary, through


def turn_bodies(fake: FakeOllama) -> list[Json]:
    return [b for b in fake.chat_bodies() if not is_summary(b)]


def assert_never_over_the_window(fake: FakeOllama, window: int = WINDOW) -> int:
    """Every chat request fitted: none refused or shortened, none leaving the reply less room
    than it asked for. Returns the largest request (prompt and reply budget)."""
    assert fake.measured, "the fake counted nothing"
    assert [m for m in fake.measured if m.outcome != "ok"] == []
    largest = max(m.total for m in fake.measured)
    assert largest <= window, f"a request took {largest} of {window} tokens"
    return largest


def assert_newest_turns_verbatim(body: Json, turn: int) -> None:
    """The request for `turn` ends with its message after an unbroken run of the newest turns
    before it: at least the last two exchanges, only the oldest ones missing."""
    contents = [m["content"] for m in body["messages"][1:]]
    assert contents[-1] == turn_text(turn)
    earlier = contents[:-1]
    assert len(earlier) % 2 == 0 and len(earlier) >= 2 * min(2, turn - 1), (turn, len(earlier))
    first = turn - len(earlier) // 2
    expected = [text for n in range(first, turn) for text in (turn_text(n), reply_text(n))]
    assert earlier == expected, f"turn {turn}: the history is not the newest turns, whole"


async def test_two_hundred_turns_stay_in_the_window_and_keep_the_thread(data_dir: Path) -> None:
    async with FakeOllama(count_tokens=True) as fake:
        backend = Backend()
        fake.respond_with(backend)
        async with open_service(context_config(data_dir, fake), voice=False) as service:
            chat = Chat(service)
            summaries: list[tuple[str, int]] = []
            for n in range(1, 201):
                summary_before, _ = stored_summary(service) if n > 1 else ("", 0)
                result, text = await chat.say(turn_text(n))
                assert result.status is MessageStatus.ANSWERED and text == reply_text(n)
                body = turn_bodies(fake)[-1]
                assert_newest_turns_verbatim(body, n)
                system = str(body["messages"][0]["content"])
                if summary_before:
                    # The summary as stored when this turn began is what the request carried.
                    assert system.endswith(f"{SUMMARY_HEADING}\n{summary_before}")
                await service.gateway.context.idle()
                current = stored_summary(service)
                if current[0] and (not summaries or summaries[-1] != current):
                    summaries.append(current)
            meter = service.gateway.context.meters["ollama/llama3.2:3b"]
            largest = assert_never_over_the_window(fake)
            print(f"\n200 turns: largest request {largest} of {WINDOW} tokens; "
                  f"{backend.summary_requests} summary requests; {len(summaries)} summaries; "
                  f"estimate corrected by {meter.ratio:.2f}")
    assert len(summaries) >= 10, "the summary is created, then updated as the talk goes on"
    throughs = [through for _, through in summaries]
    assert throughs == sorted(set(throughs)), "each update reaches further, never back"
    assert all("4417" in summary for summary, _ in summaries), "turn 1's fact is never lost"
    final, _ = summaries[-1]
    newest = re.search(r"through turn (\d+)", final)
    assert newest is not None and int(newest.group(1)) >= 190
    assert backend.summary_requests == len(summaries)
    # The fake's tokenizer is denser than the estimate: the counts it reported were learned.
    assert meter.learned and meter.ratio > 1.0


@pytest.mark.parametrize("fail_from", [1, 40])
async def test_summaries_that_always_fail_lose_only_the_oldest_turns(
        data_dir: Path, fail_from: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    turns = 120
    async with FakeOllama(count_tokens=True) as fake:
        backend = Backend(fail_from=fail_from)
        fake.respond_with(backend)
        async with open_service(context_config(data_dir, fake), voice=False) as service:
            chat = Chat(service)
            kept_summary: tuple[str, int] = ("", 0)
            for n in range(1, turns + 1):
                result, text = await chat.say(turn_text(n))
                assert result.status is MessageStatus.ANSWERED and text == reply_text(n)
                assert_newest_turns_verbatim(turn_bodies(fake)[-1], n)
                await service.gateway.context.idle()
                if n == fail_from - 1:
                    kept_summary = stored_summary(service)
                if n >= fail_from:
                    # The summary from before the failures stays, stored and sent.
                    assert stored_summary(service) == kept_summary
                    if kept_summary[0]:
                        system = str(turn_bodies(fake)[-1]["messages"][0]["content"])
                        assert system.endswith(kept_summary[0])
            stored = db_rows(service, "select count(*) from messages")
        assert_never_over_the_window(fake)
    assert stored == [(2 * turns,)], "every turn stays in the store"
    if fail_from > 1:
        assert "4417" in kept_summary[0]
    # Tried again on later turns, with growing gaps: never twice between two turns.
    assert 3 <= backend.failures <= 14, backend.failures
    between = [kind for kind, _ in backend.order]
    assert "summary,summary" not in ",".join(between)
    failed = [r.getMessage() for r in caplog.records if "summarizing failed" in r.getMessage()]
    assert len(failed) == backend.failures
    assert any("left out of this request" in r.getMessage() for r in caplog.records)
    print(f"\nsummaries failing from turn {fail_from}: {backend.failures} failed summary "
          f"requests over {turns} turns")


async def test_the_next_reply_never_waits_for_a_summary(data_dir: Path) -> None:
    hold = asyncio.Event()
    async with FakeOllama(count_tokens=True) as fake:
        backend = Backend(hold=hold)
        fake.respond_with(backend)
        async with open_service(context_config(data_dir, fake), voice=False) as service:
            chat = Chat(service)
            keeper = service.gateway.context
            n = 0
            while backend.summary_requests == 0:
                n += 1
                await chat.say(turn_text(n))
                await until(lambda: backend.summary_requests > 0 or not keeper.working,
                            "a summary request, or the keeper at rest")
            # The first summary is being written (held by the fake) when the next message comes.
            result, text = await chat.say(turn_text(n + 1))
            assert result.status is MessageStatus.ANSWERED and text == reply_text(n + 1)
            assert not hold.is_set()
            assert stored_summary(service) == ("", 0), "the summary being written gave way"
            assert backend.order[-2:] == [("summary", n), ("turn", n + 1)]
            hold.set()
            await keeper.idle()
            summary, through = stored_summary(service)
        assert summary and through > 0, "written again once the reply was over"
        assert backend.summary_requests == 2
        assert backend.order[-1] == ("summary", n + 1)


async def test_a_stop_cancels_the_summary_being_written_and_stores_nothing(
        data_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    never = asyncio.Event()  # the summary request is never answered
    async with FakeOllama(count_tokens=True) as fake:
        backend = Backend(hold=never)
        fake.respond_with(backend)
        config = context_config(data_dir, fake)
        async with open_service(config, voice=False) as service:
            chat = Chat(service)
            keeper = service.gateway.context
            n = 0
            while backend.summary_requests == 0:
                n += 1
                await chat.say(turn_text(n))
                await until(lambda: backend.summary_requests > 0 or not keeper.working,
                            "a summary request, or the keeper at rest")
            assert keeper.working
        # Leaving the service settled the gateway: the summary was cancelled before the model
        # went away, not cut off by it (that would be a failure, and would wait on the model).
        assert not keeper.working
        assert not [r for r in caplog.records if "summarizing failed" in r.getMessage()]
        async with open_service(config, voice=False) as reopened:
            assert stored_summary(reopened) == ("", 0)
    assert not never.is_set()

async def test_a_message_too_long_for_the_window_is_cut_and_the_reply_says_so(
        data_dir: Path) -> None:
    huge = "Please read all of this. " + "The quick brown fox jumps over the lazy dog. " * 400
    async with FakeOllama(count_tokens=True) as fake:
        fake.respond_with(Backend())
        async with open_service(context_config(data_dir, fake), voice=False) as service:
            chat = Chat(service)
            await chat.say(turn_text(1))
            result, text = await chat.say(huge)
            assert result.status is MessageStatus.ANSWERED
            found = re.match(r"\(Your message was too long for me to read whole: I read the "
                             r"first ([\d,]+) of its ([\d,]+) characters\.\)\n\n", text)
            assert found is not None, text
            read, total = (int(g.replace(",", "")) for g in found.groups())
            assert total == len(huge) and 0 < read < total
            sent = turn_bodies(fake)[-1]["messages"][-1]["content"]
            assert sent == huge[:read] + CUT_NOTE
            # The whole message is kept; later requests still fit around it.
            assert (huge,) in db_rows(service, "select content from messages")
            for n in (3, 4, 5):
                result, _ = await chat.say(turn_text(n))
                assert result.status is MessageStatus.ANSWERED
                await service.gateway.context.idle()
        assert_never_over_the_window(fake)
    # The long message was summarized from its beginning, cut to fit that request too.
    folded = [b["messages"][-1]["content"] for b in fake.chat_bodies() if is_summary(b)]
    assert any("Please read all of this." in f and "[...]" in f for f in folded)


async def test_tool_results_that_outgrow_the_window_are_cut(data_dir: Path) -> None:
    window = 4096
    async with FakeOllama(count_tokens=True) as fake:
        config = context_config(data_dir, fake, window=window, max_tokens=256,
                                capabilities=("tools",))
        workspace = data_dir / "workspaces" / "admin"
        workspace.mkdir(parents=True)
        (workspace / "log.txt").write_text("line of a long log file 123456\n" * 500)
        fake.script(ScriptedReply.calling(ToolCall("file_read", {"path": "log.txt"})),
                    ScriptedReply(chunks=("The log is long.",)))
        async with open_service(config, voice=False) as service:
            result, text = await Chat(service).say("What does log.txt say?")
        assert result.status is MessageStatus.ANSWERED and text == "The log is long."
        assert_never_over_the_window(fake, window)
    last = fake.chat_bodies()[-1]["messages"]
    assert last[-1]["role"] == "tool" and last[-1]["content"].endswith(CUT_NOTE)
    assert "line of a long log file" in last[-1]["content"]


async def test_the_counting_fake_refuses_what_does_not_fit_as_ollama_does(
        data_dir: Path) -> None:
    # What the guard keeps hearthbot from ever sending, so the assertions above can fail.
    async with FakeOllama(count_tokens=True) as fake:
        provider = OllamaProvider("ollama", ProviderSpec(type="ollama", models=(),
                                                         base_url=fake.base_url))
        model = ModelSpec(id="llama3.2:3b", context_window=256, max_tokens=16)
        with pytest.raises(ContextOverflow, match="exceeds the available context size"):
            await _drain(provider.stream(model, [ChatMessage("user", "word " * 400)],
                                         GenerationParams()))
        deltas = await _drain(provider.stream(model, [ChatMessage("user", "Hi there.")],
                                              GenerationParams()))
        await provider.close()
    end = deltas[-1]
    assert isinstance(end, StreamEnd)
    assert [m.outcome for m in fake.measured] == ["refused", "ok"]
    # The count the backend reports is its own tokenizer's, for the guard to learn from.
    assert end.prompt_tokens == fake.measured[-1].prompt == prompt_tokens_of(
        {"messages": [{"role": "user", "content": "Hi there."}]}) == 3 + 4 + 4


async def test_context_settings_are_checked(data_dir: Path) -> None:
    assert make_config(data_dir, context={"summarize_at": 0.9}).context.summarize_at == 0.9
    for bad, path in (({"summarize_at": 1.5}, "context.summarize_at"),
                      ({"keep_share": 0.5, "summary_share": 0.3}, "context.keep_share"),
                      ({"budget": 3}, "context.budget")):
        with pytest.raises(ConfigError) as caught:
            make_config(data_dir, context=bad)
        assert caught.value.path == path


async def _drain(stream: Any) -> list[object]:
    return [item async for item in stream]


async def test_compact_and_context_over_telegram(running: Running) -> None:
    tg, llm = running.tg, running.llm
    menu = [c.params.get("commands") for c in tg.calls_to("setMyCommands")]
    assert any("compact" in str(m) and "context" in str(m) for m in menu)

    async def say(text: str) -> str:
        before = len(texts(tg, OWNER))
        tg.push_text(chat_id=OWNER, from_id=OWNER, text=text)
        await until(lambda: len(texts(tg, OWNER)) == before + 1, f"the answer to {text}")
        return texts(tg, OWNER)[-1]

    for text in ("Hi, I'm Ada.", "I live in Lyon.", "I keep bees."):
        await say(text)
    command = say

    shown = await command("/context")
    # The fake here always reports 12 prompt tokens: too few to believe, so nothing is learned.
    assert re.match(r"Context: \d+ of 8,192 tokens \(\d+%\), estimated \(no usable count "
                    r"from the backend yet\)\.", shown), shown
    assert "Set aside: 2,048 for the reply and 410 as a safety margin" in shown
    assert "Summary: none yet." in shown and "Turns kept word for word: 3." in shown
    requests = len(llm.chat_bodies())

    llm.script(ScriptedReply(chunks=("Ada lives in Lyon.",)))
    compacted = await command("/compact")
    assert re.fullmatch(r"Compacted: 2 older messages folded into the summary \(now \d+ "
                        r"tokens\)\. The last two exchanges stay word for word\.", compacted)
    summary_request = llm.chat_bodies()[requests]
    assert is_summary(summary_request)
    assert "User: Hi, I'm Ada." in summary_request["messages"][-1]["content"]
    assert "I live in Lyon." not in summary_request["messages"][-1]["content"]

    shown = await command("/context")
    assert re.search(r"Summary: \d+ tokens \(18 characters\) of earlier turns\.", shown), shown
    assert "Turns kept word for word: 2." in shown

    await say("What do I keep?")
    assert len(llm.chat_bodies()) == requests + 2
    sent = sent_messages(llm)
    assert sent[0]["content"] == f"{ADMIN_PROMPT}\n\n{SUMMARY_HEADING}\nAda lives in Lyon."
    assert [m["content"] for m in sent[1:]] == [
        "I live in Lyon.", "Hello there.", "I keep bees.", "Hello there.", "What do I keep?"]

    await command("/new")
    await say("Hello again.")
    assert await command("/compact") == (
        "Nothing to compact yet: the conversation is short enough to keep whole (the last "
        "two exchanges always stay word for word).")
