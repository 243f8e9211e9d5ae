"""Alembic environment. The service runs migrations itself at start (bot.store.db.Store.migrate),
handing its connection in; `alembic -c migrations/alembic.ini ...` works too for development."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from bot.store.tables import Base

target_metadata = Base.metadata


def run_with(connection: Connection) -> None:
    # Batch mode lets later migrations alter SQLite tables (SQLite has little ALTER TABLE).
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


async def run_from_url(url: str) -> None:
    engine = create_async_engine(url)
    async with engine.begin() as connection:
        await connection.run_sync(run_with)
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=context.config.get_main_option("sqlalchemy.url"),
                      target_metadata=target_metadata, render_as_batch=True,
                      literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif (shared := context.config.attributes.get("connection")) is not None:
    run_with(shared)
else:
    asyncio.run(run_from_url(context.config.get_main_option("sqlalchemy.url") or ""))
