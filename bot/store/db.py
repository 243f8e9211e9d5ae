"""The database handle: one async engine, serialized writes, migrations at start."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from bot.errors import StoreError

PROJECT_DIR = Path(__file__).resolve().parents[2]
MIGRATIONS_DIR = PROJECT_DIR / "migrations"
# The newest migration's revision. Checking it directly spares every start Alembic's import
# (about 0.1 s); a test keeps it equal to Alembic's own idea of the head.
SCHEMA_HEAD = "0007"


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite and parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self.engine: AsyncEngine = create_async_engine(url)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            _skip_idle_rollbacks(self.engine)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # SQLite allows one writer at a time; queueing writers here instead of in SQLite's
        # busy handler keeps "database is locked" away under concurrent chats.
        self._write_lock = asyncio.Lock()

    async def migrate(self, *, apart: bool = False) -> None:
        """Bring the schema to the newest version; a no-op when it already is.

        With `apart`, Alembic runs in a child process. A service that stays up then never holds
        it: once imported and run, Alembic keeps about 12 MB resident for the life of the
        process, for a step taken once.
        """
        if not (MIGRATIONS_DIR / "env.py").exists():
            raise StoreError(f"the migrations folder is missing at {MIGRATIONS_DIR}; "
                             "run hearthbot from a checkout of the project")
        try:
            async with self._write_lock:
                async with self.engine.begin() as connection:
                    if await connection.run_sync(_current_revision) == SCHEMA_HEAD:
                        return
                    if not apart:
                        await connection.run_sync(_upgrade_to_head)
                        return
                # The child has the database to itself: this process holds no transaction
                # (PostgreSQL's DDL would wait for one) and no writer here starts meanwhile.
                await _upgrade_apart(self.url)
        except SQLAlchemyError as exc:
            raise StoreError(f"could not prepare the database at {self.url}: {exc}") from exc

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction, committed on success; writers take turns."""
        async with self._write_lock, self._sessions() as session, session.begin():
            yield session

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self._sessions() as session:
            yield session

    async def checkpoint(self) -> None:
        """Copy SQLite's write-ahead log into the database file and empty it, so rows just
        deleted leave no older copy behind in the log. Best effort: while another process
        reads an older snapshot, the log keeps the frames it needs. Other databases: a no-op.
        """
        if not self.is_sqlite:
            return
        async with self._write_lock, self.engine.connect() as connection:
            await connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    async def close(self) -> None:
        await self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: object) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers proceed while a reply is being written.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    # Deleted rows are overwritten, not just unlinked: forgetting must not leave the text in
    # free pages of the file. Some builds have this on already; many do not.
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _skip_idle_rollbacks(engine: AsyncEngine) -> None:
    """Roll back only a connection that holds a transaction.

    SQLAlchemy rolls back every connection it returns to the pool and every session it closes,
    and aiosqlite sends each rollback to its own thread and waits for the answer: about 24
    waits per turn, most of them after a read or a commit, when SQLite holds no transaction
    and the rollback does nothing. SQLite itself says whether one is open (`in_transaction`
    reads sqlite3_get_autocommit), so an open one is still always rolled back.
    """
    dialect = engine.sync_engine.dialect
    rollback = dialect.do_rollback

    def rollback_if_open(dbapi_connection: Any) -> None:
        try:
            idle = not dbapi_connection.driver_connection.in_transaction
        except (AttributeError, ValueError):  # detached or closed: the driver's rollback decides
            idle = False
        if not idle:
            rollback(dbapi_connection)

    dialect.do_rollback = rollback_if_open  # type: ignore[method-assign]


def _current_revision(connection: Connection) -> str | None:
    if not inspect(connection).has_table("alembic_version"):
        return None
    versions = connection.execute(text("select version_num from alembic_version")).scalars()
    return next(iter(versions), None)


async def _upgrade_apart(url: str) -> None:
    # The URL goes on stdin: in the arguments any user of the machine could read its password.
    # The child imports this same checkout, however this process found it.
    path = os.pathsep.join(p for p in (str(PROJECT_DIR), os.environ.get("PYTHONPATH")) if p)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.store.db", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": path})
    _, err = await child.communicate(url.encode())
    if child.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        raise StoreError(f"could not prepare the database at {url}: "
                         f"{lines[-1] if lines else f'exit status {child.returncode}'}")


async def _upgrade_here(url: str) -> None:
    store = Store(url)
    try:
        await store.migrate()
    finally:
        await store.close()


def _upgrade_to_head(connection: Connection) -> None:
    from alembic import command
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


if __name__ == "__main__":  # the child of `Store.migrate(apart=True)`
    asyncio.run(_upgrade_here(sys.stdin.read().strip()))
