"""The fake Discord, proven with the real discord.py client over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import discord
import pytest
import pytest_asyncio
from discord.http import Route, handle_message_parameters

from tests.fakes.discord import FakeDiscord

pytestmark = pytest.mark.asyncio

USER_ID = 300000000000000001  # a realistic 18-digit snowflake
OGG = b"OggS\x00\x02" + bytes(range(256)) * 4  # stand-in bytes; the fake does not decode audio


class Bot(discord.Client):
    """A minimal client: records what arrives and answers DMs once, ignoring its own echoes."""

    def __init__(self, *, intents: discord.Intents | None = None, answer_dms: bool = False) -> None:
        super().__init__(intents=intents or discord.Intents.default(), guild_ready_timeout=0.05)
        self.ready = asyncio.Event()
        self.resumed = asyncio.Event()
        self.inbox: asyncio.Queue[discord.Message] = asyncio.Queue()
        self.seen_ids: list[int] = []
        self.answer_dms = answer_dms

    async def on_ready(self) -> None:
        self.ready.set()

    async def on_resumed(self) -> None:
        self.resumed.set()

    async def on_message(self, message: discord.Message) -> None:
        self.seen_ids.append(message.id)
        await self.inbox.put(message)
        if self.answer_dms and message.author != self.user and message.guild is None:
            await message.channel.send(f"echo: {message.content}")

    async def next_message(self) -> discord.Message:
        return await asyncio.wait_for(self.inbox.get(), 2.0)


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as server:
        with server.patch_client_urls():
            yield server


@asynccontextmanager
async def running(client: Bot, token: str) -> AsyncIterator[Bot]:
    task = asyncio.create_task(client.start(token))
    try:
        await asyncio.wait_for(client.ready.wait(), 3.0)
        yield client
    finally:
        await client.close()
        await asyncio.wait_for(task, 3.0)


def content_intents() -> discord.Intents:
    intents = discord.Intents.default()
    intents.message_content = True
    return intents


async def test_login_ready_and_guild(fake: FakeDiscord) -> None:
    async with running(Bot(), fake.token) as bot:
        assert bot.user is not None and bot.user.id == fake.bot_id
        guild = bot.get_guild(fake.guild_id)
        assert guild is not None and not guild.unavailable
        channel = guild.get_channel(fake.channel_id)
        assert isinstance(channel, discord.TextChannel) and channel.name == "general"
        assert guild.me is not None and guild.self_role is not None
        assert guild.self_role.id == fake.bot_role_id
        assert len(str(fake.guild_id)) >= 17
    assert [c.path for c in fake.calls[:2]] == ["/users/@me", "/oauth2/applications/@me"]
    identify = next(f for f in fake.gateway_frames if f["op"] == 2)
    assert identify["d"]["token"] == fake.token and "intents" in identify["d"]


async def test_dm_reaches_on_message_and_reply_is_recorded(fake: FakeDiscord) -> None:
    async with running(Bot(answer_dms=True), fake.token) as bot:
        sent = fake.dm(author_id=USER_ID, author_name="alice", content="hello")
        got = await bot.next_message()
        assert got.content == "hello" and got.id == int(sent["id"])
        assert isinstance(got.channel, discord.DMChannel) and got.author.id == USER_ID
        dm_id = fake.dm_channel_id(USER_ID)
        (reply,) = await fake.wait_for_call("POST", f"/channels/{dm_id}/messages")
        assert reply.json["content"] == "echo: hello"
        # Discord echoes the bot's own message back; the bot must not answer it.
        echo = await bot.next_message()
        assert echo.author == bot.user and echo.content == "echo: hello"
        await asyncio.sleep(0.1)
        assert len(fake.calls_to("POST", f"/channels/{dm_id}/messages")) == 1
        await got.author.send("opened")  # POST /users/@me/channels, then the message
        await fake.wait_for_call("POST", "/users/@me/channels")
        assert [m["content"] for m in fake.messages_in(dm_id)] == ["hello", "echo: hello", "opened"]


async def test_guild_mentions_user_and_role(fake: FakeDiscord) -> None:
    async with running(Bot(intents=content_intents()), fake.token) as bot:
        fake.guild_message(author_id=USER_ID, author_name="bob", content="hi", mention_bot=True)
        msg = await bot.next_message()
        assert msg.guild is not None and msg.guild.id == fake.guild_id
        assert bot.user in msg.mentions and msg.content.endswith("hi")
        assert isinstance(msg.author, discord.Member)

        fake.guild_message(author_id=USER_ID, author_name="bob", content="yo",
                           mention_role=fake.bot_role_id)
        by_role = await bot.next_message()
        guild = by_role.guild
        assert guild is not None and guild.self_role in by_role.role_mentions
        assert bot.user not in by_role.mentions and guild.me.mentioned_in(by_role)

        fake.guild_message(author_id=USER_ID, author_name="bob", content="plain")
        assert (await bot.next_message()).content == "plain"


async def test_without_message_content_intent_guild_content_is_blank() -> None:
    async with FakeDiscord(allow_message_content=False) as fake:
        with fake.patch_client_urls():
            async with running(Bot(), fake.token) as bot:
                fake.guild_message(author_id=USER_ID, author_name="eve", content="secret")
                assert (await bot.next_message()).content == ""
                fake.guild_message(author_id=USER_ID, author_name="eve", content="hey",
                                   mention_bot=True)
                assert (await bot.next_message()).content.endswith("hey")
                fake.dm(author_id=USER_ID, author_name="eve", content="in a dm")
                assert (await bot.next_message()).content == "in a dm"


async def test_edit_is_recorded_and_stored(fake: FakeDiscord) -> None:
    async with running(Bot(), fake.token) as bot:
        channel = bot.get_channel(fake.channel_id)
        assert isinstance(channel, discord.TextChannel)
        msg = await channel.send("draft")
        await msg.edit(content="final")
        (patch,) = fake.calls_to("PATCH", f"/messages/{msg.id}")
        assert patch.json["content"] == "final"
        stored = fake.messages_in(fake.channel_id)[-1]
        assert stored["content"] == "final" and stored["edited_timestamp"] is not None


async def test_429_is_retried_by_discord_py(fake: FakeDiscord) -> None:
    async with running(Bot(), fake.token) as bot:
        channel = bot.get_channel(fake.channel_id)
        assert isinstance(channel, discord.TextChannel)
        fake.fail_next("POST", f"/channels/{fake.channel_id}/messages", retry_after=0.2)
        msg = await channel.send("after the limit")
        first, second = fake.calls_to("POST", f"/channels/{fake.channel_id}/messages")
        assert (first.status, second.status) == (429, 200)
        assert second.at - first.at >= 0.2
        assert msg.content == "after the limit"

        fake.edit_floor = 0.3  # create then edit at once: the flood model answers 429 itself
        start = time.monotonic()
        await msg.edit(content="edited")
        assert time.monotonic() - start >= 0.25
        assert [c.status for c in fake.calls_to("PATCH", f"/messages/{msg.id}")] == [429, 200]


class VoiceFile(discord.File):
    """discord.py 2.7 has no voice-message API: the attachment entry must carry the metadata."""

    def __init__(self, data: bytes, duration: float, waveform: bytes) -> None:
        super().__init__(io.BytesIO(data), filename="voice-message.ogg")
        self.duration = duration
        self.waveform = base64.b64encode(waveform).decode()

    def to_dict(self, index: int) -> dict[str, Any]:
        return {**super().to_dict(index), "duration_secs": self.duration,
                "waveform": self.waveform}


async def test_voice_message_multipart_upload(fake: FakeDiscord) -> None:
    async with running(Bot(), fake.token) as bot:
        flags = discord.MessageFlags(voice=True)
        with handle_message_parameters(file=VoiceFile(OGG, 2.5, bytes(64)), flags=flags) as p:
            data = await bot.http.send_message(fake.channel_id, params=p)
        (call,) = fake.calls_to("POST", f"/channels/{fake.channel_id}/messages")
        assert call.files == {"files[0]": OGG}
        assert call.json["flags"] == 8192
        assert call.json["attachments"][0]["duration_secs"] == 2.5
        assert base64.b64decode(call.json["attachments"][0]["waveform"]) == bytes(64)
        channel = bot.get_channel(fake.channel_id)
        assert isinstance(channel, discord.TextChannel)
        sent = await channel.fetch_message(int(data["id"]))
        assert sent.flags.voice and sent.attachments[0].duration == 2.5
        assert await sent.attachments[0].read() == OGG  # downloaded from the fake CDN

        with pytest.raises(discord.HTTPException) as err:
            await sent.edit(content="no")
        assert err.value.code == 50162
        with (
            handle_message_parameters("text", file=VoiceFile(OGG, 1.0, b"\x01"), flags=flags) as p,
            pytest.raises(discord.HTTPException) as err,
        ):
            await bot.http.send_message(fake.channel_id, params=p)
        assert err.value.status == 400 and err.value.code == 50159


async def test_inbound_voice_attachment_and_long_content(fake: FakeDiscord) -> None:
    async with running(Bot(), fake.token) as bot:
        att = fake.add_attachment(OGG, "voice-message.ogg", "audio/ogg", duration_secs=1.5,
                                  waveform=base64.b64encode(b"\x10" * 8).decode())
        fake.dm(author_id=USER_ID, author_name="al", content="", attachments=[att])
        got = await bot.next_message()
        assert got.flags.voice and got.attachments[0].duration == 1.5
        assert await got.attachments[0].read() == OGG
        with pytest.raises(discord.HTTPException) as err:
            await got.channel.send("x" * 2001)
        assert err.value.code == 50035 and "2000 or fewer" in err.value.text


async def test_bad_token_login_failure_and_gateway_4004(fake: FakeDiscord) -> None:
    async with Bot() as bot:
        with pytest.raises(discord.LoginFailure):
            await bot.start("not.the.token")  # REST GET /users/@me answers 401 first
    assert fake.calls_to("GET", "/users/@me")[-1].status == 401

    async with Bot() as bot:
        await bot.login(fake.token)
        bot.http.token = "revoked.token"  # the gateway's IDENTIFY now carries a bad token
        with pytest.raises(discord.ConnectionClosed) as closed:
            await bot.connect(reconnect=True)
    assert closed.value.code == 4004  # a plain ConnectionClosed, not LoginFailure


@pytest.mark.parametrize("denied", ["members-and-presences", "message-content"])
async def test_privileged_intent_not_allowed_closes_4014(denied: str) -> None:
    members = denied == "members-and-presences"
    fake = FakeDiscord(allowed_privileged=not members, allow_message_content=members)
    intents = discord.Intents.all() if members else content_intents()
    async with fake, Bot(intents=intents) as bot:
        with fake.patch_client_urls(), pytest.raises(discord.PrivilegedIntentsRequired):
            await asyncio.wait_for(bot.start(fake.token), 3.0)


@pytest.mark.parametrize("how", ["close-4000", "abort", "op7-reconnect"])
async def test_resume_replays_missed_events_exactly_once(fake: FakeDiscord, how: str) -> None:
    async with running(Bot(), fake.token) as bot:
        fake.dm(author_id=USER_ID, author_name="al", content="before")
        await bot.next_message()
        if how == "op7-reconnect":
            fake.request_reconnect()
        else:
            await fake.close_gateway(4000 if how == "close-4000" else None)
        missed = [fake.dm(author_id=USER_ID, author_name="al", content=f"m{i}") for i in range(3)]
        got = [await bot.next_message() for _ in missed]
        assert [m.content for m in got] == ["m0", "m1", "m2"]
        await asyncio.wait_for(bot.resumed.wait(), 2.0)
        fake.dm(author_id=USER_ID, author_name="al", content="after")
        assert (await bot.next_message()).content == "after"
        await asyncio.sleep(0.1)
        assert len(bot.seen_ids) == len(set(bot.seen_ids)) == 5
        assert (fake.identifies, fake.resumes) == (1, 1)
        resume = next(f for f in fake.gateway_frames if f["op"] == 6)
        assert resume["d"]["seq"] >= 3  # READY, GUILD_CREATE, "before" at least
        first, again = fake.gateway_connects
        assert first.startswith("/gateway?") and again.startswith("/resume?")
        assert "compress=zlib-stream" in again


async def test_raw_dispatch_twice_reaches_client_twice(fake: FakeDiscord) -> None:
    async with running(Bot(), fake.token) as bot:
        msg = fake.dm(author_id=USER_ID, author_name="al", content="dup")
        fake.dispatch("MESSAGE_CREATE", msg)
        first, second = await bot.next_message(), await bot.next_message()
        assert first.id == second.id  # the gateway, not the fake, must drop the duplicate


async def test_typing_server_error_and_dropped_connection(fake: FakeDiscord) -> None:
    async with running(Bot(), fake.token) as bot:
        channel = bot.get_channel(fake.channel_id)
        assert isinstance(channel, discord.TextChannel)
        await bot.http.request(Route("POST", "/channels/{channel_id}/typing",
                                     channel_id=fake.channel_id))
        assert fake.calls_to("POST", "/typing")[0].status == 204
        fake.fail_next("POST", "/messages", status=503)  # 500/502/504 are retried, 503 is not
        with pytest.raises(discord.DiscordServerError):
            await channel.send("x")
        fake.fail_next("POST", "/messages", status=0)
        with pytest.raises(aiohttp.ClientError):  # discord.py does not retry a dropped request
            await channel.send("y")
        assert [c.status for c in fake.calls_to("POST", "/messages")] == [503, 0]
        assert (await channel.send("z")).content == "z"


@pytest.mark.parametrize("presences", [False, True])
async def test_members_intent_fills_the_member_cache(fake: FakeDiscord, presences: bool) -> None:
    fake.guild_message(author_id=USER_ID, author_name="bob", content="before any session")
    intents = discord.Intents.default()
    intents.members = True
    intents.presences = presences
    async with running(Bot(intents=intents), fake.token) as bot:
        guild = bot.get_guild(fake.guild_id)
        assert guild is not None and guild.chunked
        assert guild.get_member(USER_ID) is not None and guild.owner_id == fake.owner_id
        # Without presences discord.py asks for the members (op 8); with them they come along.
        assert any(f["op"] == 8 for f in fake.gateway_frames) is not presences


async def test_replies_in_both_directions(fake: FakeDiscord) -> None:
    async with running(Bot(), fake.token) as bot:  # no message-content intent
        channel = bot.get_channel(fake.channel_id)
        assert isinstance(channel, discord.TextChannel)
        mine = await channel.send("question?")
        await bot.next_message()  # the echo of our own message
        fake.guild_message(author_id=USER_ID, author_name="bob", content="answer",
                           reply_to=mine.id)
        reply = await bot.next_message()
        # A reply pings its author, so the bot counts as mentioned and sees the content.
        assert reply.content == "answer" and bot.user in reply.mentions
        assert reply.reference is not None and reply.reference.message_id == mine.id
        back = await reply.reply("thanks")
        (call,) = fake.calls_to("POST", "/messages")[1:]
        assert int(call.json["message_reference"]["message_id"]) == reply.id
        assert back.type is discord.MessageType.reply
        stored = fake.messages_in(fake.channel_id)[-1]
        assert stored["referenced_message"]["id"] == str(reply.id)
