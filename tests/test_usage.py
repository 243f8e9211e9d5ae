"""Usage, cost and budgets end to end: the real Telegram client, fake model servers that report
token counts as the real ones do, the real store, and the real `hearthbot usage` command."""

from __future__ import annotations

import asyncio
import functools
import json
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from bot.config import CostSpec
from bot.errors import ConfigError
from bot.events import MessageStatus
from bot.service import open_store
from bot.store.history import TurnRecord, open_conversation, save_turn
from bot.store.tables import utcnow
from bot.store.usage import Tokens, cost_of, prices, resets_in, usage
from tests.fakes.llm_backends import FakeOllama, FakeOpenAI, ScriptedReply, ToolCall
from tests.fakes.telegram import FakeTelegram
from tests.support.helpers import db_rows, make_config, until
from tests.support.telegram import OWNER, STRANGER, Running, start, texts

CLOUD = "cloud/gpt-test"
HOME = "home/llama3.2:3b"
PRICE = {"input": 2.5, "output": 10.0, "cached": 1.25}


def raw_config(data_dir: Path, tg: FakeTelegram, openai: FakeOpenAI, ollama: FakeOllama,
               **guest: Any) -> dict[str, Any]:
    """The admin talks to a priced remote model, the guest to a local one (cost 0)."""
    return {
        "data_dir": str(data_dir),
        "gateway": {"log_level": "debug", "providers": {
            "cloud": {"type": "openai-compat", "base_url": openai.base_url,
                      "first_token_timeout": 5,
                      "models": [{"id": "gpt-test", "capabilities": ["tools"],
                                  "cost": PRICE}]},
            "home": {"type": "ollama", "base_url": ollama.base_url, "first_token_timeout": 5,
                     "models": [{"id": "llama3.2:3b"}]}}},
        "agents": {"default": {"active_model": HOME}, "instances": {
            "admin": {"role": "admin", "model": CLOUD},
            "guest": {"role": "guest", "model": HOME, **guest}}},
        "channels": {"telegram": {"token": tg.token, "api_base_url": tg.base_url,
                                  "file_base_url": tg.base_file_url, "poll_timeout": 2,
                                  "edit_interval": 0.3, "draft_interval": 0.05}},
    }


@pytest.fixture
async def fake_cloud() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(models=("gpt-test",)) as fake:
        yield fake


@asynccontextmanager
async def serve(raw: dict[str, Any], tg: FakeTelegram,
                ollama: FakeOllama) -> AsyncIterator[Running]:
    async for running in start(make_config(Path(raw["data_dir"]), **{
            k: v for k, v in raw.items() if k != "data_dir"}), tg, ollama):
        yield running


async def hearthbot(config_file: Path, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "--config", str(config_file), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL)
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def turn_rows(running: Running) -> list[tuple[object, ...]]:
    return db_rows(running.service, "select id from turns")


