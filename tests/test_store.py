"""The store: migrations from empty and again, WAL, the inbox's exactly-once rule."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text, update

from bot.errors import StoreError
from bot.events import ChatKind, InboundEvent, MessageStatus
from bot.store import Store, inbox
from bot.store.db import SCHEMA_HEAD
from bot.store.history import (
    StoredMessage,
    messages_between,
    open_conversation,
    save_summary,
    start_new_session,
)
from bot.store.retention import Removed, forget_chat, prune_history
from bot.store.tables import InboxRow, MessageRow, SessionRow, TurnRow, utcnow
from tests.support.helpers import converse, make_config, upgrade_to

REPO = Path(__file__).resolve().parents[1]
TABLES = {"bindings", "sessions", "messages", "inbox", "turns", "pairing_codes",
          "pairing_attempts", "quarantine", "tool_calls", "alembic_version"}


def _event(message_id: str) -> InboundEvent:
    return InboundEvent(platform="telegram", chat_id="1", chat_kind=ChatKind.DM, sender_id="1",
                        sender_name="a", message_id=message_id, text="hello")


async def test_migrations_create_schema_from_empty_and_rerun_cleanly(data_dir: Path) -> None:
    url = make_config(data_dir).store_url()
    for _ in range(2):  # a second start finds the schema current and changes nothing
        store = Store(url)
        await store.migrate()
        await store.close()
    path = url.split("///", 1)[1]
    with sqlite3.connect(path) as db:
        tables = {r[0] for r in db.execute("select name from sqlite_master where type='table'")}
        assert tables >= TABLES
        assert db.execute("select version_num from alembic_version").fetchall() == [
            (SCHEMA_HEAD,)]
        assert db.execute("pragma journal_mode").fetchone() == ("wal",)


async def test_same_message_is_recorded_once(store: Store) -> None:
    first = await inbox.record(store, _event("7"))
    again = await inbox.record(store, _event("7"))
    assert first is not None and again is None
    assert await inbox.state_of(store, "telegram", "1", "7") == MessageStatus.RECEIVED
    await inbox.mark(store, first, MessageStatus.ANSWERED)
    assert await inbox.state_of(store, "telegram", "1", "7") == MessageStatus.ANSWERED
    assert await inbox.unanswered(store, "telegram") == []


async def test_concurrent_writers_do_not_lock_each_other_out(store: Store) -> None:
    ids = await asyncio.gather(*(inbox.record(store, _event(str(n))) for n in range(200)))
    assert len({i for i in ids if i is not None}) == 200


async def test_unanswered_events_survive_a_restart(data_dir: Path) -> None:
    url = make_config(data_dir).store_url()
    store = Store(url)
    await store.migrate()
    await inbox.record(store, _event("9"))
    await store.close()
    reopened = Store(url)
    pending = await inbox.unanswered(reopened, "telegram")
    await reopened.close()
    assert [p.event.message_id for p in pending] == ["9"]
    assert pending[0].event.text == "hello" and pending[0].sent == ()


async def test_a_migration_apart_leaves_alembic_out_of_the_process(data_dir: Path) -> None:
    """The long-running service migrates in a child: Alembic never loads in the service."""
    url = make_config(data_dir).store_url()
    script = ("import asyncio, sys\n"
              "from bot.store import Store\n"
              "async def main():\n"
              "    store = Store(sys.argv[1])\n"
              "    await store.migrate(apart=True)\n"
              "    await store.close()\n"
              "asyncio.run(main())\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))\n")
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, url, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=REPO)
    out, err = await child.communicate()
    assert child.returncode == 0, err.decode()
    assert out.decode().strip() == "[]"
    path = url.split("///", 1)[1]
    with sqlite3.connect(path) as db:
        assert db.execute("select version_num from alembic_version").fetchall() == [
            (SCHEMA_HEAD,)]
        names = {row[0] for row in db.execute("select name from sqlite_master "
                                              "where type = 'table'")}
    assert names >= TABLES


async def test_a_migration_apart_that_fails_says_why(data_dir: Path) -> None:
    url = make_config(data_dir).store_url()
    store = Store(url)
    async with store.engine.begin() as connection:  # a revision this checkout does not know
        await connection.execute(text("create table alembic_version (version_num text)"))
        await connection.execute(text("insert into alembic_version values ('9999')"))
    with pytest.raises(StoreError, match=r"could not prepare the database .*9999"):
        await store.migrate(apart=True)
    await store.close()


def test_schema_head_constant_matches_the_migrations() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from bot.store.db import MIGRATIONS_DIR, SCHEMA_HEAD

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert ScriptDirectory.from_config(config).get_heads() == [SCHEMA_HEAD]


@pytest.mark.parametrize("apart", [False, True], ids=["here", "apart"])
@pytest.mark.parametrize("previous", ["0001", "0002"])
async def test_upgrade_from_a_previous_version_keeps_the_data(data_dir: Path, previous: str,
                                                              apart: bool) -> None:
    from bot.store.db import SCHEMA_HEAD

    url = make_config(data_dir).store_url()
    store = Store(url)
    await upgrade_to(store, previous)
    async with store.engine.begin() as connection:
        # Written as that version's code wrote it: the columns it knew, nothing more.
        await connection.execute(text(
            "insert into inbox (platform, chat_id, message_id, sender_id, event, state, "
            "received_at, updated_at) values ('telegram', '1', '41', '7', :event, 'received', "
            "'2026-11-01 10:00:00', '2026-11-01 10:00:00')"),
            {"event": inbox._to_json(_event("41"))})
    await store.close()

    upgraded = Store(url)
    await upgraded.migrate(apart=apart)
    assert await inbox.state_of(upgraded, "telegram", "1", "41") == MessageStatus.RECEIVED
    assert await inbox.record(upgraded, _event("41")) is None
    [pending] = await inbox.unanswered(upgraded, "telegram")
    assert pending.event.message_id == "41"
    await upgraded.close()
    path = url.split("///", 1)[1]
    with sqlite3.connect(path) as db:
        assert db.execute("select version_num from alembic_version").fetchall() == [
            (SCHEMA_HEAD,)]
        assert db.execute("select count(*) from pairing_codes").fetchone() == (0,)
        assert db.execute("select attempts, sent from inbox").fetchall() == [(1, None)]


async def test_upgrade_to_0005_keeps_each_summary_covering_nothing_yet(data_dir: Path) -> None:
    url = make_config(data_dir).store_url()
    store = Store(url)
    await upgrade_to(store, "0004")
    async with store.engine.begin() as connection:
        await connection.execute(text(
            "insert into sessions (id, platform, chat_id, persona, summary, created_at) "
            "values (1, 'telegram', '1', 'guest', 'they like tea', '2026-11-01 10:00:00')"))
        await connection.execute(text(
            "insert into messages (session_id, role, content, transcribed, created_at) "
            "values (1, 'user', 'hi', 0, '2026-11-01 10:00:00')"))
    await store.close()
    upgraded = Store(url)
    await upgraded.migrate()
    conversation = await open_conversation(upgraded, "telegram", "1", "guest")
    await upgraded.close()
    assert (conversation.summary, conversation.summary_through) == ("they like tea", 0)
    assert conversation.messages == (StoredMessage("user", "hi"),)


async def test_a_summary_moves_forward_once_from_where_it_began(store: Store) -> None:
    session_id = await converse(store, "telegram", "1", "a", "b", "c")
    first = await open_conversation(store, "telegram", "1", "guest")
    covered = first.messages[1].id  # the reply to "a"
    assert await save_summary(store, session_id, "they said a", covered, expected_through=0)
    # A second summary begun from the same point (a /compact racing the background) loses.
    assert not await save_summary(store, session_id, "stale", covered + 2, expected_through=0)
    after = await open_conversation(store, "telegram", "1", "guest")
    assert (after.summary, after.summary_through) == ("they said a", covered)
    assert [m.content for m in after.messages] == ["b", "re: b", "c", "re: c"]
    assert await messages_between(store, session_id, 0, after.messages[0].id, 10) == (
        StoredMessage("user", "a"), StoredMessage("assistant", "re: a"))


async def test_a_binding_taken_out_of_the_config_is_revoked(store: Store) -> None:
    from bot.config import BindingSpec
    from bot.errors import ConfigBinding
    from bot.store.bindings import (
        add_binding,
        list_bindings,
        remove_binding,
        seed_bindings,
    )

    owner = BindingSpec(persona="admin", platform="telegram", chat_kind="dm", peer="1")
    friend = BindingSpec(persona="guest", platform="telegram", chat_kind="dm", peer="2")
    await seed_bindings(store, (owner, friend))
    added = await add_binding(store, BindingSpec(persona="guest", platform="discord",
                                                 group="9"))
    await seed_bindings(store, (friend,))
    rows = await list_bindings(store)
    assert [(b.peer_id, b.source) for b in rows] == [("2", "config"), (None, "cli")]
    config_row = rows[0]
    with pytest.raises(ConfigBinding):
        await remove_binding(store, config_row.id)
    assert await remove_binding(store, added.id) == added
    assert await remove_binding(store, added.id) is None


async def _age(store: Store, days: int, *, session_id: int) -> None:
    """Make one session and everything in it `days` old."""
    then = utcnow() - timedelta(days=days)
    async with store.write() as session:
        await session.execute(update(SessionRow).where(SessionRow.id == session_id)
                              .values(created_at=then))
        await session.execute(update(SessionRow).where(SessionRow.id == session_id,
                                                       SessionRow.closed_at.is_not(None))
                              .values(closed_at=then))
        await session.execute(update(MessageRow).where(MessageRow.session_id == session_id)
                              .values(created_at=then))
        inbox_ids = select(TurnRow.inbox_id).where(TurnRow.session_id == session_id)
        await session.execute(update(InboxRow).where(InboxRow.id.in_(inbox_ids))
                              .values(received_at=then))
        await session.execute(update(TurnRow).where(TurnRow.session_id == session_id)
                              .values(received_at=then))


def _stored(store: Store) -> str:
    """Every value in every table, as one text to search."""
    path = store.url.split("///", 1)[1]
    with sqlite3.connect(path) as db:
        tables = [t for (t,) in db.execute("select name from sqlite_master where type='table'")]
        return repr([row for table in tables for row in db.execute(f'select * from "{table}"')])


async def test_history_older_than_the_retention_is_pruned(store: Store) -> None:
    # Chat 1: an old conversation, closed with /new, and a current one.
    closed = await converse(store, "telegram", "1", "old question", "old follow-up")
    await start_new_session(store, "telegram", "1", "guest")
    await converse(store, "telegram", "1", "new question")
    # Chat 2: one conversation, still open, silent for 40 days, with a summary.
    stale = await converse(store, "telegram", "2", "stale question")
    async with store.write() as session:
        await session.execute(update(SessionRow).where(SessionRow.id == stale)
                              .values(summary="they asked about a stale thing"))
    await _age(store, 40, session_id=closed)
    await _age(store, 40, session_id=stale)

    for keep_forever in (None, 0):
        assert await prune_history(store, keep_forever) == Removed()
    assert await prune_history(store, 41) == Removed()
    assert await prune_history(store, 30) == Removed(sessions=1, messages=6, turns=3, inbox=3)
    assert await prune_history(store, 30) == Removed()  # nothing left to prune

    left = _stored(store)
    for gone in ("old question", "old follow-up", "stale question", "a stale thing"):
        assert gone not in left
    assert (await open_conversation(store, "telegram", "1", "guest")).messages == (
        StoredMessage("user", "new question"), StoredMessage("assistant", "re: new question"))
    # The open session of chat 2 keeps its (now empty) row: a turn may be using it.
    reopened = await open_conversation(store, "telegram", "2", "guest")
    assert (reopened.session_id, reopened.summary, reopened.messages) == (stale, "", ())


async def test_forgetting_a_chat_removes_all_its_history_and_only_its(store: Store) -> None:
    await converse(store, "telegram", "1", "first secret", "second secret")
    await converse(store, "telegram", "1", "admin secret", persona="admin")
    await converse(store, "telegram", "2", "someone else")
    await converse(store, "discord", "1", "same id elsewhere")
    await start_new_session(store, "telegram", "1", "guest")
    assert await inbox.record(store, _event("unanswered")) is not None  # telegram chat 1

    removed = await forget_chat(store, "1", "telegram")
    assert removed == Removed(sessions=2, messages=6, turns=3, inbox=4)
    assert removed.describe() == "2 sessions, 6 messages, 3 turn records and 4 inbox entries"
    left = _stored(store)
    assert "secret" not in left and "unanswered" not in left
    # Not in the bytes on disk either, while the store is open: no free page, no log frame.
    path = Path(store.url.split("///", 1)[1])
    on_disk = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
    assert path.with_name(path.name + "-wal").exists()
    assert b"secret" not in on_disk and b"unanswered" not in on_disk
    assert "someone else" in left and "same id elsewhere" in left
    assert await forget_chat(store, "1", "telegram") == Removed()

    assert await forget_chat(store, "1") == Removed(sessions=1, messages=2, turns=1, inbox=1)
    assert "same id elsewhere" not in _stored(store)
    assert "someone else" in _stored(store)
