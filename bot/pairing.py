"""Owner pairing: `hearthbot pair` prints a code; the owner sends `/pair CODE` to the bot in a
DM, which binds that DM to the admin persona. No ids are copied by hand.

Wrong codes are limited twice, and neither limit can lock the owner out:

- **Per sender**: 5 wrong codes in any 15 minutes from one platform account, after which that
  account's `/pair` is refused without being checked until its oldest failure is 15 minutes
  old. A stranger can only lock themself out.
- **Globally**: 30 wrong codes in any 15 minutes from everyone together lock pairing against
  brute force spread over many accounts. The lock applies only to codes created while it was
  not in force. A code `hearthbot pair` prints while the lock is on stays redeemable for its
  whole hour, so the owner, told "locked", runs `hearthbot pair` again and uses the new code.

Why not the alternatives: if a fresh code opened a new global window, six accounts could spend
the new window the moment "locked" turned into "wrong code", shutting the owner out again;
if only codes older than the start of the current lock were refused, an attacker who paused
and locked again would catch the owner's fresh code. Whether the lock was on when a code was
created is a count over the stored attempt times, so no extra state is kept.

The numbers: a code is 8 characters of 31, 31^8 = 852,891,037,441 (about 8.5e11)
possibilities; a code lives one hour and at most 3 are pending. One sender gets 20 guesses an
hour: a chance of about 7e-11 an hour. Outside a lock, everyone together gets at most 120
guesses an hour against the codes made before it: about 4e-10. Codes made during a lock meet
only the per-sender limit: even 10,000 accounts guessing in step reach about 7e-7 an hour.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

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
LOCK_WINDOW = timedelta(minutes=15)
SENDER_FAILURE_LIMIT = 5
GLOBAL_FAILURE_LIMIT = 30
# Attempts are needed for an hour and a quarter (a code's life plus a window); a day of them
# is kept to read back after an attack, then dropped: they name who tried.
ATTEMPTS_KEPT = timedelta(days=1)

WRONG_CODE = "That pairing code isn't valid or has expired."
SENDER_LOCKED = ("Too many wrong pairing codes from you. Try again in "
                 f"{int(LOCK_WINDOW.total_seconds() // 60)} minutes.")
GLOBALLY_LOCKED = ("Pairing is locked for a while after too many wrong codes. If you are the "
                   "owner, run `hearthbot pair` again and send the new code.")


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
        await session.execute(delete(PairingAttemptRow)
                              .where(PairingAttemptRow.at < now - ATTEMPTS_KEPT))
        mine = await _failures(session, now, platform=event.platform, sender=event.sender_id)
        if mine >= SENDER_FAILURE_LIMIT:
            # Not recorded: a locked-out sender cannot push their own lock further out.
            log.warning("pairing attempt by %s %s refused: too many wrong codes from them",
                        event.platform, event.sender_id)
            return PairingResult(False, SENDER_LOCKED)
        row = (await session.scalars(
            select(PairingCodeRow).where(PairingCodeRow.code_hash == _hash(code),
                                         PairingCodeRow.used_at.is_(None),
                                         PairingCodeRow.expires_at > now))).first()
        locked = await _failures(session, now) >= GLOBAL_FAILURE_LIMIT
        usable = row is not None and (
            not locked or await _failures(session, row.created_at) >= GLOBAL_FAILURE_LIMIT)
        # Every refused code counts against its sender, locked or not: the check above is the
        # only thing that bounds one account's guesses at codes made during a lock.
        session.add(PairingAttemptRow(platform=event.platform, sender_id=event.sender_id,
                                      succeeded=usable, at=now))
        if locked and not usable:
            log.warning("pairing attempt by %s %s refused: pairing is locked for codes made "
                        "before the lock", event.platform, event.sender_id)
            return PairingResult(False, GLOBALLY_LOCKED)
        if row is None:
            log.warning("wrong or expired pairing code from %s %s (%s)", event.platform,
                        event.sender_id, event.sender_name)
            return PairingResult(False, WRONG_CODE)
        row.used_at = now
        row.used_by = f"{event.platform}:{event.sender_id}"
    await add_binding(store, BindingSpec(
        persona=admin_persona, platform=event.platform, chat_kind="dm", peer=event.sender_id,
        account=event.account, note=f"paired by {event.sender_name}"), source="pairing")
    log.info("paired %s %s (%s) as owner", event.platform, event.sender_id, event.sender_name)
    return PairingResult(True, "Paired. This chat now talks to your private admin persona.")


async def _failures(session: AsyncSession, at: datetime, *, platform: str | None = None,
                    sender: str | None = None) -> int:
    """Wrong codes in the window that ends at `at`, from everyone or from one sender."""
    query = (select(func.count()).select_from(PairingAttemptRow)
             .where(PairingAttemptRow.succeeded.is_(False),
                    PairingAttemptRow.at > at - LOCK_WINDOW, PairingAttemptRow.at <= at))
    if platform is not None:
        query = query.where(PairingAttemptRow.platform == platform,
                            PairingAttemptRow.sender_id == sender)
    return await session.scalar(query) or 0
