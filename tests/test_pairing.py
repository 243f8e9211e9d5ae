"""Owner pairing through the gateway: the code binds a DM to admin; wrong, expired, locked."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta

from sqlalchemy import update

from bot.events import ChatKind, InboundEvent, ReplyPart, ReplyText
from bot.pairing import LOCK_AFTER_FAILURES, create_code
from bot.service import Service
from bot.store.tables import PairingCodeRow, utcnow

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


async def test_repeated_wrong_codes_lock_pairing(ollama_service: Service) -> None:
    code = await create_code(ollama_service.store)
    for attempt in range(LOCK_AFTER_FAILURES):
        await say(ollama_service, dm(f"/pair NOPE{attempt}", sender=str(700 + attempt)))
    answer = await say(ollama_service, dm(f"/pair {code}"))
    assert answer.startswith("Pairing is locked")
    assert await persona_of(ollama_service, "555") == "guest"


async def test_commands_and_odd_messages(ollama_service: Service) -> None:
    assert "I don't know that command" in await say(ollama_service, dm("/frobnicate"))
    sticker = replace(dm(""), mentioned=False)
    assert await say(ollama_service, sticker) == (
        "I can read text and voice messages, but not that kind of message yet.")
    assert await say(ollama_service, dm("", kind=ChatKind.GROUP)) == "Yes? Ask me anything."
    assert (await say(ollama_service, dm("/usr/bin is missing, why?"))) == "Hello there."
