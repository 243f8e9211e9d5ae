"""What Discord sends cannot stop the ollama_service, and what is not for the bot is not kept: the
real discord.py client against the fake Discord, the real store."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

from bot.events import MessageStatus
from bot.service import Service
from tests.fakes.discord import FakeDiscord
from tests.fakes.llm_backends import FakeOllama, ScriptedReply
from tests.support.discord import (
    STRANGER_ID,
    barrier,
    bot_messages,
    serving,
    settled,
    state,
    taken,
)
from tests.support.helpers import chat_requests, db_rows, until

MALFORMED = [
    ("MESSAGE_DELETE", {"v": "0"}),
    ("MESSAGE_CREATE", {"id": "1"}),
    ("MESSAGE_CREATE", {"id": "x", "channel_id": None, "author": "nobody", "content": 5}),
    ("MESSAGE_UPDATE", []),
    ("GUILD_CREATE", {"id": "not-a-snowflake"}),
    ("CHANNEL_CREATE", None),
    ("TYPING_START", {"user_id": {}}),
    ("A_FUTURE_EVENT", {"anything": True}),
]


async def test_malformed_dispatches_are_quarantined_and_the_client_lives_on(
        fake_discord: FakeDiscord, ollama_service: Service, fake_ollama: FakeOllama) -> None:
    async with serving(ollama_service) as adapter:
        for event, data in MALFORMED:
            fake_discord.dispatch_as_is(event, data)
        msg = fake_discord.dm(author_id=STRANGER_ID, author_name="stranger", content="hi")
        assert await settled(ollama_service, msg) == MessageStatus.ANSWERED
        await barrier(fake_discord, adapter)
    reply = bot_messages(fake_discord, fake_discord.dm_channel_id(STRANGER_ID))
    assert [m["content"] for m in reply] == ["Hello there."]
    quarantined = db_rows(ollama_service, "select ref from quarantine")
    assert ("dispatch MESSAGE_DELETE",) in quarantined
    assert fake_discord.identifies == 1, "the connection was never lost"


def _disk_bytes(path: Path) -> tuple[int, int]:
    """The database file's size, and its write-ahead log's."""
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size, wal.stat().st_size if wal.exists() else 0


async def test_ten_thousand_unaddressed_messages_leave_nothing_behind(
        fake_discord: FakeDiscord, ollama_service: Service, fake_ollama: FakeOllama) -> None:
    path = Path(ollama_service.config.store_url().split("///", 1)[1])

    async def chatter(count: int, adapter: object) -> None:
        last: dict[str, object] = {}
        for n in range(count):
            last = fake_discord.guild_message(author_id=STRANGER_ID, author_name="s",
                                              content=f"just talking among ourselves, {n}")
            if n % 500 == 499:  # let the client keep up, as a real gateway paces itself
                await taken(adapter, last)  # type: ignore[arg-type]
                fake_discord.forget_history()  # the fake shares this process; it keeps nothing
        await taken(adapter, last)  # type: ignore[arg-type]

    async with serving(ollama_service, message_content_intent=True) as adapter:
        await chatter(1_000, adapter)  # caches and pools reach their working size
        size_before, _ = _disk_bytes(path)
        gc.collect()
        tracemalloc.start()  # counts what is allocated from here on and still held
        try:
            await chatter(5_000, adapter)
            gc.collect()
            held_half, _ = tracemalloc.get_traced_memory()
            await chatter(5_000, adapter)
            gc.collect()
            held, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        size_after, wal_after = _disk_bytes(path)
    assert db_rows(ollama_service, "select count(*) from inbox") == [(0,)]
    assert size_after == size_before
    # The WAL is capped by SQLite's checkpoints; nothing was written for these messages.
    assert wal_after < 4 * 1024 * 1024
    # Keeping them would take several MB (each parsed message alone is over 1 KB); what the
    # service holds does not grow with them.
    assert held < 1024 * 1024 and held - held_half < 128 * 1024, (held_half, held)
    assert chat_requests(fake_ollama) == 0


async def test_unaddressed_voice_notes_are_heard_only_within_the_hourly_budget(
        ollama_service: Service) -> None:
    from dataclasses import replace

    from bot.config import VoiceSpec
    from bot.events import ChatKind, InboundEvent, VoiceAttachment
    from bot.gateway import Gateway
    from bot.voice.speech import Speech

    def group_voice(n: int, mentioned: bool = False) -> InboundEvent:
        return InboundEvent(platform="discord", chat_id="5", chat_kind=ChatKind.GROUP,
                            sender_id="9", sender_name="s", message_id=str(n), group_id="4",
                            mentioned=mentioned,
                            voice=VoiceAttachment("audio/ogg", 2.0, ref=str(n)))

    speech = Speech(replace(VoiceSpec(), unaddressed_per_hour=2))
    try:
        gateway = Gateway(ollama_service.store, ollama_service.models,
                          ollama_service.gateway.personas, speech)
        assert [gateway.wants(group_voice(n)) for n in range(4)] == [True, True, False, False]
        assert gateway.wants(group_voice(5, mentioned=True))  # addressed: always
        text_only = replace(group_voice(6), voice=None)
        assert not gateway.wants(text_only)
    finally:
        await speech.close()
    # A ollama_service without speech cannot hear them at all, so it keeps none.
    assert not ollama_service.gateway.wants(group_voice(7))


async def test_an_answer_whose_record_a_crash_beat_is_found_and_replaced(
        fake_discord: FakeDiscord, ollama_service: Service, fake_ollama: FakeOllama) -> None:
    """A kill between Discord's answer to a send and the record of it leaves a message no
    record names; the next start finds it by its reference to the question and removes it."""
    fake_ollama.script(ScriptedReply(chunks=tuple(f"word{n} " for n in range(60)),
                                     token_delay=0.05),
                       ScriptedReply(chunks=("The whole answer, at last.",)))
    async with serving(ollama_service):
        question = fake_discord.guild_message(author_id=STRANGER_ID, author_name="stranger",
                                              content="tell me everything", mention_bot=True)
        await until(lambda: bot_messages(fake_discord, fake_discord.channel_id),
                    "the partial answer to be on the channel")
        (partial,) = bot_messages(fake_discord, fake_discord.channel_id)
        await until(lambda: db_rows(ollama_service, "select sent from inbox "
                                    "where sent is not null"), "the partial answer recorded")
    # As the kill would have left it: the message is there, its record is not.
    db_rows(ollama_service, "update inbox set sent = null")
    assert await state(ollama_service, question) is MessageStatus.RECEIVED

    async with serving(ollama_service):
        assert await settled(ollama_service, question) is MessageStatus.ANSWERED
    answers = bot_messages(fake_discord, fake_discord.channel_id)
    assert [m["content"] for m in answers] == ["The whole answer, at last."]
    assert answers[0]["message_reference"]["message_id"] == question["id"]
    deletes = [c for c in fake_discord.calls if c.method == "DELETE"]
    assert [c.path.rsplit("/", 1)[1] for c in deletes] == [partial["id"]]
