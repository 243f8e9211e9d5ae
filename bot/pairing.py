"""Owner pairing: `hearthbot pair` prints a code; the owner sends `/pair CODE` to the bot in a
DM, which binds that DM to the admin persona. No ids are copied by hand.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, func, select

from bot.config import BindingSpec
from bot.events import ChatKind, InboundEvent
from bot.store import Store
from bot.store.bindings import add_binding
from bot.store.tables import PairingAttemptRow, PairingCodeRow, utcnow

log = logging.getLogger(__name__)

# No 0/O, 1/I/L: the owner may read the code off one screen and type it on another.
ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 8
CODE_LIFETIME = timedelta(hours=1)
MAX_PENDING = 3
LOCK_AFTER_FAILURES = 5
LOCK_WINDOW = timedelta(minutes=15)


@dataclass(frozen=True)
class PairingResult:
    paired: bool
    message: str


def _normalise(code: str) -> str:
    return "".join(c for c in code.upper() if c.isalnum())


def _hash(code: str) -> str:
    return hashlib.sha256(_normalise(code).encode()).hexdigest()


def display(code: str) -> str:
    return f"{code[:4]}-{code[4:]}"


async def create_code(store: Store) -> str:
    """A fresh code, valid for an hour; older pending codes beyond the newest few are dropped."""
    code = "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))
    async with store.write() as session:
        session.add(PairingCodeRow(code_hash=_hash(code), expires_at=utcnow() + CODE_LIFETIME))
        await session.flush()
        pending = (await session.scalars(
            select(PairingCodeRow.id).where(PairingCodeRow.used_at.is_(None))
            .order_by(PairingCodeRow.id.desc()).offset(MAX_PENDING))).all()
        if pending:
            await session.execute(delete(PairingCodeRow).where(PairingCodeRow.id.in_(pending)))
    return code


async def redeem(store: Store, event: InboundEvent, code: str, admin_persona: str) -> PairingResult:
    if event.chat_kind is not ChatKind.DM:
        return PairingResult(False, "Pairing only works in a direct message with me.")
    now = utcnow()
    async with store.write() as session:
        failures = await session.scalar(
            select(func.count()).select_from(PairingAttemptRow)
            .where(PairingAttemptRow.succeeded.is_(False),
                   PairingAttemptRow.at > now - LOCK_WINDOW))
        if (failures or 0) >= LOCK_AFTER_FAILURES:
            log.warning("pairing attempt by %s %s refused: pairing is locked", event.platform,
                        event.sender_id)
            return PairingResult(False, "Pairing is locked for a while after too many wrong "
                                        "codes. Try again later.")
        row = (await session.scalars(
            select(PairingCodeRow).where(PairingCodeRow.code_hash == _hash(code),
                                         PairingCodeRow.used_at.is_(None),
                                         PairingCodeRow.expires_at > now))).first()
        session.add(PairingAttemptRow(platform=event.platform, sender_id=event.sender_id,
                                      succeeded=row is not None))
        if row is None:
            log.warning("wrong or expired pairing code from %s %s (%s)", event.platform,
                        event.sender_id, event.sender_name)
            return PairingResult(False, "That pairing code isn't valid or has expired.")
        row.used_at = now
        row.used_by = f"{event.platform}:{event.sender_id}"
    await add_binding(store, BindingSpec(
        persona=admin_persona, platform=event.platform, chat_kind="dm", peer=event.sender_id,
        account=event.account, note=f"paired by {event.sender_name}"), source="pairing")
    log.info("paired %s %s (%s) as owner", event.platform, event.sender_id, event.sender_name)
    return PairingResult(True, "Paired. This chat now talks to your private admin persona.")