async def test_usage_totals_equal_what_the_backends_reported(
        data_dir: Path, fake_tg: FakeTelegram, fake_cloud: FakeOpenAI,
        fake_ollama: FakeOllama, tmp_path: Path) -> None:
    raw = raw_config(data_dir, fake_tg, fake_cloud, fake_ollama)
    # The owner's first turn takes two requests (a tool call, then the answer): the turn's
    # usage is their sum. Counts are the fakes' own, as their usage fields report them.
    fake_cloud.script(
        ScriptedReply.calling(ToolCall("knowledge_lookup", {"query": "plans"}),
                              prompt_tokens=300, cached_tokens=120, completion_tokens=20),
        ScriptedReply(chunks=("Nothing", " noted."), prompt_tokens=340, cached_tokens=300,
                      completion_tokens=5),
        ScriptedReply(chunks=("Sure.",), prompt_tokens=410, cached_tokens=0,
                      completion_tokens=2))
    fake_ollama.script(ScriptedReply(chunks=("Hi",), prompt_tokens=50, completion_tokens=9),
                       ScriptedReply(chunks=("Bye",), prompt_tokens=70, completion_tokens=11))
    async with serve(raw, fake_tg, fake_ollama) as running:
        running.tg.push_text(chat_id=OWNER, from_id=OWNER, text="What are my plans?")
        await until(lambda: len(texts(running.tg, OWNER)) == 1, "the owner's first answer")
        running.tg.push_text(chat_id=STRANGER, from_id=STRANGER, text="Hello")
        await until(lambda: len(texts(running.tg, STRANGER)) == 1, "the guest's first answer")
        running.tg.push_text(chat_id=OWNER, from_id=OWNER, text="Thanks")
        await until(lambda: len(texts(running.tg, OWNER)) == 2, "the owner's second answer")
        running.tg.push_text(chat_id=STRANGER, from_id=STRANGER, text="Goodbye")
        await until(lambda: len(texts(running.tg, STRANGER)) == 2, "the guest's second answer")
        await until(lambda: len(turn_rows(running)) == 4, "four turns recorded")
        assert db_rows(running.service, "select platform, chat_id, cached_tokens from turns "
                                        "order by id") == [
            ("telegram", str(OWNER), 420), ("telegram", str(STRANGER), None),
            ("telegram", str(OWNER), 0), ("telegram", str(STRANGER), None)]
    assert len(fake_cloud.chat_bodies()) == 3 and len(fake_ollama.requests_to("/api/chat")) == 2

    cloud = Tokens(prompt=300 + 340 + 410, completion=20 + 5 + 2, cached=120 + 300, turns=2)
    home = Tokens(prompt=50 + 70, completion=9 + 11, cached=0, turns=2)
    cloud_cost = ((cloud.prompt - cloud.cached) * 2.5 + cloud.cached * 1.25
                  + cloud.completion * 10.0) / 1e6
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(raw))

    def figures(line: dict[str, Any]) -> tuple[Any, ...]:
        return (line["key"], line["turns"], line["prompt_tokens"], line["cached_tokens"],
                line["completion_tokens"], line["total_tokens"])

    status, out, err = await hearthbot(config_file, "usage", "--json")
    assert status == 0, err
    report = json.loads(out)
    assert [figures(line) for line in report["lines"]] == [
        (CLOUD, 2, cloud.prompt, cloud.cached, cloud.completion, cloud.total),
        (HOME, 2, home.prompt, 0, home.completion, home.total)]
    assert report["lines"][0]["cost"] == pytest.approx(cloud_cost)
    assert report["lines"][1]["cost"] == 0  # a local model without a price costs nothing
    total = cloud + home
    assert figures(report["total"]) == ("total", 4, total.prompt, total.cached,
                                        total.completion, total.total)

    status, out, _ = await hearthbot(config_file, "usage", "--by", "persona", "--json")
    by_persona = {line["key"]: line for line in json.loads(out)["lines"]}
    assert by_persona["admin"]["total_tokens"] == cloud.total
    assert by_persona["admin"]["cost"] == pytest.approx(cloud_cost)
    assert by_persona["guest"]["total_tokens"] == home.total

    status, out, _ = await hearthbot(config_file, "usage", "--by", "chat", "--since", "24h",
                                     "--json")
    by_chat = {line["key"]: line["total_tokens"] for line in json.loads(out)["lines"]}
    assert by_chat == {f"telegram:{OWNER}": cloud.total, f"telegram:{STRANGER}": home.total}

    status, out, _ = await hearthbot(config_file, "usage", "--since", "2999-01-01", "--json")
    assert json.loads(out)["lines"] == []

    status, out, _ = await hearthbot(config_file, "usage")
    assert status == 0
    table = out.splitlines()
    assert table[0].split() == ["model", "turns", "prompt", "cached", "completion", "total",
                                "cost"]
    assert table[2].split() == [CLOUD, "2", f"{cloud.prompt:,}", f"{cloud.cached:,}",
                                f"{cloud.completion:,}", f"{cloud.total:,}",
                                f"{cloud_cost:.4f}"]
    assert table[5].split()[:2] == ["total", "4"]


