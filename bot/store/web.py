"""What the gateway port keeps: one-time sign-in links, browser sessions and API tokens.

Every secret here is stored only as its SHA-256: the database never holds a link, a cookie or
a bearer token that could be used as it is. The values are 256 random bits, so a plain hash is
as strong as any slow one.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select

from bot.config import BindingSpec
from bot.store.bindings import add_binding, note_change
from bot.store.db import Store
from bot.store.tables import (
    ApiTokenRow,
    BindingRow,
    InboxRow,
    MessageRow,
    SessionRow,
    TurnRow,
    WebLinkRow,
    WebSessionRow,
    utcnow,
)
from bot.store.usage import SUMMARY_STATUS

# API tokens reach the router as a DM on this platform from the peer `token-<id>`, so the
# binding table decides their persona like anyone else's.
API_PLATFORM = "api"
TOKEN_PREFIX = "hb-"


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _secret() -> str:
    return secrets.token_urlsafe(32)


def token_peer(token_id: int) -> str:
    return f"token-{token_id}"


# --- sign-in links and sessions -------------------------------------------------------------

@dataclass(frozen=True)
class WebSession:
    id: int
    csrf_token: str
    expires_at: datetime


@dataclass(frozen=True)
class NewSession:
    token: str  # goes into the cookie, and nowhere else
    session: WebSession


async def create_link(store: Store, lifetime: timedelta) -> str:
    """A fresh one-time sign-in secret; expired and used links are dropped meanwhile."""
    token = _secret()
    now = utcnow()
    async with store.write() as session:
        await session.execute(delete(WebLinkRow).where(
            (WebLinkRow.expires_at <= now) | WebLinkRow.used_at.is_not(None)))
        session.add(WebLinkRow(token_hash=_hash(token), created_at=now,
                               expires_at=now + lifetime))
    return token


async def redeem_link(store: Store, token: str, lifetime: timedelta) -> NewSession | None:
    """Spend a sign-in link on a new session; None when it is unknown, used or expired."""
    now = utcnow()
    async with store.write() as session:
        link = (await session.scalars(select(WebLinkRow).where(
            WebLinkRow.token_hash == _hash(token)))).first()
        if link is None or link.used_at is not None or link.expires_at <= now:
            return None
        link.used_at = now
        await session.execute(delete(WebSessionRow).where(WebSessionRow.expires_at <= now))
        cookie = _secret()
        row = WebSessionRow(token_hash=_hash(cookie), csrf_token=_secret(), created_at=now,
                            expires_at=now + lifetime, seen_at=now)
        session.add(row)
        await session.flush()
        return NewSession(cookie, WebSession(row.id, row.csrf_token, row.expires_at))


async def session_for(store: Store, token: str) -> WebSession | None:
    """The live session a cookie names, or None."""
    async with store.read() as session:
        row = (await session.scalars(select(WebSessionRow).where(
            WebSessionRow.token_hash == _hash(token)))).first()
    if row is None or row.expires_at <= utcnow():
        return None
    return WebSession(row.id, row.csrf_token, row.expires_at)


async def end_session(store: Store, session_id: int) -> None:
    async with store.write() as session:
        await session.execute(delete(WebSessionRow).where(WebSessionRow.id == session_id))


# --- API tokens -----------------------------------------------------------------------------

@dataclass(frozen=True)
class ApiToken:
    id: int
    persona: str
    name: str
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None

    @property
    def peer(self) -> str:
        return token_peer(self.id)


def _api_token(row: ApiTokenRow) -> ApiToken:
    return ApiToken(row.id, row.persona, row.name, row.created_at, row.last_used_at,
                    row.revoked_at)


async def create_api_token(store: Store, persona: str, name: str = "") -> tuple[ApiToken, str]:
    """A new bearer token for `persona`, and its secret (shown once, never stored).

    The caller checks that the persona exists. Its binding is what makes the router answer the
    token's requests as that persona: a token is a DM with one named peer.
    """
    secret = TOKEN_PREFIX + _secret()
    async with store.write() as session:
        row = ApiTokenRow(token_hash=_hash(secret), persona=persona, name=name,
                          created_at=utcnow())
        session.add(row)
        await session.flush()
        token = _api_token(row)
    await add_binding(store, BindingSpec(persona=persona, platform=API_PLATFORM, chat_kind="dm",
                                         peer=token.peer, note=f"API token {token.id} {name}"
                                         .strip()), source="token")
    return token, secret


async def api_token_for(store: Store, secret: str) -> ApiToken | None:
    """The live token a bearer secret names (its last use is noted), or None."""
    async with store.write() as session:
        row = (await session.scalars(select(ApiTokenRow).where(
            ApiTokenRow.token_hash == _hash(secret)))).first()
        if row is None or row.revoked_at is not None:
            return None
        row.last_used_at = utcnow()
        return _api_token(row)


async def list_api_tokens(store: Store) -> list[ApiToken]:
    async with store.read() as session:
        rows = (await session.scalars(select(ApiTokenRow).order_by(ApiTokenRow.id))).all()
    return [_api_token(row) for row in rows]


async def revoke_api_token(store: Store, token_id: int) -> ApiToken | None:
    """Revoke a token and remove its binding; None when there is no such token."""
    async with store.write() as session:
        row = await session.get(ApiTokenRow, token_id)
        if row is None:
            return None
        row.revoked_at = row.revoked_at or utcnow()
        await session.execute(delete(BindingRow).where(
            BindingRow.platform == API_PLATFORM, BindingRow.peer_id == token_peer(token_id),
            BindingRow.source == "token"))
        await note_change(store, session)
        return _api_token(row)


# --- conversations the web pages show or the endpoint brings ---------------------------------

@dataclass(frozen=True)
class ShownMessage:
    role: str
    content: str
    transcribed: bool = False


async def open_messages(store: Store, platform: str, chat_id: str, persona: str,
                        limit: int = 200) -> list[ShownMessage]:
    """The newest messages of the chat's open conversation, oldest first; nothing is created."""
    async with store.read() as session:
        open_id = (await session.scalars(
            select(SessionRow.id)
            .where(SessionRow.platform == platform, SessionRow.chat_id == chat_id,
                   SessionRow.persona == persona, SessionRow.closed_at.is_(None))
            .order_by(SessionRow.id.desc()).limit(1))).first()
        if open_id is None:
            return []
        rows = (await session.scalars(
            select(MessageRow).where(MessageRow.session_id == open_id)
            .order_by(MessageRow.id.desc()).limit(limit))).all()
    return [ShownMessage(r.role, r.content, r.transcribed) for r in reversed(rows)]


