"""What the store asks of the database for one plain text turn, statement by statement, and
the binding cache that spares reading the binding table at every message: a change made by
this process or by `hearthbot bind` in another one is seen at the next message."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import event, func, select, text

from adapters.console import GUEST, OWNER, ConsoleChat
from bot.config import BindingSpec
from bot.events import ChatKind, InboundEvent, MessageStatus
from bot.service import Service
from bot.store import Store, inbox
from bot.store.bindings import add_binding, remove_binding, seed_bindings
from bot.store.tables import InboxRow
from persona.personas import ADMIN_PROMPT, GUEST_PROMPT
from tests.fakes.llm_backends import FakeOllama, ScriptedReply
from tests.support.cli import hearthbot
from tests.support.helpers import sent_messages, until


@contextmanager
def statements(service: Service) -> Iterator[list[str]]:
    """Every statement the service's engine sends, each as its verb and first table."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        words = " ".join(statement.split())
        shape = re.match(r"(PRAGMA \w+( = )?|SELECT .*? FROM \w+|INSERT INTO \w+|UPDATE \w+"
                         r"|DELETE FROM \w+)", words)
        seen.append(shape.group(1).strip() if shape else words)

    engine = service.store.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


@contextmanager
def driver_rollbacks(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bool]]:
    """Every rollback that reaches the SQLite driver (each one a wait on aiosqlite's thread),
    with whether SQLite held a transaction to roll back."""
    seen: list[bool] = []
    rollback = aiosqlite.Connection.rollback

    async def counted(self: aiosqlite.Connection) -> None:
        seen.append(self.in_transaction)
        await rollback(self)

    monkeypatch.setattr(aiosqlite.Connection, "rollback", counted)
    yield seen


def tables(seen: list[str]) -> list[str]:
    """SELECT statements by table only (their column lists are the schema's business)."""
    return [re.sub(r"^SELECT .* FROM ", "SELECT FROM ", s) for s in seen]


def console(service: Service, sender: str = GUEST) -> ConsoleChat:
    return ConsoleChat(service.gateway, sender=sender, out=io.StringIO(), err=io.StringIO())


async def test_a_plain_text_turn_is_seven_statements_and_none_after_delivery(
        ollama_service: Service, fake_ollama: FakeOllama) -> None:
    fake_ollama.script(ScriptedReply(chunks=("one",)), ScriptedReply(chunks=("two",)))
    chat = console(ollama_service)
    keeper = ollama_service.gateway.context
    await chat.ask("first")  # opens the session and reads the bindings once
    await until(lambda: not keeper.working, "the first turn's summary check")
    with statements(ollama_service) as seen:
        result = await chat.ask("second")
        # A short session is far below the summarizing threshold by the turn's own count: it
        # is not read again to be counted.
        await until(lambda: not keeper.working, "the summary check")
    assert result.status is MessageStatus.ANSWERED
    assert tables(seen) == [
        "INSERT INTO inbox",            # stored before anything else happens
        "PRAGMA user_version",          # have the bindings changed? (they have not)
        "SELECT FROM sessions",         # the open conversation
        "SELECT FROM messages",         # and its newest messages
        "INSERT INTO messages",         # the exchange, both messages in one statement
        "INSERT INTO turns",            # the turn's record
        "UPDATE inbox",                 # the message is answered
    ]


async def test_a_binding_added_or_removed_here_applies_to_the_next_message(
        ollama_service: Service, fake_ollama: FakeOllama) -> None:
    chat = console(ollama_service)
    await chat.ask("who answers?")
    assert sent_messages(fake_ollama)[0]["content"] == GUEST_PROMPT
    added = await add_binding(ollama_service.store, BindingSpec(
        platform="console", persona="admin", chat_kind="dm", peer=GUEST))
    with statements(ollama_service) as seen:
        await chat.ask("and now?")
    assert "SELECT FROM bindings" in tables(seen)  # read again, because it changed
    assert sent_messages(fake_ollama)[0]["content"] == ADMIN_PROMPT
    await remove_binding(ollama_service.store, added.id)
    await chat.ask("and after that?")
    assert sent_messages(fake_ollama)[0]["content"] == GUEST_PROMPT


