"""The tool audit table: migration 0003 from empty and from 0002, and reading it back."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

from bot.store import Store
from bot.store.audit import ALLOWED, REFUSED, ToolCallRecord, read_audit, record_tool_call
from bot.store.db import SCHEMA_HEAD
from bot.store.tables import utcnow
from tests.support.helpers import make_config, upgrade_to


def _columns(path: str, table: str) -> list[str]:
    with sqlite3.connect(path) as db:
        return [row[1] for row in db.execute(f"pragma table_info({table})")]


async def test_0003_from_empty_creates_the_audit_table_and_reruns_cleanly(data_dir: Path) -> None:
    url = make_config(data_dir).store_url()
    for _ in range(2):
        store = Store(url)
        await store.migrate()
        await store.close()
    path = url.split("///", 1)[1]
    assert _columns(path, "tool_calls") == ["id", "at", "persona", "platform", "chat_id",
                                            "tool", "arguments", "outcome", "error",
                                            "duration_ms"]
    with sqlite3.connect(path) as db:
        assert db.execute("select version_num from alembic_version").fetchall() == [
            (SCHEMA_HEAD,)]


async def test_0004_upgrades_a_0003_database_and_keeps_its_data(data_dir: Path) -> None:
    url = make_config(data_dir).store_url()
    store = Store(url)
    await upgrade_to(store, "0003")
    path = url.split("///", 1)[1]
    with sqlite3.connect(path) as db:
        db.execute("insert into pairing_attempts (platform, sender_id, succeeded, at) "
                   "values ('telegram', '5', 0, '2026-01-01 00:00:00')")
    assert "tool_calls" not in {r[0] for r in sqlite3.connect(path).execute(
        "select name from sqlite_master where type='table'")}
    await store.close()

    upgraded = Store(url)
    await upgraded.migrate()
    await record_tool_call(upgraded, ToolCallRecord(persona="guest", platform="telegram",
                                                    chat_id="5", tool="file_read",
                                                    arguments="{}", outcome=ALLOWED))
    assert [r.tool for r in await read_audit(upgraded)] == ["file_read"]
    await upgraded.close()
    with sqlite3.connect(path) as db:
        assert db.execute("select count(*) from pairing_attempts").fetchone() == (1,)
        assert db.execute("select version_num from alembic_version").fetchall() == [
            (SCHEMA_HEAD,)]


async def test_0004_is_idempotent_when_the_table_already_exists(data_dir: Path) -> None:
    """A run that created the table but died before recording the revision can run again."""
    url = make_config(data_dir).store_url()
    store = Store(url)
    await upgrade_to(store, "0004")
    path = url.split("///", 1)[1]
    with sqlite3.connect(path) as db:
        db.execute("update alembic_version set version_num = '0003'")
    await upgrade_to(store, "0004")
    await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("select version_num from alembic_version").fetchall() == [("0004",)]


async def test_reading_the_audit_filters_by_time_and_persona(store: Store) -> None:
    now = utcnow()
    for minutes_ago, persona, outcome in ((30, "guest", REFUSED), (10, "admin", ALLOWED),
                                          (5, "guest", ALLOWED)):
        await record_tool_call(store, ToolCallRecord(
            persona=persona, platform="discord", chat_id="c", tool="shell_exec",
            arguments='{"command": "ls"}', outcome=outcome, duration_ms=3,
            at=now - timedelta(minutes=minutes_ago)))
    everything = await read_audit(store)
    assert [(r.persona, r.outcome) for r in everything] == [
        ("guest", REFUSED), ("admin", ALLOWED), ("guest", ALLOWED)]
    recent = await read_audit(store, since=now - timedelta(minutes=15))
    assert [r.persona for r in recent] == ["admin", "guest"]
    guests = await read_audit(store, persona="guest")
    assert [r.outcome for r in guests] == [REFUSED, ALLOWED]
    assert [r.persona for r in await read_audit(store, limit=1)] == ["guest"]
    assert everything[0].arguments == '{"command": "ls"}' and everything[0].duration_ms == 3