async def seed_conversation(store: Store, platform: str, chat_id: str, persona: str,
                            messages: list[tuple[str, str]]) -> None:
    """Open a conversation holding `messages` (role, text) as its history: an API request
    brings its whole conversation, and the turn then reads it like any stored one."""
    async with store.write() as session:
        row = SessionRow(platform=platform, chat_id=chat_id, persona=persona, summary="")
        session.add(row)
        await session.flush()
        for role, content in messages:
            session.add(MessageRow(session_id=row.id, role=role, content=content))


# --- what the dashboard reads ---------------------------------------------------------------

@dataclass(frozen=True)
class TurnTiming:
    at: datetime
    persona: str
    model: str
    status: str
    first_token_seconds: float | None
    total_seconds: float | None
    completion_tokens: int | None

    @property
    def tokens_per_second(self) -> float | None:
        """Decode speed: tokens after the first, over the time after the first."""
        if (self.completion_tokens is None or self.completion_tokens < 2
                or self.first_token_seconds is None or self.total_seconds is None):
            return None
        decoding = self.total_seconds - self.first_token_seconds
        return (self.completion_tokens - 1) / decoding if decoding > 0 else None


async def recent_turns(store: Store, limit: int = 30) -> list[TurnTiming]:
    """The newest turns' timings, oldest first."""
    async with store.read() as session:
        rows = (await session.scalars(
            # A summary's row is accounting, not an answer anyone waited for.
            select(TurnRow).where(TurnRow.status != SUMMARY_STATUS)
            .order_by(TurnRow.id.desc()).limit(limit))).all()
    timings = []
    for row in reversed(rows):
        first = ((row.first_token_at - row.received_at).total_seconds()
                 if row.first_token_at else None)
        total = (row.done_at - row.received_at).total_seconds() if row.done_at else None
        timings.append(TurnTiming(row.received_at, row.persona, row.model, row.status, first,
                                  total, row.completion_tokens))
    return timings


async def inbox_depth(store: Store) -> int:
    """Messages stored and not yet answered."""
    async with store.read() as session:
        return await session.scalar(select(func.count()).select_from(InboxRow)
                                    .where(InboxRow.state == "received")) or 0
