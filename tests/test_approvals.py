"""Owner approval for tools under a persona's `tools.ask`: asked in the owner's DM on the
platform the call came from, run on yes only; no, silence and a stranger's press change
nothing. Telegram end to end (the real client against the fake Bot API, the real store and
gate, a scripted model), the terminal chat's y/n prompt, and the routing in between."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from adapters.console import OWNER as CONSOLE_OWNER
from adapters.console import ConsoleChat
from adapters.telegram import (
    APPROVED,
    CLOSED,
    DENIED,
    EXPIRED,
    OWNER_ONLY,
    TelegramAdapter,
)
from bot.approvals import Approvals, Question
from bot.config import BindingSpec, Config
from bot.errors import ConfigError
from bot.events import MessageStatus
from bot.service import open_service
from bot.store import Store
from bot.store.audit import ALLOWED, REFUSED, read_audit
from bot.store.bindings import add_binding
from bot.tools import ApprovalRequest
from tests.fakes.discord import FakeDiscord
from tests.fakes.llm_backends import FakeOllama, ScriptedReply, ToolCall
from tests.fakes.telegram import FakeTelegram
from tests.support.discord import serving, settled
from tests.support.helpers import make_config, sent_messages, until
from tests.support.telegram import OWNER, STRANGER, Running, start

NOTES = "the spare key is under the third flowerpot"
ANSWER = "Your notes say where the spare key is."


OWNER_ASKS = {"admin": {"role": "admin", "tools": {"ask": ["file_read"]}},
              "guest": {"role": "guest"}}


def approvals_config(data_dir: Path, fake_llm: FakeOllama, *, seconds: float = 120.0,
                     fake_tg: FakeTelegram | None = None,
                     instances: dict[str, Any] | None = None) -> Config:
    """By default the owner's persona reads files only with the owner's yes; the model can
    call tools."""
    model = {"id": fake_llm.models[0], "context_window": 8192, "max_tokens": 512,
             "capabilities": ["text", "tools"]}
    channels: dict[str, Any] = {}
    if fake_tg is not None:
        channels["telegram"] = {"token": fake_tg.token, "api_base_url": fake_tg.base_url,
                                "file_base_url": fake_tg.base_file_url, "poll_timeout": 2,
                                "draft_interval": 0.05}
    return make_config(
        data_dir,
        gateway={"approval_seconds": seconds, "providers": {"ollama": {
            "type": "ollama", "base_url": fake_llm.base_url, "first_token_timeout": 5,
            "read_timeout": 5, "models": [model]}}},
        agents={"default": {"active_model": f"ollama/{fake_llm.models[0]}"},
                "instances": instances or OWNER_ASKS},
        channels=channels,
    )


def script_reading_notes(fake: FakeOllama) -> None:
    fake.script(ScriptedReply.calling(ToolCall("file_read", {"path": "notes.md"})),
                ScriptedReply(chunks=(ANSWER,)))


def write_notes(running: Running) -> None:
    workspace = running.service.gateway.personas["admin"].workspace
    workspace.mkdir(parents=True, exist_ok=True)
    (workspace / "notes.md").write_text(NOTES + "\n")


def tool_message(fake: FakeOllama) -> str:
    """What the model was handed back for its call (in the newest request)."""
    (content,) = [m["content"] for m in sent_messages(fake) if m["role"] == "tool"]
    return str(content)


async def _running(data_dir: Path, fake_tg: FakeTelegram, fake_ollama: FakeOllama,
                   seconds: float) -> AsyncIterator[Running]:
    async for value in start(approvals_config(data_dir, fake_ollama, seconds=seconds,
                                              fake_tg=fake_tg), fake_tg, fake_ollama):
        write_notes(value)
        yield value


@pytest.fixture
async def asking(data_dir: Path, fake_tg: FakeTelegram,
                 fake_ollama: FakeOllama) -> AsyncIterator[Running]:
    async for value in _running(data_dir, fake_tg, fake_ollama, 120.0):
        yield value


@pytest.fixture
async def hurried(data_dir: Path, fake_tg: FakeTelegram,
                  fake_ollama: FakeOllama) -> AsyncIterator[Running]:
    """The owner has half a second to answer."""
    async for value in _running(data_dir, fake_tg, fake_ollama, 0.5):
        yield value


def questions(tg: FakeTelegram) -> list[dict[str, Any]]:
    """The approval questions in the owner's DM, as they read now."""
    return [m for m in tg.sent_messages(OWNER) if str(m.get("text", "")).startswith(
        "Approve a tool call?")]


