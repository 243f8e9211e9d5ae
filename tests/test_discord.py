"""The Discord adapter end to end: the real discord.py client against the fake Discord on
127.0.0.1, the real gateway and store, and the fake_discord Ollama as the model."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import discord
import pytest

from adapters.discord import (
    BAD_TOKEN,
    MISSING_INTENT,
    TEXT_LIMIT,
    TOKEN_ENV,
)
from bot import cli
from bot.config import BindingSpec
from bot.errors import AdapterStartError, PlatformUnavailable
from bot.events import ChatKind, InboundEvent, MessageStatus, VoiceAttachment
from bot.service import Service
from bot.store.bindings import add_binding
from persona.personas import ADMIN_PROMPT, GUEST_PROMPT
from tests.fakes.discord import (
    INTENT_DIRECT_MESSAGES,
    INTENT_GUILD_MESSAGES,
    INTENT_MESSAGE_CONTENT,
    FakeDiscord,
)
from tests.fakes.llm_backends import FakeOllama, ScriptedReply
from tests.support.discord import (
    BYSTANDER_ID,
    EDIT_INTERVAL,
    OTHER_BOT_ID,
    STRANGER_ID,
    TOKEN,
    barrier,
    bot_messages,
    make_adapter,
    serving,
    settled,
    started,
    state,
    stop,
    taken,
)
from tests.support.helpers import (
    FENCE,
    WAIT_LIMIT,
    chat_requests,
    code_reply_of_length,
    db_rows,
    system_prompt,
    until,
    user_text,
)

OGG = b"OggS\x00\x02" + bytes(range(256)) * 4  # stand-in bytes; nothing decodes them here


# ---- harness ---------------------------------------------------------------------------------


@pytest.fixture
async def service(ollama_service: Service, fake_discord: FakeDiscord) -> Service:
    """The owner (the guild's owner in the fake) is bound to admin for DMs, as pairing would."""
    await add_binding(ollama_service.store, BindingSpec(
        persona="admin", platform="discord", chat_kind="dm", peer=str(fake_discord.owner_id)))
    return ollama_service


def writes(fake_discord: FakeDiscord, channel_id: int) -> list[Any]:
    """Creates and edits in one channel, in the order the fake received them."""
    prefix = f"/channels/{channel_id}/messages"
    return [c for c in fake_discord.calls
            if c.path.startswith(prefix) and c.method in ("POST", "PATCH")]


def assert_paced(calls: list[Any], floor: float) -> None:
    gaps = [later.at - earlier.at for earlier, later in pairwise(calls)]
    assert all(gap >= floor for gap in gaps), gaps


def record_events(monkeypatch: pytest.MonkeyPatch, service: Service) -> list[InboundEvent]:
    """Every event the adapter hands to the gateway, as parsed (kept or dropped)."""
    seen: list[InboundEvent] = []
    wants = service.gateway.wants

    def spy(event: InboundEvent) -> bool:
        seen.append(event)
        return wants(event)

    monkeypatch.setattr(service.gateway, "wants", spy)
    return seen


def chunked(text: str, size: int) -> tuple[str, ...]:
    return tuple(text[i:i + size] for i in range(0, len(text), size))


# ---- login and the first messages ------------------------------------------------------------


async def test_login_ready_and_guild(fake_discord: FakeDiscord, service: Service) -> None:
    async with serving(service) as adapter:
        client = adapter.client
        assert client is not None and client.user is not None
        assert client.user.id == fake_discord.bot_id
        guild = client.get_guild(fake_discord.guild_id)
        assert guild is not None and guild.self_role is not None
        assert guild.get_channel(fake_discord.channel_id) is not None
    assert [c.path for c in fake_discord.calls[:2]] == ["/users/@me", "/oauth2/applications/@me"]
    hello_to_ready = [f["op"] for f in fake_discord.gateway_frames if f["op"] in (2, 6)]
    assert hello_to_ready == [2] and fake_discord.identifies == 1


@pytest.mark.parametrize("content_intent", [False, True])
async def test_intents_ask_for_messages_and_content_only_when_configured(
        fake_discord: FakeDiscord, service: Service, content_intent: bool) -> None:
    async with serving(service, message_content_intent=content_intent):
        pass
    identify = next(f for f in fake_discord.gateway_frames if f["op"] == 2)
    intents = int(identify["d"]["intents"])
    assert intents & INTENT_GUILD_MESSAGES and intents & INTENT_DIRECT_MESSAGES
    assert bool(intents & INTENT_MESSAGE_CONTENT) is content_intent


async def test_dm_from_the_bound_owner_gets_admin(fake_discord: FakeDiscord, service: Service,
                                                  fake_ollama: FakeOllama) -> None:
    async with serving(service):
        msg = fake_discord.dm(author_id=fake_discord.owner_id, author_name="owner",
                              content="status?")
        assert await settled(service, msg) == MessageStatus.ANSWERED
    assert system_prompt(fake_ollama) == ADMIN_PROMPT
    assert user_text(fake_ollama) == "status?"
    dm = fake_discord.dm_channel_id(fake_discord.owner_id)
    (reply,) = bot_messages(fake_discord, dm)
    assert reply["content"] == "Hello there."
    (create,) = fake_discord.calls_to("POST", f"/channels/{dm}/messages")
    assert "message_reference" not in create.json  # a DM is answered plainly


async def test_dm_from_a_stranger_gets_guest(fake_discord: FakeDiscord, service: Service,
                                             fake_ollama: FakeOllama) -> None:
    async with serving(service):
        msg = fake_discord.dm(author_id=STRANGER_ID, author_name="stranger", content="hi")
        assert await settled(service, msg) == MessageStatus.ANSWERED
    assert system_prompt(fake_ollama) == GUEST_PROMPT
    stranger_dm = fake_discord.dm_channel_id(STRANGER_ID)
    assert [m["content"] for m in bot_messages(fake_discord, stranger_dm)] == [
        "Hello there."]


async def test_guild_mention_gets_a_guest_reply_referencing_the_message(
        fake_discord: FakeDiscord, service: Service, fake_ollama: FakeOllama,
        monkeypatch: pytest.MonkeyPatch) -> None:
    events = record_events(monkeypatch, service)
    async with serving(service):
        # The owner is admin in a DM only; in a server the bot is always the guest.
        msg = fake_discord.guild_message(author_id=fake_discord.owner_id, author_name="owner",
                                 content="what is 2+2?", mention_bot=True)
        assert await settled(service, msg) == MessageStatus.ANSWERED
    assert system_prompt(fake_ollama) == GUEST_PROMPT
    assert user_text(fake_ollama) == "what is 2+2?"  # the mention itself is not the question
    (event,) = events
    assert (event.chat_kind, event.chat_id, event.group_id) == (
        ChatKind.GROUP, str(fake_discord.channel_id), str(fake_discord.guild_id))
    assert (event.sender_id, event.sender_name) == (str(fake_discord.owner_id), "owner")
    assert event.mentioned and not event.reply_to_bot
    (create,) = fake_discord.calls_to("POST", f"/channels/{fake_discord.channel_id}/messages")
    assert int(create.json["message_reference"]["message_id"]) == int(msg["id"])
    assert create.json["allowed_mentions"] == {"parse": [], "replied_user": False}
    (reply,) = bot_messages(fake_discord, fake_discord.channel_id)
    assert reply["content"] == "Hello there."
    assert reply["type"] == 19 and reply["referenced_message"]["id"] == msg["id"]


async def test_guild_message_without_mention_gets_nothing(
        fake_discord: FakeDiscord, service: Service, fake_ollama: FakeOllama) -> None:
    async with serving(service, message_content_intent=True) as adapter:
        msg = fake_discord.guild_message(author_id=STRANGER_ID, author_name="stranger",
                                 content="anyone around?")
        await taken(adapter, msg)
    assert await state(service, msg) is None  # not addressed: never even stored
    assert chat_requests(fake_ollama) == 0
    assert fake_discord.calls_to("POST", f"/channels/{fake_discord.channel_id}/typing") == []
    assert fake_discord.calls_to("POST", f"/channels/{fake_discord.channel_id}/messages") == []


async def test_everyone_and_a_reply_to_someone_else_do_not_address_the_bot(
        fake_discord: FakeDiscord, service: Service, fake_ollama: FakeOllama) -> None:
    async with serving(service, message_content_intent=True) as adapter:
        other = fake_discord.guild_message(author_id=BYSTANDER_ID, author_name="b",
                                           content="hi all")
        reply = fake_discord.guild_message(author_id=STRANGER_ID, author_name="s", content="hi b",
                                   reply_to=int(other["id"]))
        everyone = {**other, "id": "999999999999999991", "content": "@everyone hello",
                    "mention_everyone": True}
        fake_discord.dispatch("MESSAGE_CREATE", everyone)
        await taken(adapter, everyone)
        for msg in (other, reply, everyone):
            assert await state(service, msg) is None
    assert chat_requests(fake_ollama) == 0


async def test_mention_of_the_bots_role_addresses_it(
        fake_discord: FakeDiscord, service: Service, fake_ollama: FakeOllama,
        monkeypatch: pytest.MonkeyPatch) -> None:
    events = record_events(monkeypatch, service)
    async with serving(service, message_content_intent=True) as adapter:
        by_role = fake_discord.guild_message(author_id=STRANGER_ID, author_name="s", content="help",
                                     mention_role=fake_discord.bot_role_id)
        other_role = fake_discord.guild_message(author_id=STRANGER_ID, author_name="s",
                                        content="hi all", mention_role=fake_discord.member_role_id)
        assert await settled(service, by_role) == MessageStatus.ANSWERED
        await taken(adapter, other_role)
        assert await state(service, other_role) is None
    assert user_text(fake_ollama) == "help"
    assert [e.mentioned for e in events] == [True, False]
    assert events[1].text == f"<@&{fake_discord.member_role_id}> hi all"  # only our own is removed


async def test_reply_to_the_bot_addresses_it(fake_discord: FakeDiscord, service: Service,
                                             fake_ollama: FakeOllama,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    events = record_events(monkeypatch, service)
    async with serving(service):  # no message-content intent: a reply pings us, so it reads
        first = fake_discord.guild_message(author_id=STRANGER_ID, author_name="s", content="hey",
                                   mention_bot=True)
        assert await settled(service, first) == MessageStatus.ANSWERED
        (answer,) = bot_messages(fake_discord, fake_discord.channel_id)
        follow_up = fake_discord.guild_message(author_id=STRANGER_ID, author_name="s",
                                       content="and then?", reply_to=int(answer["id"]))
        assert await settled(service, follow_up) == MessageStatus.ANSWERED
    assert user_text(fake_ollama) == "and then?"
    assert [(e.mentioned, e.reply_to_bot) for e in events] == [(True, False), (False, True)]
    assert len(bot_messages(fake_discord, fake_discord.channel_id)) == 2


async def test_own_echo_and_other_bots_are_ignored(fake_discord: FakeDiscord, service: Service,
                                                   fake_ollama: FakeOllama) -> None:
    async with serving(service) as adapter:
        msg = fake_discord.dm(author_id=STRANGER_ID, author_name="stranger", content="hello")
        assert await settled(service, msg) == MessageStatus.ANSWERED
        (reply,) = bot_messages(fake_discord, fake_discord.dm_channel_id(STRANGER_ID))
        bot = fake_discord.guild_message(author_id=OTHER_BOT_ID, author_name="otherbot",
                                 content="beep", mention_bot=True, author_is_bot=True)
        await barrier(fake_discord, adapter)  # the echo of our reply and the other bot's message
    assert await state(service, reply) is None  # the echo never even reached the inbox
    assert await state(service, bot) is None
    assert chat_requests(fake_ollama) == 1
    assert len(bot_messages(fake_discord, fake_discord.dm_channel_id(STRANGER_ID))) == 1


async def test_thread_is_its_own_chat(fake_discord: FakeDiscord, service: Service,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    events = record_events(monkeypatch, service)
    async with serving(service):
        thread_id = fake_discord.add_thread("questions")
        msg = fake_discord.guild_message(author_id=STRANGER_ID, author_name="s", content="in here?",
                                 mention_bot=True, channel_id=thread_id)
        assert await settled(service, msg) == MessageStatus.ANSWERED
    (event,) = events
    assert (event.chat_id, event.group_id) == (str(thread_id), str(fake_discord.guild_id))
    (reply,) = bot_messages(fake_discord, thread_id)
    assert reply["referenced_message"]["id"] == msg["id"]
    assert bot_messages(fake_discord, fake_discord.channel_id) == []


async def test_voice_message_becomes_a_lazy_voice_attachment(
        fake_discord: FakeDiscord, service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    cdn_gets_at_intake: list[int] = []
    accept = service.gateway.accept
    events: list[InboundEvent] = []

    async def spy(event: InboundEvent) -> int | None:
        events.append(event)
        cdn_gets_at_intake.append(len(fake_discord.calls_to("GET", "/voice-message.ogg")))
        return await accept(event)

    monkeypatch.setattr(service.gateway, "accept", spy)
    async with serving(service):
        voice = fake_discord.add_attachment(OGG, "voice-message.ogg", "audio/ogg",
                                            duration_secs=1.5, waveform="EBAQEA==")
        msg = fake_discord.dm(author_id=STRANGER_ID, author_name="s", content="",
                              attachments=[voice])
        await settled(service, msg)  # whatever the gateway makes of it; not this adapter's part
        (event,) = events
        assert cdn_gets_at_intake == [0]  # parsing downloads nothing
        assert event.voice is not None and event.text == ""
        assert (event.voice.mime_type, event.voice.duration) == ("audio/ogg", 1.5)
        assert event.voice.ref == voice["id"]
        assert await event.voice.fetch() == OGG  # from the fake_discord CDN, on demand


async def test_resumed_voice_message_is_fetched_again(
        fake_discord: FakeDiscord, service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    # A voice message a previous run stored and never answered: only its reference survives.
    voice = fake_discord.add_attachment(OGG, "voice-message.ogg", "audio/ogg", duration_secs=2.0,
                                waveform="EBAQEA==")
    msg = fake_discord.dm(author_id=STRANGER_ID, author_name="s", content="", attachments=[voice])
    left = InboundEvent(platform="discord", chat_id=msg["channel_id"], chat_kind=ChatKind.DM,
                        sender_id=str(STRANGER_ID), sender_name="s", message_id=msg["id"],
                        voice=VoiceAttachment("audio/ogg", 2.0, ref=voice["id"]))
    assert await service.gateway.accept(left) is not None
    answered: list[InboundEvent] = []
    answer = service.gateway.answer

    async def spy(inbox_id: int, event: InboundEvent, *args: Any) -> Any:
        answered.append(event)
        return await answer(inbox_id, event, *args)

    monkeypatch.setattr(service.gateway, "answer", spy)
    async with serving(service):
        await settled(service, msg)
        (event,) = answered
        assert event.voice is not None
        assert await event.voice.fetch() == OGG
    assert fake_discord.calls_to("GET", f"/channels/{msg['channel_id']}/messages/{msg['id']}")


# ---- streaming ---------------------------------------------------------------------------------


async def test_streaming_edits_in_order_at_the_configured_floor(
        fake_discord: FakeDiscord, service: Service, fake_ollama: FakeOllama) -> None:
    words = ("Counting", *(f" {n}" for n in range(1, 16)))
    # Long enough to think that typing shows (it waits a moment: an instant answer needs none).
    fake_ollama.script(ScriptedReply(chunks=words, first_token_delay=0.5, token_delay=0.05))
    fake_discord.edit_floor = EDIT_INTERVAL  # the fake answers 429 to anything closer than this
    async with serving(service):
        msg = fake_discord.dm(author_id=STRANGER_ID, author_name="s", content="count to fifteen")
        assert await settled(service, msg) == MessageStatus.ANSWERED
    dm = fake_discord.dm_channel_id(STRANGER_ID)
    calls = writes(fake_discord, dm)
    assert [c.method for c in calls] == ["POST"] + ["PATCH"] * (len(calls) - 1)
    assert len(calls) >= 3 and all(c.status == 200 for c in calls)
    shown = [c.json["content"] for c in calls]
    assert all(later.startswith(earlier) and later != earlier
               for earlier, later in pairwise(shown))
    assert shown[-1] == "".join(words)
    assert_paced(calls, EDIT_INTERVAL)
    (reply,) = bot_messages(fake_discord, dm)
    assert reply["content"] == "".join(words)
    # Typing showed while the model thought, before the first text.
    (typing,) = fake_discord.calls_to("POST", f"/channels/{dm}/typing")
    assert fake_discord.calls.index(typing) < fake_discord.calls.index(calls[0])


async def test_long_reply_arrives_as_three_messages_with_fences_intact(
        fake_discord: FakeDiscord, service: Service, fake_ollama: FakeOllama) -> None:
    text = code_reply_of_length(4500)
    assert len(text) == 4500
    fake_ollama.script(ScriptedReply(chunks=chunked(text, 50)))
    fake_discord.edit_floor = EDIT_INTERVAL
    async with serving(service):
        msg = fake_discord.guild_message(author_id=STRANGER_ID, author_name="s",
                                 content="write me a long script", mention_bot=True)
        assert await settled(service, msg) == MessageStatus.ANSWERED
    pieces = [m["content"] for m in bot_messages(fake_discord, fake_discord.channel_id)]
    assert len(pieces) == 3
    assert all(len(p) <= TEXT_LIMIT for p in pieces)
    assert all(p.count(FENCE) % 2 == 0 for p in pieces)
    assert all(p.startswith(FENCE + "python\n") for p in pieces[1:])
    original = [line for line in text.splitlines() if line.strip()]
    rejoined = [line for p in pieces for line in p.splitlines() if line.strip()]
    assert [line for line in rejoined if not line.startswith(FENCE)] == [
        line for line in original if not line.startswith(FENCE)]
    creates = fake_discord.calls_to("POST", f"/channels/{fake_discord.channel_id}/messages")
    assert len(creates) == 3
    assert int(creates[0].json["message_reference"]["message_id"]) == int(msg["id"])
    assert all("message_reference" not in c.json for c in creates[1:])
    calls = writes(fake_discord, fake_discord.channel_id)
    assert all(c.status == 200 for c in calls)
    assert_paced(calls, EDIT_INTERVAL)


@pytest.mark.parametrize(("edit", "retry_after", "waits"), [
    ("progress", 0.3, "discord.py"),  # short: discord.py sleeps it out and retries itself
    ("progress", 0.4, "adapter"),  # long: surfaces as RateLimited, the pacer holds the chat
    ("final", 0.4, "adapter"),  # long, on the last edit: retried until it lands
])
async def test_429_on_an_edit_mid_stream_still_completes_the_reply(
        fake_discord: FakeDiscord, service: Service, fake_ollama: FakeOllama,
        edit: str, retry_after: float, waits: str) -> None:
    if edit == "progress":
        words = ("Slow", *(f" and {n}" for n in range(10)))
        fake_ollama.script(ScriptedReply(chunks=words, token_delay=0.06))
    else:  # the second piece comes at once, so the only edit is the final one
        words = ("Quick", " reply.")
        fake_ollama.script(ScriptedReply(chunks=words))
    async with serving(service) as adapter:
        if waits == "adapter":
            # discord.py will not go below 30 s; lowered here so the test needs no long wait.
            assert adapter.client is not None
            adapter.client.http.max_ratelimit_timeout = 0.1
        fake_discord.fail_next("PATCH", "", retry_after=retry_after)
        msg = fake_discord.dm(author_id=STRANGER_ID, author_name="s", content="go")
        assert await settled(service, msg) == MessageStatus.ANSWERED
    dm = fake_discord.dm_channel_id(STRANGER_ID)
    (reply,) = bot_messages(fake_discord, dm)
    assert reply["content"] == "".join(words)
    calls = writes(fake_discord, dm)
    statuses = [c.status for c in calls]
    assert statuses.count(429) == 1 and statuses[-1] == 200
    limited = statuses.index(429)
    assert calls[limited + 1].at - calls[limited].at >= retry_after  # the wait was honoured
    assert_paced(calls, EDIT_INTERVAL)


# ---- reconnects, resumes and restarts ----------------------------------------------------------


@pytest.mark.parametrize("how", ["close-4000", "abort", "op7-reconnect"])
async def test_gateway_dropped_mid_session_loses_and_repeats_nothing(
        fake_discord: FakeDiscord, service: Service, fake_ollama: FakeOllama, how: str) -> None:
    fake_ollama.script(ScriptedReply(chunks=("First.",)), ScriptedReply(chunks=("Second.",)))
    async with serving(service) as adapter:
        first = fake_discord.dm(author_id=STRANGER_ID, author_name="s", content="one")
        assert await settled(service, first) == MessageStatus.ANSWERED
        if how == "op7-reconnect":
            fake_discord.request_reconnect()
        else:
            await fake_discord.close_gateway(4000 if how == "close-4000" else None)
        missed = fake_discord.dm(author_id=STRANGER_ID, author_name="s", content="two")
        assert await settled(service, missed) == MessageStatus.ANSWERED
        await until(lambda: fake_discord.resumes == 1, "the RESUME")
        # The same message once more, after the resume.
        fake_discord.dispatch("MESSAGE_CREATE", missed)
        await barrier(fake_discord, adapter)
    assert (fake_discord.identifies, fake_discord.resumes) == (1, 1)
    assert chat_requests(fake_ollama) == 2
    stranger_dm = fake_discord.dm_channel_id(STRANGER_ID)
    assert [m["content"] for m in bot_messages(fake_discord, stranger_dm)] == [
        "First.", "Second."]


async def test_gateway_dropped_while_a_reply_streams(fake_discord: FakeDiscord, service: Service,
                                                     fake_ollama: FakeOllama) -> None:
    words = ("Still", *(f" here {n}" for n in range(8)))
    fake_ollama.script(ScriptedReply(chunks=words, token_delay=0.08))
    async with serving(service) as adapter:
        msg = fake_discord.dm(author_id=STRANGER_ID, author_name="s", content="talk to me")
        dm = fake_discord.dm_channel_id(STRANGER_ID)
        await fake_discord.wait_for_call("POST", f"/channels/{dm}/messages")
        await fake_discord.close_gateway(None)  # TCP gone; REST keeps working
        assert await settled(service, msg) == MessageStatus.ANSWERED
        await until(lambda: fake_discord.resumes == 1, "the RESUME")
        await barrier(fake_discord, adapter)  # replayed echoes and updates of our reply included
    (reply,) = bot_messages(fake_discord, dm)
    assert reply["content"] == "".join(words)
    assert chat_requests(fake_ollama) == 1


async def no_identify_pause(shard_id: int | None, *, initial: bool = False) -> None:
    pass


async def test_restart_answers_what_was_left_once_even_when_ready_fires_again(
        fake_discord: FakeDiscord, service: Service, fake_ollama: FakeOllama,
        monkeypatch: pytest.MonkeyPatch) -> None:
    fake_ollama.script(ScriptedReply(first_token_delay=30.0),  # the run stops mid-turn
                       ScriptedReply(chunks=("Sorry", " for the wait."), first_token_delay=0.5))
    async with serving(service):
        msg = fake_discord.dm(author_id=STRANGER_ID, author_name="s", content="are you there?")
        await until(lambda: chat_requests(fake_ollama) == 1, "the model call")
    assert await state(service, msg) == MessageStatus.RECEIVED  # stored, never answered
    async with serving(service) as adapter:
        assert adapter.client is not None
        # discord.py spaces IDENTIFYs 5 s apart, Discord's own limit; no need to wait here.
        monkeypatch.setattr(adapter.client, "before_identify_hook", no_identify_pause)
        again = asyncio.create_task(adapter.client.wait_for("ready", timeout=WAIT_LIMIT))
        fake_discord.invalidate_session(resumable=False)  # a fresh IDENTIFY, so on_ready once more
        await again
        assert await settled(service, msg) == MessageStatus.ANSWERED
        await barrier(fake_discord, adapter)
    assert fake_discord.identifies == 3
    assert chat_requests(fake_ollama) == 2
    stranger_dm = fake_discord.dm_channel_id(STRANGER_ID)
    assert [m["content"] for m in bot_messages(fake_discord, stranger_dm)] == [
        "Sorry for the wait."]


# ---- start-up failures --------------------------------------------------------------------------


async def test_no_token_at_all(fake_discord: FakeDiscord, service: Service,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(AdapterStartError) as error:
        await make_adapter(service, token=None).serve()
    assert str(error.value) == ("Discord needs a bot token: set channels.discord.token or "
                                "DISCORD_BOT_TOKEN.")
    assert fake_discord.calls == []


async def test_token_from_the_environment(fake_discord: FakeDiscord, service: Service,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    async with serving(service, token=None):
        pass
    assert next(f for f in fake_discord.gateway_frames if f["op"] == 2)["d"]["token"] == TOKEN


async def test_rejected_token(fake_discord: FakeDiscord, service: Service) -> None:
    with pytest.raises(AdapterStartError) as error:
        await asyncio.wait_for(make_adapter(service, token="not.the.token").serve(), WAIT_LIMIT)
    assert str(error.value) == BAD_TOKEN
    assert [c.status for c in fake_discord.calls_to("GET", "/users/@me")] == [401]
    assert fake_discord.gateway_connects == []


async def test_token_reset_while_connected_closes_4004(fake_discord: FakeDiscord,
                                                       service: Service) -> None:
    task = await started(make_adapter(service))
    try:
        await fake_discord.close_gateway(4004)
        with pytest.raises(AdapterStartError) as error:
            await asyncio.wait_for(task, WAIT_LIMIT)
        assert str(error.value) == BAD_TOKEN
    finally:
        if not task.done():
            await stop(task)


async def test_missing_message_content_intent_closes_4014(service: Service) -> None:
    async with FakeDiscord(token=TOKEN, allow_message_content=False) as strict:
        with strict.patch_client_urls(), pytest.raises(AdapterStartError) as error:
            adapter = make_adapter(service, message_content_intent=True)
            await asyncio.wait_for(adapter.serve(), WAIT_LIMIT)
    assert str(error.value) == MISSING_INTENT
    assert "Message Content" in MISSING_INTENT
    assert "channels.discord.message_content_intent" in MISSING_INTENT


async def test_unreachable_discord(service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(discord.http.Route, "BASE", f"http://127.0.0.1:{port}/api/v10")
    # Worth another try later (the supervisor restarts the adapter), unlike a bad token.
    with pytest.raises(PlatformUnavailable) as error:
        await asyncio.wait_for(make_adapter(service).serve(), WAIT_LIMIT)
    assert not isinstance(error.value, AdapterStartError)
    assert error.value.user_message.startswith("Could not reach Discord to log in")


async def test_token_is_never_logged_or_stored(fake_discord: FakeDiscord, service: Service,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with serving(service):
        msg = fake_discord.dm(author_id=STRANGER_ID, author_name="s", content="secret?")
        assert await settled(service, msg) == MessageStatus.ANSWERED
        await fake_discord.close_gateway(4000)
        await until(lambda: fake_discord.resumes == 1, "the RESUME")
    assert any(r.name.startswith("discord.") for r in caplog.records)  # the library did log
    assert TOKEN not in caplog.text
    assert all(TOKEN not in str(row) for row in db_rows(service))


# ---- the real CLI -------------------------------------------------------------------------------
# `hearthbot run` in a subprocess cannot reach the fake: the fake is wired in by patching
# discord.py's class attributes, which only exist in this process. So the real entry point,
# bot.cli.main, runs here in-process, with the fakes serving from a thread of their own (main()
# starts its own event loop). Everything from argument parsing and config loading to logging,
# the adapter task and the exit code is the command's own.


@dataclass
class ThreadedFakes:
    discord: FakeDiscord
    ollama: FakeOllama


@contextlib.contextmanager
def fakes_in_a_thread(**discord_options: Any) -> Iterator[ThreadedFakes]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(make: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        return asyncio.run_coroutine_threadsafe(make(), loop).result(5.0)

    async def start() -> ThreadedFakes:
        fakes = ThreadedFakes(FakeDiscord(token=TOKEN, **discord_options), FakeOllama())
        await fakes.discord.start()
        await fakes.ollama.start()
        return fakes

    fakes: ThreadedFakes = run(start)

    async def finish() -> None:
        await fakes.discord.stop()
        await fakes.ollama.stop()

    try:
        with fakes.discord.patch_client_urls():
            yield fakes
    finally:
        run(finish)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5.0)
        loop.close()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """main() installs its own root handlers; put the test runner's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize(("problem", "sentence"), [
    ("rejected token", BAD_TOKEN), ("intent not allowed", MISSING_INTENT)])
def test_hearthbot_run_exits_1_with_one_sentence(
        data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        restore_logging: None, problem: str, sentence: str) -> None:
    intent = problem == "intent not allowed"
    with fakes_in_a_thread(allow_message_content=not intent) as fakes:
        model = fakes.ollama.models[0]
        config = tmp_path / "config.json"
        config.write_text(json.dumps({
            "data_dir": str(data_dir),
            "gateway": {"port": 0, "providers": {"ollama": {
                "type": "ollama", "base_url": fakes.ollama.base_url, "models": [{"id": model}]}}},
            "agents": {"default": {"active_model": f"ollama/{model}"}},
            "channels": {"discord": {"token": "wrong.token.value" if not intent else TOKEN,
                                     "message_content_intent": intent}},
        }))
        code = cli.main(["--config", str(config), "run"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_FAILED
    assert err.strip().splitlines()[-1] == f"hearthbot: {sentence}"
    assert "Traceback" not in err
    log_text = (data_dir / "logs" / "hearthbot.log").read_text()
    for secret in ("wrong.token.value", TOKEN):
        assert secret not in err and secret not in log_text
