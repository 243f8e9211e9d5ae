"""Reading and editing the binding table."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, delete, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Mapped

from bot.config import BindingSpec
from bot.errors import ConfigBinding
from bot.store.db import Store
from bot.store.tables import BindingRow, table


@dataclass(frozen=True)
class Binding:
    id: int
    platform: str
    persona: str
    account: str | None = None
    chat_kind: str | None = None
    peer_id: str | None = None
    group_id: str | None = None
    note: str = ""
    source: str = "cli"
    created_at: datetime | None = None


def _to_binding(row: BindingRow) -> Binding:
    return Binding(id=row.id, platform=row.platform, persona=row.persona, account=row.account,
                   chat_kind=row.chat_kind, peer_id=row.peer_id, group_id=row.group_id,
                   note=row.note, source=row.source, created_at=row.created_at)


async def list_bindings(store: Store, platform: str | None = None) -> list[Binding]:
    query = select(BindingRow).order_by(BindingRow.id)
    if platform is not None:
        query = query.where(BindingRow.platform == platform)
    async with store.read() as session:
        return [_to_binding(row) for row in (await session.scalars(query)).all()]


class BindingCache:
    """The binding table as last read, read again only once it has changed, whether this
    process changed it or another did (`hearthbot bind` beside the running service).

    Every write to the table also moves a counter in the database (SQLite's header field
    `user_version`, in the same transaction), so asking whether anything changed is one
    statement that reads no table. Other databases have no such field: there the table is read
    at every call, as before.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._seen: int | None = None
        self._rows: tuple[Binding, ...] = ()

    async def bindings(self, platform: str) -> list[Binding]:
        async with self._store.engine.connect() as connection:
            # The counter is read before the rows: a change committed in between is then
            # read now and noticed again next time, never missed.
            version = await _version(connection) if self._store.is_sqlite else None
            if version is None or version != self._seen:
                rows = table(BindingRow)
                result = await connection.execute(select(rows).order_by(rows.c.id))
                self._rows = tuple(Binding(**row._mapping) for row in result)
                self._seen = version
        return [binding for binding in self._rows if binding.platform == platform]


async def _version(connection: AsyncConnection) -> int:
    return int((await connection.exec_driver_sql("PRAGMA user_version")).scalar_one())


async def note_change(store: Store, session: AsyncSession) -> None:
    """Move the binding table's change counter, inside the transaction that changes it."""
    if store.is_sqlite:
        version = int((await session.execute(text("PRAGMA user_version"))).scalar_one())
        # A PRAGMA takes no bound parameters; the value is an int this code computed.
        await session.execute(text(f"PRAGMA user_version = {(version + 1) % 2**31}"))


async def add_binding(store: Store, spec: BindingSpec, *, source: str = "cli") -> Binding:
    """Add a binding, or return the existing one that matches the same chats.

    An existing row with the same match columns is updated to the new persona, so `bind` run
    twice leaves one row, not two competing ones.
    """
    async with store.write() as session:
        query = select(BindingRow).where(
            BindingRow.platform == spec.platform,
            _same(BindingRow.account, spec.account),
            _same(BindingRow.chat_kind, spec.chat_kind),
            _same(BindingRow.peer_id, spec.peer),
            _same(BindingRow.group_id, spec.group),
        )
        row = (await session.scalars(query)).first()
        if row is None:
            row = BindingRow(platform=spec.platform, account=spec.account,
                             chat_kind=spec.chat_kind, peer_id=spec.peer, group_id=spec.group,
                             persona=spec.persona, note=spec.note, source=source)
            session.add(row)
            changed = True
        else:
            changed = (row.persona, row.note) != (spec.persona, spec.note or row.note)
            row.persona = spec.persona
            row.note = spec.note or row.note
        await session.flush()
        if changed:  # the config's bindings are seeded at every start, mostly unchanged
            await note_change(store, session)
        return _to_binding(row)


async def remove_binding(store: Store, binding_id: int) -> Binding | None:
    """Remove a binding added at run time; returns it, or None when there is no such row.

    A binding from the config is not removed here (the next start would bring it back): it
    raises ConfigBinding so the caller can say to edit the config instead.
    """
    async with store.write() as session:
        row = await session.get(BindingRow, binding_id)
        if row is None:
            return None
        if row.source == "config":
            raise ConfigBinding(binding_id)
        await session.delete(row)
        await note_change(store, session)
        return _to_binding(row)


async def seed_bindings(store: Store, specs: tuple[BindingSpec, ...]) -> None:
    """Make the table hold exactly the config's bindings (beside those added at run time).

    Running this at every start changes nothing twice; a binding taken out of the config is
    taken out of the table too, so removing an admin binding from the file really revokes it.
    """
    kept = {(await add_binding(store, spec, source="config")).id for spec in specs}
    async with store.write() as session:
        result = await session.execute(delete(BindingRow).where(
            BindingRow.source == "config", BindingRow.id.not_in(kept)))
        if cast("CursorResult[Any]", result).rowcount:
            await note_change(store, session)


def _same(column: Mapped[str | None], value: str | None) -> ColumnElement[bool]:
    # NULL means "any" in a binding, and SQL's NULL never equals NULL.
    return column.is_(None) if value is None else column == value