async def the_question(tg: FakeTelegram) -> dict[str, Any]:
    await until(lambda: questions(tg), "the question in the owner's DM")
    (question,) = questions(tg)
    return question


def button(tg: FakeTelegram, question: dict[str, Any], label: str) -> str:
    (data,) = [str(b["callback_data"]) for b in tg.buttons(OWNER, question["message_id"])
               if b["text"] == label]
    return data


def answer_to(tg: FakeTelegram, update: dict[str, Any]) -> str | None:
    answered = tg.callback_answers.get(update["callback_query"]["id"])
    return None if answered is None else str(answered.get("text"))


def replies(tg: FakeTelegram) -> list[str]:
    return [str(m.get("text", "")) for m in tg.sent_messages(OWNER) if m not in questions(tg)]


# --- Telegram -----------------------------------------------------------------------------


async def test_approve_runs_the_call(asking: Running) -> None:
    tg, llm = asking.tg, asking.llm
    script_reading_notes(llm)
    tg.push_text(chat_id=OWNER, from_id=OWNER, text="where is the spare key?")
    question = await the_question(tg)
    text = str(question["text"])
    assert 'file_read {"path": "notes.md"}' in text
    assert "Asked by the admin persona in telegram chat 1001" in text
    assert "2 minutes" in text
    assert [b["text"] for b in tg.buttons(OWNER, question["message_id"])] == ["Approve", "Deny"]
    assert all(len(str(b["callback_data"]).encode()) <= 64
               for b in tg.buttons(OWNER, question["message_id"]))
    # The adapter asks Telegram for presses as well as messages.
    assert "callback_query" in tg.calls_to("getUpdates")[-1].params["allowed_updates"]
    assert await read_audit(asking.service.store) == [], "nothing runs before the answer"

    approve = button(tg, question, "Approve")
    press = tg.press(OWNER, question["message_id"], approve, from_id=OWNER)
    await until(lambda: ANSWER in replies(tg), "the answer")
    assert answer_to(tg, press) == APPROVED
    (settled,) = questions(tg)
    assert settled["text"].endswith("\n\n" + APPROVED)
    assert tg.buttons(OWNER, question["message_id"]) == [], "the buttons are gone"
    (row,) = await read_audit(asking.service.store)
    assert (row.persona, row.platform, row.chat_id, row.tool, row.outcome) == (
        "admin", "telegram", str(OWNER), "file_read", ALLOWED)
    assert NOTES in tool_message(llm), "the model got what the tool read"

    # A press on the settled question (a client still showing the old buttons) does nothing.
    again = tg.press(OWNER, question["message_id"], approve, from_id=OWNER, stale=True)
    await until(lambda: answer_to(tg, again) is not None, "the answer to the late press")
    assert answer_to(tg, again) == CLOSED
    assert len(await read_audit(asking.service.store)) == 1
    assert len(llm.requests_to("/api/chat")) == 2
    # Presses are not messages: nothing of them is in the inbox.
    assert await asking.service.gateway.pending("telegram") == []


