"""Migration 0007 (what a turn accounts for): from a 0006 database, keeping its turns, and again."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bot.store import Store
from tests.support.helpers import make_config, upgrade_to

NEW_COLUMNS = {"thinking", "thinking_ms", "cached_tokens", "platform", "chat_id",
               "fallback_from"}


async def test_0007_upgrades_a_0006_database_and_can_run_again(data_dir: Path) -> None:
    url = make_config(data_dir).store_url()
    store = Store(url)
    await upgrade_to(store, "0006")
    path = url.split("///", 1)[1]
    with sqlite3.connect(path) as db:
        db.execute("insert into turns (persona, model, status, received_at, prompt_tokens, "
                   "completion_tokens) values ('admin', 'local/m', 'answered', "
                   "'2026-12-01 10:00:00', 11, 7)")
    await store.migrate()
    with sqlite3.connect(path) as db:
        columns = {r[1] for r in db.execute("pragma table_info(turns)")}
        assert columns >= NEW_COLUMNS
        assert db.execute("select persona, prompt_tokens, completion_tokens, cached_tokens "
                          "from turns").fetchall() == [("admin", 11, 7, None)]
        # A run that added the columns but died before recording the revision runs again.
        db.execute("update alembic_version set version_num = '0006'")
    await upgrade_to(store, "0007")
    with sqlite3.connect(path) as db:
        assert db.execute("select version_num from alembic_version").fetchall() == [("0007",)]
        indexes = {r[1] for r in db.execute("pragma index_list(turns)")}
        assert "ix_turns_persona_received" in indexes
    await store.close()
