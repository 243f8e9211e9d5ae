"""The store: migrations from empty and again, WAL, the inbox's exactly-once rule."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from bot.events import ChatKind, InboundEvent
from bot.store import Store, inbox
from tests.conftest import make_config

TABLES = {"bindings", "sessions", "messages", "inbox", "turns", "pairing_codes",
          "pairing_attempts", "alembic_version"}


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
        assert db.execute("select version_num from alembic_version").fetchall() == [("0002",)]
        assert db.execute("pragma journal_mode").fetchone() == ("wal",)


async def test_same_message_is_recorded_once(store: Store) -> None:
    first = await inbox.record(store, _event("7"))
    again = await inbox.record(store, _event("7"))
    assert first is not None and again is None
    assert await inbox.state_of(store, "telegram", "1", "7") == inbox.RECEIVED
    await inbox.mark(store, first, inbox.ANSWERED)
    assert await inbox.state_of(store, "telegram", "1", "7") == inbox.ANSWERED
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
    assert [e.message_id for _, e in pending] == ["9"]
    assert pending[0][1].text == "hello"


def test_schema_head_constant_matches_the_migrations() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from bot.store.db import MIGRATIONS_DIR, SCHEMA_HEAD

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert ScriptDirectory.from_config(config).get_heads() == [SCHEMA_HEAD]