async def test_deny_does_not_run_the_call(asking: Running) -> None:
    tg, llm = asking.tg, asking.llm
    llm.script(ScriptedReply.calling(ToolCall("file_read", {"path": "notes.md"})),
               ScriptedReply(chunks=("I may not read your notes.",)))
    tg.push_text(chat_id=OWNER, from_id=OWNER, text="where is the spare key?")
    question = await the_question(tg)
    press = tg.press(OWNER, question["message_id"], button(tg, question, "Deny"), from_id=OWNER)
    await until(lambda: "I may not read your notes." in replies(tg), "the answer")
    assert answer_to(tg, press) == DENIED
    (settled,) = questions(tg)
    assert settled["text"].endswith("\n\n" + DENIED)
    assert tg.buttons(OWNER, question["message_id"]) == []
    (row,) = await read_audit(asking.service.store)
    assert (row.tool, row.outcome) == ("file_read", REFUSED)
    result = tool_message(llm)
    assert "did not approve" in result and NOTES not in result


async def test_no_answer_in_time_does_not_run_the_call(hurried: Running) -> None:
    tg, llm = hurried.tg, hurried.llm
    llm.script(ScriptedReply.calling(ToolCall("file_read", {"path": "notes.md"})),
               ScriptedReply(chunks=("No answer, so I did not look.",)))
    tg.push_text(chat_id=OWNER, from_id=OWNER, text="where is the spare key?")
    question = await the_question(tg)
    assert "0.5 s" in str(question["text"])
    await until(lambda: "No answer, so I did not look." in replies(tg), "the answer")
    (settled,) = questions(tg)
    assert settled["text"].endswith("\n\n" + EXPIRED)
    assert tg.buttons(OWNER, question["message_id"]) == []
    (row,) = await read_audit(hurried.service.store)
    assert (row.tool, row.outcome) == ("file_read", REFUSED)
    assert NOTES not in tool_message(llm)


async def test_a_strangers_press_changes_nothing(asking: Running) -> None:
    tg, llm = asking.tg, asking.llm
    script_reading_notes(llm)
    tg.push_text(chat_id=OWNER, from_id=OWNER, text="where is the spare key?")
    question = await the_question(tg)
    approve = button(tg, question, "Approve")
    press = tg.press(OWNER, question["message_id"], approve, from_id=STRANGER)
    await until(lambda: answer_to(tg, press) is not None, "the answer to the press")
    assert answer_to(tg, press) == OWNER_ONLY
    assert await read_audit(asking.service.store) == []
    assert len(llm.requests_to("/api/chat")) == 1
    assert questions(tg) == [question], "the question is still open, unchanged"
    # Made-up data on the same message is no answer either.
    forged = tg.press(OWNER, question["message_id"], "approval:made-up-token:yes",
                      from_id=OWNER, stale=True)
    await until(lambda: answer_to(tg, forged) is not None, "the answer to the forged press")
    assert answer_to(tg, forged) == CLOSED
    assert await read_audit(asking.service.store) == []
    # The owner's own press still decides.
    tg.press(OWNER, question["message_id"], approve, from_id=OWNER)
    await until(lambda: ANSWER in replies(tg), "the answer")
    assert [r.outcome for r in await read_audit(asking.service.store)] == [ALLOWED]


async def test_a_guest_call_is_put_to_the_owner_not_the_guest(
        data_dir: Path, fake_tg: FakeTelegram, fake_ollama: FakeOllama) -> None:
    config = approvals_config(data_dir, fake_ollama, fake_tg=fake_tg, instances={
        "admin": {"role": "admin"}, "guest": {"role": "guest", "tools": {"ask": ["file_read"]}}})
    async for running in start(config, fake_tg, fake_ollama):
        guest = running.service.gateway.personas["guest"].workspace
        guest.mkdir(parents=True, exist_ok=True)
        (guest / "notes.md").write_text("public notes\n")
        fake_ollama.script(ScriptedReply.calling(ToolCall("file_read", {"path": "notes.md"})),
                           ScriptedReply(chunks=("Read them.",)))
        fake_tg.push_text(chat_id=STRANGER, from_id=STRANGER, text="read the notes")
        question = await the_question(fake_tg)
        assert "Asked by the guest persona in telegram chat 2002" in str(question["text"])
        assert not any(m.get("reply_markup") for m in fake_tg.sent_messages(STRANGER))
        fake_tg.press(OWNER, question["message_id"], button(fake_tg, question, "Approve"),
                      from_id=OWNER)
        await until(lambda: [str(m.get("text")) for m in fake_tg.sent_messages(STRANGER)]
                    == ["Read them."], "the guest's answer")
        (row,) = await read_audit(running.service.store)
        assert (row.persona, row.chat_id, row.outcome) == ("guest", str(STRANGER), ALLOWED)


