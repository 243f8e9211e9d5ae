"""Token usage and its cost, summed from the turn records.

Every model request leaves its backend's own counts on a `turns` row: a reply's requests (the
tool loop's steps) on the turn's row, a running summary's requests on a row of their own with
the status "summary", under the persona and chat whose conversation it folded. Sums are done by
the database (GROUP BY); prices come from the config per model, so a model that is no longer
configured has an unknown cost, never a made-up 0.

Cached tokens are part of the prompt tokens the backends report (OpenAI's
`prompt_tokens_details.cached_tokens`, llama-server's `cache_n`): they are priced at the
model's `cached` price, and the rest of the prompt at its `input` price.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import func, select

from bot.config import Config, CostSpec
from bot.store.db import Store
from bot.store.tables import SessionRow, TurnRow, utcnow

GroupBy = Literal["model", "persona", "chat"]
SUMMARY_STATUS = "summary"


@dataclass(frozen=True)
class Tokens:
    prompt: int = 0
    completion: int = 0
    cached: int = 0  # of the prompt tokens
    turns: int = 0

    @property
    def total(self) -> int:
        return self.prompt + self.completion

    def __add__(self, other: Tokens) -> Tokens:
        return Tokens(self.prompt + other.prompt, self.completion + other.completion,
                      self.cached + other.cached, self.turns + other.turns)


@dataclass(frozen=True)
class UsageLine:
    key: str  # the model label, persona name, or "platform:chat"
    tokens: Tokens
    cost: float | None  # None: a model it used has no configured price any more


def prices(config: Config) -> dict[str, CostSpec]:
    """Each configured model's price, by its `provider/model` label."""
    return {f"{name}/{model.id}": model.cost
            for name, provider in config.gateway.providers.items() for model in provider.models}


def cost_of(tokens: Tokens, price: CostSpec) -> float:
    uncached = max(tokens.prompt - tokens.cached, 0)
    return (uncached * price.input + tokens.cached * price.cached
            + tokens.completion * price.output) / 1_000_000


async def usage(store: Store, price_list: Mapping[str, CostSpec], *, since: datetime | None,
                by: GroupBy = "model", persona: str | None = None) -> list[UsageLine]:
    """Totals per model, persona or chat since `since` (naive UTC; None: all time), largest
    first."""
    key = {"model": TurnRow.model, "persona": TurnRow.persona,
           "chat": func.coalesce(TurnRow.platform, "?") + ":" + func.coalesce(TurnRow.chat_id,
                                                                              "?")}[by]
    query = (select(key, TurnRow.model, func.coalesce(func.sum(TurnRow.prompt_tokens), 0),
                    func.coalesce(func.sum(TurnRow.completion_tokens), 0),
                    func.coalesce(func.sum(TurnRow.cached_tokens), 0), func.count())
             .group_by(key, TurnRow.model))
    if since is not None:
        query = query.where(TurnRow.received_at >= since)
    if persona is not None:
        query = query.where(TurnRow.persona == persona)
    async with store.read() as session:
        rows = (await session.execute(query)).all()
    totals: dict[str, Tokens] = {}
    costs: dict[str, float | None] = {}
    for group, model, prompt, completion, cached, turns in rows:
        tokens = Tokens(int(prompt or 0), int(completion or 0), int(cached or 0), int(turns))
        totals[group] = totals.get(group, Tokens()) + tokens
        price = price_list.get(model)
        known = costs.get(group, 0.0)
        costs[group] = None if price is None or known is None else known + cost_of(tokens, price)
    lines = [UsageLine(group, tokens, costs[group]) for group, tokens in totals.items()]
    return sorted(lines, key=lambda line: (-line.tokens.total, line.key))


def day_start(now: datetime | None = None) -> datetime:
    """00:00 UTC of the day `now` (naive UTC) falls in: the budgets' day."""
    moment = now or utcnow()
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


async def spent_today(store: Store, price_list: Mapping[str, CostSpec],
                      persona: str) -> UsageLine:
    """What a persona has used since 00:00 UTC; a cost of None means some of it was on a
    model without a configured price."""
    lines = await usage(store, price_list, since=day_start(), by="persona", persona=persona)
    return lines[0] if lines else UsageLine(persona, Tokens(), 0.0)


def resets_in(now: datetime | None = None) -> str:
    """When the budgets' day ends, as a person says it: "00:00 UTC, in 3 h 12 min"."""
    moment = now or datetime.now(UTC).replace(tzinfo=None)
    left = day_start(moment) + timedelta(days=1) - moment
    minutes = max(int(left.total_seconds() // 60), 1)
    hours, minutes = divmod(minutes, 60)
    return "00:00 UTC, in " + (f"{hours} h {minutes} min" if hours else f"{minutes} min")


async def record_summary(store: Store, session_id: int, model: str, prompt: int | None,
                         completion: int | None, cached: int | None,
                         fallback_from: str | None = None) -> None:
    """Account for one request that wrote a running summary: a row of its own, under the
    persona and chat whose conversation it folded (their budget pays for it)."""
    if prompt is None and completion is None:
        return  # the backend counted nothing; there is nothing to account for
    now = utcnow()
    async with store.write() as session:
        owner = await session.get(SessionRow, session_id)
        if owner is None:
            return  # the conversation was forgotten meanwhile
        session.add(TurnRow(
            inbox_id=None, session_id=session_id, persona=owner.persona, model=model,
            status=SUMMARY_STATUS, received_at=now, done_at=now, prompt_tokens=prompt,
            completion_tokens=completion, cached_tokens=cached, platform=owner.platform,
            chat_id=owner.chat_id, fallback_from=fallback_from))
