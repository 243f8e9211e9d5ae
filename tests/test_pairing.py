"""Owner pairing through the gateway: the code binds a DM to admin; wrong, expired, locked."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta

from sqlalchemy import func, select, update

from bot.events import ChatKind, InboundEvent, ReplyPart, ReplyText
from bot.pairing import (
    GLOBAL_FAILURE_LIMIT,
    GLOBALLY_LOCKED,
    LOCK_WINDOW,
    SENDER_FAILURE_LIMIT,
    SENDER_LOCKED,
    WRONG_CODE,
    create_code,
)
from bot.service import Service
from bot.store.tables import PairingAttemptRow, PairingCodeRow, utcnow

counter = iter(range(1, 1_000_000))


def dm(text: str, sender: str = "555", kind: ChatKind = ChatKind.DM) -> InboundEvent:
    return InboundEvent(platform="telegram", chat_id=sender if kind is ChatKind.DM else "-9",
                        chat_kind=kind, sender_id=sender, sender_name="Owner",
                        message_id=str(next(counter)), text=text, mentioned=True,
                        group_id=None if kind is ChatKind.DM else "-9")


async def say(service: Service, event: InboundEvent) -> str:
    """What the bot answered to this event; fails if it answered nothing or twice."""
    replies: list[str] = []

    async def collect(_event: InboundEvent, reply: AsyncIterator[ReplyPart]) -> None:
        replies.append("".join([p.text async for p in reply if isinstance(p, ReplyText)]))

    await service.gateway.handle(event, collect)
    (answer,) = replies
    return answer


async def persona_of(service: Service, sender: str) -> str:
    return (await service.gateway.resolve(dm("hi", sender))).persona


async def test_pairing_happy_path(ollama_service: Service) -> None:
    code = await create_code(ollama_service.store)
    assert await persona_of(ollama_service, "555") == "guest"
    answer = await say(ollama_service, dm(f"/pair {code[:4]}-{code[4:].lower()}"))
    assert answer.startswith("Paired.")
    assert await persona_of(ollama_service, "555") == "admin"
    whoami = await say(ollama_service, dm("/whoami"))
    assert whoami == "You are talking to the admin persona (admin)."
    # A code works once.
    assert "isn't valid" in await say(ollama_service, dm(f"/pair {code}", sender="666"))
    assert await persona_of(ollama_service, "666") == "guest"


async def test_wrong_code_is_refused(ollama_service: Service) -> None:
    await create_code(ollama_service.store)
    assert await say(ollama_service, dm("/pair WRONGCODE")) == (
        "That pairing code isn't valid or has expired.")
    assert await persona_of(ollama_service, "555") == "guest"


async def test_expired_code_is_refused(ollama_service: Service) -> None:
    code = await create_code(ollama_service.store)
    async with ollama_service.store.write() as session:
        await session.execute(update(PairingCodeRow).values(
            expires_at=utcnow() - timedelta(seconds=1)))
    assert "isn't valid or has expired" in await say(ollama_service, dm(f"/pair {code}"))
    assert await persona_of(ollama_service, "555") == "guest"


async def test_pairing_in_a_group_is_refused(ollama_service: Service) -> None:
    code = await create_code(ollama_service.store)
    answer = await say(ollama_service, dm(f"/pair {code}", kind=ChatKind.GROUP))
    assert answer == "Pairing only works in a direct message with me."


async def test_a_strangers_wrong_codes_do_not_lock_the_owner_out(
        ollama_service: Service) -> None:
    code = await create_code(ollama_service.store)
    answers = [await say(ollama_service, dm(f"/pair NOPE{n}", sender="666")) for n in range(8)]
    assert answers == [WRONG_CODE] * SENDER_FAILURE_LIMIT + [SENDER_LOCKED] * 3
    assert (await say(ollama_service, dm(f"/pair {code}"))).startswith("Paired.")
    assert await persona_of(ollama_service, "555") == "admin"


async def test_a_sender_is_limited_on_their_own_until_the_window_passes(
        ollama_service: Service) -> None:
    code = await create_code(ollama_service.store)
    for n in range(SENDER_FAILURE_LIMIT):
        assert await say(ollama_service, dm(f"/pair NOPE{n}")) == WRONG_CODE
    # Even the right code is not checked for this sender now, and asking again does not
    # extend the lock: refused attempts are not recorded.
    assert await say(ollama_service, dm(f"/pair {code}")) == SENDER_LOCKED
    assert await say(ollama_service, dm(f"/pair {code}")) == SENDER_LOCKED
    assert await attempts(ollama_service, "555") == SENDER_FAILURE_LIMIT
    assert await persona_of(ollama_service, "555") == "guest"
    await travel(ollama_service, LOCK_WINDOW)
    assert (await say(ollama_service, dm(f"/pair {code}"))).startswith("Paired.")


async def test_many_senders_together_reach_the_global_ceiling(ollama_service: Service) -> None:
    code = await create_code(ollama_service.store)
    await wrong_codes_from_many_senders(ollama_service, GLOBAL_FAILURE_LIMIT - 1)
    # One short of the ceiling pairing still works; at the ceiling it is locked for everyone,
    # for the codes that existed before the lock.
    spare = await create_code(ollama_service.store)
    await wrong_codes_from_many_senders(ollama_service, 1, first=100)
    assert await say(ollama_service, dm(f"/pair {code}")) == GLOBALLY_LOCKED
    assert await say(ollama_service, dm(f"/pair {spare}", sender="777")) == GLOBALLY_LOCKED
    assert await persona_of(ollama_service, "555") == "guest"
    assert await persona_of(ollama_service, "777") == "guest"
    # A guess made under the lock still counts against its sender.
    assert await say(ollama_service, dm("/pair NOPE", sender="888")) == GLOBALLY_LOCKED
    assert await attempts(ollama_service, "888") == 1
    # The lock lifts once the wrong codes are older than the window.
    await travel(ollama_service, LOCK_WINDOW)
    assert (await say(ollama_service, dm(f"/pair {code}"))).startswith("Paired.")


async def test_the_owners_fresh_code_works_under_a_global_lock(ollama_service: Service) -> None:
    old = await create_code(ollama_service.store)
    await wrong_codes_from_many_senders(ollama_service, GLOBAL_FAILURE_LIMIT)
    assert await say(ollama_service, dm(f"/pair {old}")) == GLOBALLY_LOCKED
    fresh = await create_code(ollama_service.store)  # the owner runs `hearthbot pair` again
    # The attacker lets the lock lapse and locks again; the code made under the first lock
    # stays usable, the one made before it does not.
    await travel(ollama_service, LOCK_WINDOW)
    await wrong_codes_from_many_senders(ollama_service, GLOBAL_FAILURE_LIMIT, first=100)
    assert await say(ollama_service, dm(f"/pair {old}", sender="777")) == GLOBALLY_LOCKED
    assert (await say(ollama_service, dm(f"/pair {fresh}"))).startswith("Paired.")
    assert await persona_of(ollama_service, "555") == "admin"


async def wrong_codes_from_many_senders(service: Service, count: int, first: int = 0) -> None:
    for n in range(first, first + count):
        sender = str(9000 + n // SENDER_FAILURE_LIMIT)
        assert await say(service, dm(f"/pair NOPE{n}", sender=sender)) in (WRONG_CODE,
                                                                        GLOBALLY_LOCKED)


async def attempts(service: Service, sender: str) -> int:
    async with service.store.read() as session:
        return await session.scalar(select(func.count()).select_from(PairingAttemptRow)
                                    .where(PairingAttemptRow.sender_id == sender)) or 0


async def travel(service: Service, span: timedelta) -> None:
    """Let `span` (and a second) pass for pairing: every stored time moves back by it."""
    span += timedelta(seconds=1)
    async with service.store.write() as session:  # SQLite has no arithmetic on its times
        for attempt in (await session.scalars(select(PairingAttemptRow))).all():
            attempt.at -= span
        for code in (await session.scalars(select(PairingCodeRow))).all():
            code.created_at -= span
            code.expires_at -= span


async def test_commands_and_odd_messages(ollama_service: Service) -> None:
    assert "I don't know that command" in await say(ollama_service, dm("/frobnicate"))
    sticker = replace(dm(""), mentioned=False)
    assert await say(ollama_service, sticker) == (
        "I can read text, voice messages and images, but not that kind of message yet.")
    assert await say(ollama_service, dm("", kind=ChatKind.GROUP)) == "Yes? Ask me anything."
    assert (await say(ollama_service, dm("/usr/bin is missing, why?"))) == "Hello there."
