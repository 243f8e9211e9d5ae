"""What a platform sends cannot stop the service, and a stop never doubles or truncates a
reply: the real python-telegram-bot client against the fake Bot API, the real store."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.telegram import TelegramAdapter
from bot.config import BindingSpec
from bot.events import MessageStatus
from bot.service import Service, open_service
from bot.store import inbox
from bot.store.bindings import add_binding
from tests.fakes.llm_backends import FakeOllama, ScriptedReply
from tests.fakes.telegram import FakeTelegram
from tests.support.helpers import db_rows, sent_messages, until, user_text
from tests.support.telegram import (
    GROUP,
    OWNER,
    STRANGER,
    Running,
    acknowledged,
    telegram_config,
    texts,
)

MENTION = "@hearth_test_bot"


def message_from_stranger(message_id: int, text: object) -> dict[str, object]:
    return {"message_id": message_id, "date": int(time.time()), "text": text,
            "chat": {"id": STRANGER, "type": "private", "first_name": "Sam"},
            "from": {"id": STRANGER, "is_bot": False, "first_name": "Sam"}}


def poison_updates() -> list[dict[str, object]]:
    """Updates the library cannot read, each from a real report: a newer Bot API, or a
    payload missing what the library requires."""
    message = message_from_stranger(9000, "placeholder")
    no_date = {k: v for k, v in message.items() if k != "date"}
    return [
        {"message": no_date},
        {"message": {**message, "date": None}},
        {"message": {}},
        # A poll without allows_revoting, which the library now requires.
        {"poll": {"id": "1", "question": "?", "options": [], "total_voter_count": 0,
                  "is_closed": False, "is_anonymous": True, "type": "regular",
                  "allows_multiple_answers": False}},
        {"message": {**message, "chat": {"id": "not-a-number", "type": "private"}}},
        {"message": {**message, "from": {"id": STRANGER}}},
        # One the library reads without complaint, with a number where button data belongs.
        {"callback_query": {"id": "q1", "chat_instance": "i", "data": 1.5,
                            "from": {"id": STRANGER, "is_bot": False, "first_name": "Sam"}}},
    ]


async def test_unreadable_updates_are_quarantined_and_the_next_is_answered(
        running: Running) -> None:
    secret_words = "my private words"
    for update in poison_updates():
        if update.get("message"):
            update["message"] = {**update["message"], "text": secret_words}  # type: ignore[dict-item]
        running.tg.push_update(update)
    after = running.tg.push_text(chat_id=STRANGER, from_id=STRANGER, text="still there?")
    await until(lambda: texts(running.tg, STRANGER) == ["Hello there."], "the valid answer")
    await until(lambda: acknowledged(running.tg, int(after["update_id"])), "the acknowledgement")
    quarantined = db_rows(running.service, "select ref, reason, shape from quarantine")
    assert len(quarantined) >= 4, quarantined
    assert all(secret_words not in str(row) for row in quarantined), "shape, never content"
    assert user_text(running.llm) == "still there?"
    assert len(running.llm.requests_to("/api/chat")) == 1


async def test_numbers_and_lone_surrogates_in_text_are_answered(running: Running) -> None:
    running.tg.push_update({"message": message_from_stranger(9001, 12345)})
    await until(lambda: len(texts(running.tg, STRANGER)) == 1, "the first answer")
    assert user_text(running.llm) == "12345"
    running.tg.push_text(chat_id=STRANGER, from_id=STRANGER, text="broken \ud800 half")
    await until(lambda: len(texts(running.tg, STRANGER)) == 2, "the second answer")
    assert user_text(running.llm) == "broken \ufffd half"
    answered = [(MessageStatus.ANSWERED,), (MessageStatus.ANSWERED,)]
    await until(lambda: db_rows(running.service, "select state from inbox") == answered,
                "both turns recorded")


async def test_a_plain_group_reply_gets_no_edit_that_changes_nothing(running: Running) -> None:
    running.llm.script(ScriptedReply(chunks=("Plain words only.",)))
    running.tg.push_text(chat_id=GROUP, chat_type="group", from_id=STRANGER,
                         text=f"{MENTION} hi")
    await until(lambda: texts(running.tg, GROUP) == ["Plain words only."], "the reply")
    state = await _settled(running.service, GROUP)
    assert state is MessageStatus.ANSWERED
    assert running.tg.calls_to("editMessageText") == []


async def test_a_formatted_group_reply_gets_its_final_edit(running: Running) -> None:
    running.llm.script(ScriptedReply(chunks=("Some **bold** words.",)))
    running.tg.push_text(chat_id=GROUP, chat_type="group", from_id=STRANGER,
                         text=f"{MENTION} hi")
    assert await _settled(running.service, GROUP) is MessageStatus.ANSWERED
    (edit,) = running.tg.calls_to("editMessageText")
    assert edit.params["parse_mode"] == "HTML" and "<b>bold</b>" in str(edit.params["text"])


async def _settled(service: Service, chat: int, within: float = 15) -> MessageStatus:
    async def state() -> MessageStatus | None:
        rows = db_rows(service, f"select state from inbox where chat_id = '{chat}'")
        return MessageStatus(str(rows[-1][0])) if rows else None

    deadline = asyncio.get_running_loop().time() + within
    while (current := await state()) in (None, MessageStatus.RECEIVED):
        assert asyncio.get_running_loop().time() < deadline, "the turn was never recorded"
        await asyncio.sleep(0.01)
    assert current is not None
    return current


@pytest.fixture
async def service(data_dir: Path, fake_tg: FakeTelegram,
                  fake_ollama: FakeOllama) -> AsyncIterator[Service]:
    async with open_service(telegram_config(data_dir, fake_tg, fake_ollama),
                            voice=False) as opened:
        await add_binding(opened.store, BindingSpec(
            persona="admin", platform="telegram", chat_kind="dm", peer=str(OWNER)))
        yield opened


def adapter_for(service: Service) -> TelegramAdapter:
    assert service.config.channels.telegram is not None
    return TelegramAdapter(service.config.channels.telegram, service.gateway,
                           stop_seconds=10.0)


async def test_more_chats_at_once_than_connections_all_get_their_answer(
        running: Running, caplog: pytest.LogCaptureFixture) -> None:
    # A slow link: every draft and message takes a second and a half, while 48 people write
    # at once: more requests than the client has connections are waiting at the same time.
    running.tg.delays.update(sendMessageDraft=1.5, sendMessage=1.5)
    chats = range(STRANGER, STRANGER + 48)
    for chat in chats:
        running.tg.push_text(chat_id=chat, from_id=chat, text="hello?")
    for chat in chats:
        assert await _settled(running.service, chat, within=120) is MessageStatus.ANSWERED
    assert all(texts(running.tg, chat) == ["Hello there."] for chat in chats)
    # Waiting for a free connection is not a failure of the platform: nothing was retried.
    assert "Pool timeout" not in caplog.text


async def test_a_reply_cut_off_by_a_crash_is_replaced_not_left_truncated(
        service: Service, fake_tg: FakeTelegram, fake_ollama: FakeOllama) -> None:
    words = tuple(f"word{n} " for n in range(60))
    fake_ollama.script(ScriptedReply(chunks=words, token_delay=0.05),
                       ScriptedReply(chunks=("The whole answer, at last.",)))
    first = adapter_for(service)
    serving = asyncio.create_task(first.serve())
    await asyncio.wait_for(first.ready.wait(), 10)
    fake_tg.push_text(chat_id=GROUP, chat_type="group", from_id=STRANGER,
                      text=f"{MENTION} tell me everything")
    # The partial reply is on the platform and remembered in the inbox...
    await until(lambda: db_rows(service, "select sent from inbox where sent is not null"),
                "the partial reply to be remembered")
    (partial,) = fake_tg.sent_messages(GROUP)
    # ...when the service dies: no drain, no record.
    serving.cancel()
    await asyncio.gather(serving, return_exceptions=True)
    assert db_rows(service, "select state from inbox") == [(MessageStatus.RECEIVED,)]

    second = adapter_for(service)
    serving = asyncio.create_task(second.serve())
    try:
        assert await _settled(service, GROUP) is MessageStatus.ANSWERED
    finally:
        await second.stop()
        await serving
    assert texts(fake_tg, GROUP) == ["The whole answer, at last."]
    (deleted,) = fake_tg.calls_to("deleteMessage")
    assert int(deleted.params["message_id"]) == partial["message_id"]


async def test_a_stop_lets_the_reply_under_way_finish_and_records_it(
        service: Service, fake_tg: FakeTelegram, fake_ollama: FakeOllama) -> None:
    fake_ollama.script(ScriptedReply(chunks=tuple(f"w{n} " for n in range(20)),
                                     token_delay=0.05))
    adapter = adapter_for(service)
    serving = asyncio.create_task(adapter.serve())
    await asyncio.wait_for(adapter.ready.wait(), 10)
    fake_tg.push_text(chat_id=OWNER, from_id=OWNER, text="a long one please")
    await until(lambda: fake_tg.drafts(OWNER), "the reply to be under way")
    await adapter.stop()
    await asyncio.wait_for(serving, 30)
    assert texts(fake_tg, OWNER) == ["".join(f"w{n} " for n in range(20)).strip()]
    assert db_rows(service, "select state from inbox") == [(MessageStatus.ANSWERED,)]
    # Nothing is left to answer at the next start.
    assert await service.gateway.pending("telegram") == []


async def test_a_stop_keeps_what_arrives_meanwhile_for_the_next_start(
        service: Service, fake_tg: FakeTelegram, fake_ollama: FakeOllama) -> None:
    fake_ollama.script(ScriptedReply(chunks=("first ",) * 10, token_delay=0.05))
    adapter = adapter_for(service)
    serving = asyncio.create_task(adapter.serve())
    await asyncio.wait_for(adapter.ready.wait(), 10)
    fake_tg.push_text(chat_id=OWNER, from_id=OWNER, text="one")
    await until(lambda: fake_tg.drafts(OWNER), "the first reply to be under way")
    fake_tg.push_text(chat_id=OWNER, from_id=OWNER, text="two")
    await until(lambda: len(db_rows(service, "select id from inbox")) == 2, "the second stored")
    await adapter.stop()
    await asyncio.wait_for(serving, 30)
    [left] = await service.gateway.pending("telegram")
    assert left.event.text == "two"
    assert len(texts(fake_tg, OWNER)) == 1


async def test_a_message_that_fails_at_every_start_is_given_up(service: Service) -> None:
    from bot.events import ChatKind, InboundEvent

    event = InboundEvent(platform="telegram", chat_id=str(OWNER), chat_kind=ChatKind.DM,
                         sender_id=str(OWNER), sender_name="o", message_id="77", text="boom")
    inbox_id = await inbox.record(service.store, event)
    assert inbox_id is not None
    for _ in range(inbox.MAX_ATTEMPTS):  # each start tries it, and each dies on it
        assert [p.inbox_id for p in await service.gateway.pending("telegram")] == [inbox_id]
    assert await service.gateway.pending("telegram") == []
    [(state, error)] = db_rows(service, "select state, error from inbox")
    assert state == MessageStatus.FAILED and "gave up after 3 attempts" in str(error)


async def test_quarantine_keeps_no_content_and_the_log_neither(
        running: Running, caplog: pytest.LogCaptureFixture) -> None:
    # What the service logs at its default level; at debug the Bot API client logs whole
    # responses, which is what the owner asks for by turning debug on.
    caplog.set_level(logging.INFO)
    running.tg.push_update({"message": {"text": "a secret sentence", "date": "soon"}})
    after = running.tg.push_text(chat_id=STRANGER, from_id=STRANGER, text="hi")
    await until(lambda: acknowledged(running.tg, int(after["update_id"])), "both taken in")
    await until(lambda: texts(running.tg, STRANGER), "the answer")
    [(shape,)] = db_rows(running.service, "select shape from quarantine")
    assert "a secret sentence" not in str(shape) and "'text': 'str'" in str(shape)
    assert "a secret sentence" not in caplog.text
    assert json.dumps(sent_messages(running.llm)).count("a secret sentence") == 0


async def test_schema_has_no_content_column_for_quarantine(running: Running) -> None:
    path = running.service.config.store_url().split("///", 1)[1]
    with sqlite3.connect(path) as db:
        columns = [row[1] for row in db.execute("pragma table_info(quarantine)")]
    assert columns == ["id", "platform", "ref", "reason", "shape", "received_at"]