async def test_a_model_no_longer_configured_has_an_unknown_cost(data_dir: Path) -> None:
    async with open_store(make_config(data_dir)) as store:
        for model, tokens in (("gone/old-model", 1000), ("here/model", 2000)):
            session_id = (await open_conversation(store, "telegram", "7", "guest")).session_id
            now = utcnow()
            await save_turn(store, TurnRecord(
                inbox_id=None, session_id=session_id, persona="guest", model=model,
                received_at=now, first_token_at=now, done_at=now, prompt_tokens=tokens,
                completion_tokens=10, status=MessageStatus.ANSWERED, platform="telegram",
                chat_id="7"))
        priced = {"here/model": CostSpec(input=1.0, output=2.0)}
        by_model = {line.key: line.cost for line in await usage(store, priced, since=None)}
        assert by_model == {"here/model": pytest.approx(cost_of(Tokens(2000, 10), priced[
            "here/model"])), "gone/old-model": None}
        # A persona that used it: its cost is unknown, not the known part passed off as all.
        (guest,) = await usage(store, priced, since=None, by="persona")
        assert guest.cost is None and guest.tokens.total == 3020


def test_the_reset_time_reads_as_a_person_says_it() -> None:
    assert resets_in(datetime(2026, 12, 2, 20, 48)) == "00:00 UTC, in 3 h 12 min"
    assert resets_in(datetime(2026, 12, 2, 23, 35, 30)) == "00:00 UTC, in 24 min"
    assert resets_in(datetime(2026, 12, 2, 23, 59, 59)) == "00:00 UTC, in 1 min"


RESET = re.compile(r"it resets at 00:00 UTC, in (\d+ h )?\d+ min\.$")


async def test_a_spent_budget_refuses_the_next_turn_and_commands_still_work(
        data_dir: Path, fake_tg: FakeTelegram, fake_cloud: FakeOpenAI,
        fake_ollama: FakeOllama) -> None:
    raw = raw_config(data_dir, fake_tg, fake_cloud, fake_ollama,
                     budget={"daily_tokens": 100})
    fake_ollama.script(ScriptedReply(chunks=("Hi there.",), prompt_tokens=80,
                                     completion_tokens=30))
    async with serve(raw, fake_tg, fake_ollama) as running:
        running.tg.push_text(chat_id=STRANGER, from_id=STRANGER, text="Hello")
        await until(lambda: texts(running.tg, STRANGER) == ["Hi there."])
        await until(lambda: len(turn_rows(running)) == 1, "the turn recorded")
        asked = len(running.llm.requests_to("/api/chat"))

        update = running.tg.push_text(chat_id=STRANGER, from_id=STRANGER, text="And again?")
        await until(lambda: len(texts(running.tg, STRANGER)) == 2, "the refusal")
        refusal = texts(running.tg, STRANGER)[1]
        assert refusal.startswith("I've used up today's allowance here, so I can't answer "
                                  "until it resets")
        assert RESET.search(refusal), refusal
        assert len(running.llm.requests_to("/api/chat")) == asked  # the model was not asked
        # Closed once the sentence is out: failed, so no restart answers it again.
        message_id = str(update["message"]["message_id"])
        await until(lambda: db_rows(running.service, "select state from inbox where "
                                    f"message_id = '{message_id}'") == [("failed",)],
                    "the refused message closed as failed")

        # Commands are no model turn: they still answer.
        running.tg.push_text(chat_id=STRANGER, from_id=STRANGER, text="/help")
        await until(lambda: len(texts(running.tg, STRANGER)) == 3, "the help text")
        assert "/new" in texts(running.tg, STRANGER)[2]
        # The owner's persona has no budget and is answered as ever.
        fake_cloud.script(ScriptedReply(chunks=("Yes, owner.",)))
        running.tg.push_text(chat_id=OWNER, from_id=OWNER, text="Still there?")
        await until(lambda: texts(running.tg, OWNER) == ["Yes, owner."])
        # Nothing was answered twice, nothing is left waiting.
        assert len(texts(running.tg, STRANGER)) == 3
        await until(lambda: db_rows(running.service, "select state from inbox where state = "
                                    "'received'") == [], "every message closed")


