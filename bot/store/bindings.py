"""Reading and editing the binding table."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Mapped

from bot.config import BindingSpec
from bot.store.db import Store
from bot.store.tables import BindingRow


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
        else:
            row.persona = spec.persona
            row.note = spec.note or row.note
        await session.flush()
        return _to_binding(row)


async def remove_binding(store: Store, binding_id: int) -> bool:
    async with store.write() as session:
        row = await session.get(BindingRow, binding_id)
        if row is None:
            return False
        await session.delete(row)
        return True


async def seed_bindings(store: Store, specs: tuple[BindingSpec, ...]) -> None:
    """Make the config's bindings present; running this at every start changes nothing twice."""
    for spec in specs:
        await add_binding(store, spec, source="config")


def _same(column: Mapped[str | None], value: str | None) -> ColumnElement[bool]:
    # NULL means "any" in a binding, and SQL's NULL never equals NULL.
    return column.is_(None) if value is None else column == value