async def test_an_owner_who_cannot_be_reached_means_no(asking: Running) -> None:
    tg, llm = asking.tg, asking.llm
    llm.script(ScriptedReply.calling(ToolCall("file_read", {"path": "notes.md"})),
               ScriptedReply(chunks=("Could not ask.",)))
    # The owner blocked the bot: the question cannot be sent.
    tg.fail_next("sendMessage", status=403)
    tg.push_text(chat_id=OWNER, from_id=OWNER, text="where is the spare key?")
    await until(lambda: "Could not ask." in replies(tg), "the answer")
    assert questions(tg) == []
    (row,) = await read_audit(asking.service.store)
    assert (row.tool, row.outcome) == ("file_read", REFUSED)
    assert NOTES not in tool_message(llm)


# --- Discord --------------------------------------------------------------------------------


async def test_discord_refuses_with_a_logged_reason(
        data_dir: Path, fake_discord: FakeDiscord, fake_ollama: FakeOllama,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="adapters.discord")
    async with open_service(approvals_config(data_dir, fake_ollama), voice=False) as service:
        await add_binding(service.store, BindingSpec(
            persona="admin", platform="discord", chat_kind="dm",
            peer=str(fake_discord.owner_id)))
        workspace = service.gateway.personas["admin"].workspace
        workspace.mkdir(parents=True, exist_ok=True)
        (workspace / "notes.md").write_text(NOTES + "\n")
        script_reading_notes(fake_ollama)
        async with serving(service):
            msg = fake_discord.dm(author_id=fake_discord.owner_id, author_name="owner",
                                  content="where is the spare key?")
            assert await settled(service, msg) == MessageStatus.ANSWERED
        (row,) = await read_audit(service.store)
        assert (row.platform, row.tool, row.outcome) == ("discord", "file_read", REFUSED)
    assert NOTES not in tool_message(fake_ollama)
    assert "cannot be asked to approve tool calls on Discord yet" in caplog.text


# --- the terminal chat ----------------------------------------------------------------------


async def test_console_asks_y_or_n_and_only_yes_runs(data_dir: Path,
                                                     fake_ollama: FakeOllama) -> None:
    prompts: list[str] = []
    typed = iter(["y", "n", "", "yes please"])

    def read_line(prompt: str) -> str:
        prompts.append(prompt)
        return next(typed)

    async with open_service(approvals_config(data_dir, fake_ollama), voice=False) as service:
        workspace = service.gateway.personas["admin"].workspace
        workspace.mkdir(parents=True, exist_ok=True)
        (workspace / "notes.md").write_text(NOTES + "\n")
        out, err = io.StringIO(), io.StringIO()
        chat = ConsoleChat(service.gateway, sender=CONSOLE_OWNER, out=out, err=err,
                           read_line=read_line)
        outcomes = []
        for _ in range(4):
            script_reading_notes(fake_ollama)
            await chat.ask("where is the spare key?")
            outcomes.append(NOTES in tool_message(fake_ollama))
        assert outcomes == [True, False, False, False], "only y or yes is a yes"
        assert prompts == ['Allow tool file_read with {"path": "notes.md"}? [y/N] '] * 4
        assert [r.outcome for r in await read_audit(service.store)] == [
            ALLOWED, REFUSED, REFUSED, REFUSED]
        assert out.getvalue().count(ANSWER) == 4
        # Outside a chat nobody is asked at the terminal.
        assert service.gateway.approvals.asker("console") is None


