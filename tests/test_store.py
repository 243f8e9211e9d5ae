"""The store: migrations from empty and again, WAL, the inbox's exactly-once rule."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text

from bot.events import ChatKind, InboundEvent, MessageStatus
from bot.store import Store, inbox
from bot.store.db import SCHEMA_HEAD
from tests.support.helpers import make_config

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


def test_schema_head_constant_matches_the_migrations() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from bot.store.db import MIGRATIONS_DIR, SCHEMA_HEAD

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert ScriptDirectory.from_config(config).get_heads() == [SCHEMA_HEAD]


@pytest.mark.parametrize("previous", ["0001", "0002"])
async def test_upgrade_from_a_previous_version_keeps_the_data(data_dir: Path,
                                                              previous: str) -> None:
    from alembic import command
    from alembic.config import Config as AlembicConfig

    from bot.store.db import MIGRATIONS_DIR, SCHEMA_HEAD

    url = make_config(data_dir).store_url()
    store = Store(url)

    def to_previous(connection: object) -> None:
        config = AlembicConfig()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.attributes["connection"] = connection
        command.upgrade(config, previous)

    async with store.engine.begin() as connection:
        await connection.run_sync(to_previous)
        # Written as that version's code wrote it: the columns it knew, nothing more.
        await connection.execute(text(
            "insert into inbox (platform, chat_id, message_id, sender_id, event, state, "
            "received_at, updated_at) values ('telegram', '1', '41', '7', :event, 'received', "
            "'2026-11-01 10:00:00', '2026-11-01 10:00:00')"),
            {"event": inbox._to_json(_event("41"))})
    await store.close()

    upgraded = Store(url)
    await upgraded.migrate()
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