async def test_bind_and_unbind_from_another_process_apply_to_the_next_message(
        ollama_service: Service, fake_ollama: FakeOllama, cli_env: dict[str, str]) -> None:
    chat = console(ollama_service)
    await chat.ask("who answers?")
    assert sent_messages(fake_ollama)[0]["content"] == GUEST_PROMPT
    code, out, err = await hearthbot("bind", "--platform", "console", "--chat-kind", "dm",
                                     "--peer", GUEST, "--persona", "admin", env=cli_env)
    assert code == 0, err
    binding_id = out.split(":", 1)[0].removeprefix("binding ").strip()
    await chat.ask("and now?")
    assert sent_messages(fake_ollama)[0]["content"] == ADMIN_PROMPT
    code, _, err = await hearthbot("unbind", binding_id, env=cli_env)
    assert code == 0, err
    await chat.ask("and after that?")
    assert sent_messages(fake_ollama)[0]["content"] == GUEST_PROMPT


async def test_seeding_the_same_config_again_keeps_the_cache(
        ollama_service: Service, fake_ollama: FakeOllama) -> None:
    chat = console(ollama_service)
    await chat.ask("first")
    config_bindings = ollama_service.config.agents.bindings
    assert config_bindings  # the owner's
    await seed_bindings(ollama_service.store, config_bindings)  # as every start does
    with statements(ollama_service) as seen:
        await chat.ask("second")
    assert "SELECT FROM bindings" not in tables(seen)
    # Seeding a config without them is a change: the owner's binding is gone at once.
    owner = console(ollama_service, OWNER)
    await owner.ask("who am I?")
    assert sent_messages(fake_ollama)[0]["content"] == ADMIN_PROMPT
    await seed_bindings(ollama_service.store, ())
    await owner.ask("and now?")
    assert sent_messages(fake_ollama)[0]["content"] == GUEST_PROMPT


async def test_a_plain_text_turn_waits_for_no_rollback(
        ollama_service: Service, fake_ollama: FakeOllama,
        monkeypatch: pytest.MonkeyPatch) -> None:
    fake_ollama.script(ScriptedReply(chunks=("one",)), ScriptedReply(chunks=("two",)))
    chat = console(ollama_service)
    keeper = ollama_service.gateway.context
    await chat.ask("first")
    await until(lambda: not keeper.working, "the first turn's summary check")
    with driver_rollbacks(monkeypatch) as rolled_back, statements(ollama_service) as seen:
        result = await chat.ask("second")
        await until(lambda: not keeper.working, "the summary check")
    assert result.status is MessageStatus.ANSWERED
    assert len(seen) == 7  # the statements still ran, each in its own checkout
    # Reads and committed writes leave SQLite without a transaction: nothing to roll back.
    assert rolled_back == []


async def test_a_transaction_left_open_is_still_rolled_back(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    assert await inbox.record(store, _event("kept")) is not None
    with driver_rollbacks(monkeypatch) as rolled_back:
        with pytest.raises(RuntimeError):
            async with store.write() as session:
                await session.execute(text("DELETE FROM inbox"))
                raise RuntimeError("the caller fails halfway")
        async with store.engine.connect() as connection:  # closed without a commit
            await connection.execute(text("DELETE FROM inbox"))
        async with store.read() as session:
            count = (await session.execute(select(func.count()).select_from(InboxRow))).scalar()
    # Both connections held a transaction, and both reached the driver; the read did not.
    assert rolled_back == [True, True]
    assert count == 1
    # Each connection went back to the pool clean: the next writer is not refused.
    assert await inbox.record(store, _event("next")) is not None


def _event(message_id: str) -> InboundEvent:
    return InboundEvent(platform="telegram", chat_id="1", chat_kind=ChatKind.DM, sender_id="1",
                        sender_name="a", message_id=message_id, text="hello")
