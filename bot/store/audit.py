"""The tool audit: what each tool call was, for whom, and what became of it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from bot.store.db import Store
from bot.store.tables import ToolCallRow, utcnow

# Outcomes, as stored.
ALLOWED = "ok"  # allowed, ran, produced a result
REFUSED = "refused"  # the policy, the owner or a confinement rule said no; nothing ran
FAILED = "failed"  # allowed, but it failed or ran out of time
UNKNOWN = "unknown"  # no tool has that exact name


@dataclass(frozen=True)
class ToolCallRecord:
    persona: str
    platform: str
    chat_id: str
    tool: str
    arguments: str  # JSON, secrets already masked
    outcome: str
    error: str | None = None
    duration_ms: int = 0
    at: datetime | None = None
    id: int | None = None


async def record_tool_call(store: Store, record: ToolCallRecord) -> int:
    row = ToolCallRow(persona=record.persona, platform=record.platform,
                      chat_id=record.chat_id, tool=record.tool[:128],
                      arguments=record.arguments, outcome=record.outcome, error=record.error,
                      duration_ms=record.duration_ms, at=record.at or utcnow())
    async with store.write() as session:
        session.add(row)
        await session.flush()
        return row.id


async def read_audit(store: Store, *, since: datetime | None = None,
                     persona: str | None = None, limit: int = 500) -> list[ToolCallRecord]:
    """The newest `limit` tool calls, in the order they happened; `since` is naive UTC."""
    query = select(ToolCallRow).order_by(ToolCallRow.at.desc(), ToolCallRow.id.desc())
    if since is not None:
        query = query.where(ToolCallRow.at >= since)
    if persona is not None:
        query = query.where(ToolCallRow.persona == persona)
    async with store.read() as session:
        rows = (await session.execute(query.limit(limit))).scalars().all()
    return [ToolCallRecord(persona=r.persona, platform=r.platform, chat_id=r.chat_id,
                           tool=r.tool, arguments=r.arguments, outcome=r.outcome,
                           error=r.error, duration_ms=r.duration_ms, at=r.at, id=r.id)
            for r in reversed(rows)]
