"""Migration 0006 (sign-in links, sessions, API tokens): from a 0004 database, and again."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bot.store import Store
from bot.store.bindings import list_bindings
from bot.store.web import api_token_for, create_api_token, revoke_api_token
from tests.support.helpers import make_config, upgrade_to

TABLES = {"web_links", "web_sessions", "api_tokens"}


async def test_0006_upgrades_a_0005_database_and_can_run_again(data_dir: Path) -> None:
    url = make_config(data_dir).store_url()
    store = Store(url)
    await upgrade_to(store, "0005")
    path = url.split("///", 1)[1]
    with sqlite3.connect(path) as db:
        db.execute("insert into tool_calls (at, persona, platform, chat_id, tool, arguments, "
                   "outcome, duration_ms) values ('2026-12-01 10:00:00', 'guest', 'telegram', "
                   "'1', 'file_read', '{}', 'ok', 3)")
    await store.migrate()
    with sqlite3.connect(path) as db:
        tables = {r[0] for r in db.execute("select name from sqlite_master where type='table'")}
        assert tables >= TABLES
        assert db.execute("select count(*) from tool_calls").fetchone() == (1,)
        # A run that made the tables but died before recording the revision runs again.
        db.execute("update alembic_version set version_num = '0005'")
    await upgrade_to(store, "0006")
    with sqlite3.connect(path) as db:
        assert db.execute("select version_num from alembic_version").fetchall() == [("0006",)]
    await store.close()


async def test_a_token_is_a_binding_until_it_is_revoked(store: Store) -> None:
    token, secret = await create_api_token(store, "guest", "notes")
    [bound] = [b for b in await list_bindings(store, "api")]
    assert (bound.peer_id, bound.chat_kind, bound.persona, bound.source) == (
        token.peer, "dm", "guest", "token")
    assert (await api_token_for(store, secret)) is not None
    assert await api_token_for(store, secret + "x") is None
    revoked = await revoke_api_token(store, token.id)
    assert revoked is not None and revoked.revoked_at is not None
    assert await api_token_for(store, secret) is None
    assert await list_bindings(store, "api") == []
    assert await revoke_api_token(store, 99) is None