# --- routing --------------------------------------------------------------------------------


def request(platform: str = "telegram", chat_id: str = "77") -> ApprovalRequest:
    return ApprovalRequest(persona="admin", platform=platform, chat_id=chat_id,
                           tool="shell_exec", arguments={"command": "ls"})


async def test_the_owner_is_found_in_the_binding_table_and_asked_there(store: Store) -> None:
    approvals = Approvals(store, {"admin": "admin", "helper": "admin", "guest": "guest"},
                          seconds=7)
    asked: list[Question] = []

    async def ask(question: Question) -> bool:
        asked.append(question)
        return True

    for spec in (BindingSpec(persona="guest", platform="telegram", chat_kind="dm", peer="5"),
                 BindingSpec(persona="admin", platform="telegram", chat_kind="group",
                             group="-9"),
                 BindingSpec(persona="admin", platform="telegram", chat_kind="dm", peer="42"),
                 BindingSpec(persona="helper", platform="telegram", chat_kind="dm", peer="77"),
                 BindingSpec(persona="admin", platform="discord", chat_kind="dm", peer="8")):
        await add_binding(store, spec)
    with approvals.asking("telegram", ask):
        assert await approvals.approve(request(chat_id="-100"))
        assert await approvals.approve(request(chat_id="77"))
    assert [(q.owner, q.seconds) for q in asked] == [("42", 7), ("77", 7)]
    assert asked[0].arguments == '{"command": "ls"}'


async def test_no_owner_no_asker_or_a_failing_asker_mean_no(
        store: Store, caplog: pytest.LogCaptureFixture) -> None:
    approvals = Approvals(store, {"admin": "admin", "guest": "guest"})
    asked: list[Question] = []

    async def ask(question: Question) -> bool:
        asked.append(question)
        return True

    async def broken(question: Question) -> bool:
        raise RuntimeError("the platform fell over")

    caplog.set_level(logging.INFO, logger="bot.approvals")
    with approvals.asking("telegram", ask):
        assert not await approvals.approve(request())
    assert asked == [] and "no owner is bound on telegram" in caplog.text
    await add_binding(store, BindingSpec(persona="admin", platform="telegram", chat_kind="dm",
                                         peer="42"))
    assert not await approvals.approve(request())
    assert "no way to ask the owner on telegram" in caplog.text
    with approvals.asking("telegram", ask):
        with approvals.asking("telegram", broken):
            assert not await approvals.approve(request())
        # The inner asker's registration is gone, the outer one's stays.
        assert await approvals.approve(request())
    assert len(asked) == 1
    assert approvals.asker("telegram") is None


async def test_the_adapter_registers_while_it_serves(
        data_dir: Path, fake_tg: FakeTelegram, fake_ollama: FakeOllama) -> None:
    config = approvals_config(data_dir, fake_ollama, fake_tg=fake_tg)
    async with open_service(config, voice=False) as service:
        assert config.channels.telegram is not None
        adapter = TelegramAdapter(config.channels.telegram, service.gateway)
        assert service.gateway.approvals.asker("telegram") is None
        task = asyncio.create_task(adapter.serve())
        await until(adapter.ready.is_set, "the adapter to start")
        assert service.gateway.approvals.asker("telegram") == adapter.ask_owner
        await adapter.stop()
        await task
        assert service.gateway.approvals.asker("telegram") is None


def test_the_time_to_answer_is_configured_and_must_be_positive(data_dir: Path) -> None:
    assert make_config(data_dir).gateway.approval_seconds == 120
    assert make_config(data_dir, gateway={"approval_seconds": 30}).gateway.approval_seconds == 30
    with pytest.raises(ConfigError, match=r"gateway\.approval_seconds"):
        make_config(data_dir, gateway={"approval_seconds": 0})