async def test_a_cost_budget_counts_the_priced_model(
        data_dir: Path, fake_tg: FakeTelegram, fake_cloud: FakeOpenAI,
        fake_ollama: FakeOllama) -> None:
    # The guest on the priced model: 400 prompt tokens at 2.5 per million (100 of them cached,
    # at 1.25) and 80 completion at 10 per million come to 0.001675.
    raw = raw_config(data_dir, fake_tg, fake_cloud, fake_ollama, model=CLOUD,
                     budget={"daily_cost": 0.0015})
    fake_cloud.script(ScriptedReply(chunks=("Priced.",), prompt_tokens=400, cached_tokens=100,
                                    completion_tokens=80))
    async with serve(raw, fake_tg, fake_ollama) as running:
        running.tg.push_text(chat_id=STRANGER, from_id=STRANGER, text="Hello")
        await until(lambda: texts(running.tg, STRANGER) == ["Priced."])
        await until(lambda: len(turn_rows(running)) == 1, "the turn recorded")
        running.tg.push_text(chat_id=STRANGER, from_id=STRANGER, text="More?")
        await until(lambda: len(texts(running.tg, STRANGER)) == 2, "the refusal")
        assert RESET.search(texts(running.tg, STRANGER)[1])
        assert len(fake_cloud.chat_bodies()) == 1


async def test_a_summary_counts_towards_its_chats_usage(running: Running) -> None:
    tg, llm = running.tg, running.llm
    for answered, text in enumerate(("Hi, I'm Ada.", "I live in Lyon.", "I keep bees."), 1):
        llm.script(ScriptedReply(chunks=("Noted.",), prompt_tokens=100, completion_tokens=5))
        tg.push_text(chat_id=OWNER, from_id=OWNER, text=text)
        await until(functools.partial(lambda n: len(texts(tg, OWNER)) == n, answered),
                    f"the answer to {text!r}")
    llm.script(ScriptedReply(chunks=("Ada lives in Lyon.",), prompt_tokens=60,
                             completion_tokens=7))
    tg.push_text(chat_id=OWNER, from_id=OWNER, text="/compact")
    await until(lambda: len(texts(tg, OWNER)) == 4, "the compact answer")
    assert texts(tg, OWNER)[-1].startswith("Compacted:")
    await until(lambda: len(turn_rows(running)) == 4, "the summary accounted for")
    assert db_rows(running.service, "select persona, platform, chat_id, prompt_tokens, "
                                    "completion_tokens from turns where status = 'summary'") == [
        ("admin", "telegram", str(OWNER), 60, 7)]
    (chat,) = await usage(running.service.store, {}, since=None, by="chat")
    assert (chat.key, chat.tokens.turns, chat.tokens.total) == (
        f"telegram:{OWNER}", 4, 3 * 105 + 67)


@pytest.mark.parametrize(("section", "path"), [
    ({"gateway": {"providers": {"home": {"type": "ollama", "base_url": "http://127.0.0.1:1",
                                         "models": [{"id": "m", "cost": {"output": -1}}]}}},
      "agents": {"default": {"active_model": "home/m"}}},
     "gateway.providers.home.models[0].cost.output"),
    ({"agents": {"instances": {"admin": {"role": "admin"},
                               "guest": {"role": "guest", "budget": {}}}}},
     "agents.instances.guest.budget"),
    ({"agents": {"instances": {"admin": {"role": "admin"},
                               "guest": {"role": "guest", "budget": {"daily_tokens": 0}}}}},
     "agents.instances.guest.budget.daily_tokens"),
    ({"agents": {"instances": {"admin": {"role": "admin"}, "guest": {
        "role": "guest", "budget": {"daily_tokens": 10, "daily_cents": 5}}}}},
     "agents.instances.guest.budget.daily_cents"),
])
def test_prices_and_budgets_are_checked_with_their_key_path(
        data_dir: Path, section: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as raised:
        make_config(data_dir, **section)
    assert raised.value.path == path


def test_local_models_cost_nothing_by_default(data_dir: Path) -> None:
    config = make_config(data_dir)
    assert set(prices(config).values()) == {CostSpec(0.0, 0.0, 0.0)}
