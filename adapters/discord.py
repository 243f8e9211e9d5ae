"""Discord, through discord.py's gateway client and REST API.

Wire types stop here: `to_event` is the one place a discord.py Message becomes an InboundEvent,
and `DiscordChat` the one place a reply becomes REST calls (and discord.py's errors become ours).

Order and exactly-once: discord.py runs every event handler as its own task, so messages are
taken in through one FIFO lock (stored in the inbox, then queued in their channel's lane) to
keep a channel's arrival order. A gateway RESUME may replay messages and a duplicate dispatch
may repeat one; the inbox refuses a message id it has seen, so neither is answered twice.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import re
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import discord

from adapters.chunking import without_gaps
from adapters.intake import Intake, bot_token
from adapters.streaming import (
    ChatPacers,
    Pacer,
    deliver_voice_note,
    stream_by_editing,
)
from bot.approvals import Question
from bot.config import DiscordChannel
from bot.errors import AdapterStartError, DeliveryError, PlatformUnavailable, RateLimited
from bot.events import ChatKind, ImageAttachment, InboundEvent, Reply, VoiceAttachment
from bot.gateway import Gateway

if TYPE_CHECKING:
    from bot.voice.tts import SpokenClip

log = logging.getLogger(__name__)

PLATFORM = "discord"
TEXT_LIMIT = 2000
TOKEN_ENV = "DISCORD_BOT_TOKEN"
# discord.py sleeps through a 429 itself when the wait is at most this long and raises
# discord.RateLimited beyond it; 30 s is the smallest value it accepts.
LIBRARY_WAIT_LIMIT = 30.0
CLOSE_AUTHENTICATION_FAILED = 4004

BAD_TOKEN = f"Discord rejected the bot token; check channels.discord.token or {TOKEN_ENV}."
MISSING_INTENT = (
    "Discord refused the privileged Message Content intent: enable it for this bot in the "
    "Developer Portal (Bot > Privileged Gateway Intents), or set "
    "channels.discord.message_content_intent to false.")
UNREACHABLE = "Could not reach Discord to log in ({}); check the network connection."

T = TypeVar("T")

# Only a user's own words and replies are conversation; joins, pins, boosts and the like are not.
_CONVERSATION = (discord.MessageType.default, discord.MessageType.reply)


def to_event(message: discord.Message, me: discord.ClientUser) -> InboundEvent | None:
    """A message as our event, or None for what is never answered: the bot's own messages
    (Discord echoes them back), other bots and webhooks, system messages, group DMs."""
    author = message.author
    if author.id == me.id or author.bot or message.webhook_id is not None:
        return None
    if message.type not in _CONVERSATION:
        return None
    guild = message.guild
    if guild is None and message.channel.type is not discord.ChannelType.private:
        return None
    own = _own_mentions(message, me)
    text = own.sub("", message.content)
    role = guild.self_role if guild is not None else None
    return InboundEvent(
        platform=PLATFORM,
        # A thread is its own conversation: message.channel is then the thread.
        chat_id=str(message.channel.id),
        chat_kind=ChatKind.DM if guild is None else ChatKind.GROUP,
        sender_id=str(author.id),
        sender_name=author.display_name,
        message_id=str(message.id),
        text=without_gaps(text),
        account=str(me.id),
        bot_names=_names(me, guild),
        group_id=None if guild is None else str(guild.id),
        # The role is read from the payload's list: the content may be blanked without the
        # message-content intent, and Discord's mention picker often offers the role.
        mentioned=own.search(message.content) is not None or role in message.role_mentions,
        reply_to_bot=_replies_to(message, me),
        voice=_voice(message),
        images=_images(message),
        received_at=message.created_at,
    )


def _names(me: discord.ClientUser, guild: discord.Guild | None) -> tuple[str, ...]:
    """What people call the bot here: its user name, display name and server nickname."""
    nickname = guild.me.nick if guild is not None and guild.me is not None else None
    return tuple(dict.fromkeys(n for n in (me.name, me.display_name, nickname) if n))


def _own_mentions(message: discord.Message, me: discord.ClientUser) -> re.Pattern[str]:
    """The bot's user mention and its managed role's mention, as written in the content.

    A user mention is read from the content rather than `message.mentions`: a reply pings the
    author it replies to, which is `reply_to_bot`, not a mention. @everyone and @here never
    address the bot, nor do other roles it holds (a shared @members ping is not a question).
    """
    forms = [f"<@!?{me.id}>"]
    role = message.guild.self_role if message.guild is not None else None
    if role is not None:
        forms.append(f"<@&{role.id}>")
    return re.compile("|".join(forms))


def _replies_to(message: discord.Message, me: discord.ClientUser) -> bool:
    reference = message.reference
    replied = reference.resolved if reference is not None else None
    return isinstance(replied, discord.Message) and replied.author.id == me.id


def _voice(message: discord.Message) -> VoiceAttachment | None:
    """The first voice message or audio file; its bytes are downloaded only when asked for."""
    for attachment in message.attachments:
        mime = attachment.content_type or ""
        if attachment.is_voice_message() or mime.startswith("audio/"):
            # The attachment's id, not its URL: CDN URLs are signed and expire after a day.
            return VoiceAttachment(mime_type=mime or "audio/ogg",
                                   duration=attachment.duration or 0.0, ref=str(attachment.id),
                                   fetch=partial(_download, attachment))
    return None


def _images(message: discord.Message) -> tuple[ImageAttachment, ...]:
    """Every image attachment, each with the size Discord reports, downloaded only when asked
    for (the cap is checked against that size first)."""
    return tuple(
        ImageAttachment(mime_type=attachment.content_type or "image/png", size=attachment.size,
                        ref=str(attachment.id), fetch=partial(_download, attachment))
        for attachment in message.attachments
        if (attachment.content_type or "").startswith("image/"))


async def _download(attachment: discord.Attachment) -> bytes:
    if not isinstance(attachment.url, str):  # discord.py takes the payload's field as it is
        raise DeliveryError(f"attachment {attachment.id} has no URL to fetch it from")
    return await _translated(attachment.read())


async def _download_again(client: discord.Client, event: InboundEvent, ref: str) -> bytes:
    """A stored event's voice message or image: the message is fetched anew for a fresh CDN
    URL."""
    channel = client.get_partial_messageable(int(event.chat_id))
    message = await _translated(channel.fetch_message(int(event.message_id)))
    for attachment in message.attachments:
        if str(attachment.id) == ref:
            return await _download(attachment)
    raise DeliveryError(f"message {event.message_id} has no attachment {ref} any more")


async def _translated(call: Awaitable[T]) -> T:
    """A discord.py call with its errors translated into delivery errors."""
    try:
        return await call
    except discord.RateLimited as exc:  # a wait longer than discord.py will sleep through
        raise RateLimited(exc.retry_after, "by Discord") from exc
    except discord.DiscordServerError as exc:
        raise PlatformUnavailable(f"Discord answered {exc.status}") from exc
    except discord.HTTPException as exc:
        if exc.status == 429:  # no Via header (Cloudflare): discord.py does not wait these out
            raise RateLimited(_retry_after(exc), "by Discord") from exc
        raise DeliveryError(f"Discord refused the call: {exc.status} {exc.text}") from exc
    except (aiohttp.ClientError, OSError) as exc:  # TimeoutError is an OSError
        raise PlatformUnavailable(f"could not reach Discord: {exc!r}") from exc


def _retry_after(exc: discord.HTTPException) -> float:
    try:
        return float(exc.response.headers.get("Retry-After", 1.0))
    except (AttributeError, TypeError, ValueError):
        return 1.0


class DiscordChat:
    """One reply in one channel: the first piece answers the asking message by reference (in
    guilds), the rest follow as plain messages; a message grows by edits."""

    limit = TEXT_LIMIT


    def __init__(self, channel: discord.PartialMessageable,
                 reply_to: discord.MessageReference | None) -> None:
        self.channel = channel
        self.reply_to = reply_to

    async def send(self, text: str, final: bool) -> discord.Message:
        if self.reply_to is None:
            sending = self.channel.send(text)
        else:
            sending = self.channel.send(text, reference=self.reply_to, mention_author=False)
        message = await _translated(sending)
        # Cleared only once a piece went out: a retried first piece still carries the reference.
        self.reply_to = None
        return message

    def final_differs(self, shown: str, final: str) -> bool:
        # Discord renders Markdown itself: progress and final look alike for the same text.
        return shown != final

    async def remove(self, handles: tuple[str, ...]) -> None:
        """Delete what an interrupted earlier attempt at this reply left in the channel."""
        for handle in handles:
            try:
                await _translated(self.channel.get_partial_message(int(handle)).delete())
            except DeliveryError as exc:  # already gone
                log.info("discord: could not remove message %s: %s", handle, exc)

    async def unrecorded(self, own_id: int, question_id: str,
                         known: tuple[str, ...]) -> tuple[str, ...]:
        """Answers to `question_id` this bot sent that no record names: a crash between
        Discord's answer to a send and the record of it leaves one. They are told by their
        reference to the question, which only the first piece in a guild carries."""
        if self.reply_to is None:
            return ()
        question = int(question_id)
        found: list[str] = []
        try:
            async for message in self.channel.history(after=discord.Object(question), limit=50):
                reference = message.reference
                if (message.author.id == own_id and reference is not None
                        and reference.message_id == question and str(message.id) not in known):
                    found.append(str(message.id))
        except discord.HTTPException as exc:  # no Read Message History: nothing to find
            log.info("discord: could not look for earlier answers to %s: %s", question_id, exc)
        return tuple(found)

    async def edit(self, handle: discord.Message, text: str, final: bool) -> None:
        await _translated(handle.edit(content=text))

    async def typing(self) -> None:
        await _translated(self.channel.typing())


class _VoiceNote(discord.File):
    """An attachment Discord shows as a voice message: it carries its length and waveform."""

    def __init__(self, clip: SpokenClip) -> None:
        super().__init__(io.BytesIO(clip.ogg_opus), filename="voice-message.ogg")
        self.duration = clip.duration
        self.waveform = base64.b64encode(clip.waveform).decode()

    def to_dict(self, index: int) -> dict[str, Any]:
        payload = super().to_dict(index)
        payload.update(duration_secs=round(self.duration, 2), waveform=self.waveform)
        return payload


def intents_for(channel: DiscordChannel) -> discord.Intents:
    """Guild and DM messages always; message content only when the config asks for it, since
    Discord refuses the whole connection (close 4014) if the bot is not allowed to have it."""
    intents = discord.Intents.default()
    intents.messages = True
    intents.message_content = channel.message_content_intent
    return intents


class _Client(discord.Client):
    """discord.py finds event handlers by name on the client; these hand each to the adapter."""

    def __init__(self, adapter: DiscordAdapter, **options: Any) -> None:
        super().__init__(**options)
        self._adapter = adapter
        # discord.py runs a gateway event's parser inside its connection loop, so one parser
        # that trips over a malformed or newer payload ends the whole client. Each parser is
        # wrapped so that such a dispatch is quarantined and the next one goes on. The table
        # is discord.py's own (ConnectionState.parsers); there is no public hook for this.
        parsers: dict[str, Callable[[Any], None]] = self._connection.parsers
        for name, parser in list(parsers.items()):
            parsers[name] = partial(adapter.parse_guarded, name, parser)

    async def setup_hook(self) -> None:
        await self._adapter.logged_in(self)

    async def on_ready(self) -> None:
        self._adapter.connected(self)

    async def on_message(self, message: discord.Message) -> None:
        await self._adapter.receive(message, self)


class DiscordAdapter:
    platform = PLATFORM

    def __init__(self, channel: DiscordChannel, gateway: Gateway, *,
                 guild_ready_timeout: float = 2.0, stop_seconds: float = 10.0) -> None:
        self.channel = channel
        self.gateway = gateway
        self.ready = asyncio.Event()
        # discord.py waits this long after the last GUILD_CREATE before on_ready.
        self.guild_ready_timeout = guild_ready_timeout
        self.client: discord.Client | None = None
        self.stop_seconds = stop_seconds
        self._pacers = ChatPacers()
        self._intake = self._new_intake()
        self._quarantining: set[asyncio.Future[None]] = set()

    def _new_intake(self) -> Intake:
        # Answers wait for the first on_ready: before it, sends could race the session.
        return Intake(PLATFORM, self.gateway, self.deliver, self.deliver_voice, hold=True)

    async def idle(self) -> None:
        """Wait until every message taken in so far has been answered."""
        await self._intake.idle()

    @property
    def last_seen(self) -> str | None:
        """The last message (or quarantined payload) taken in; all before it were too."""
        return self._intake.last_seen

    async def stop(self) -> None:
        """Let replies under way finish (new messages are still stored, for the next start),
        then disconnect; serve() returns."""
        await self._intake.drain(self.stop_seconds)
        if self.client is not None:
            await self.client.close()

    def parse_guarded(self, event: str, parser: Callable[[Any], None], data: Any) -> None:
        try:
            parser(data)
        except Exception as exc:
            task = asyncio.ensure_future(self._intake.quarantine(f"dispatch {event}", data, exc))
            self._quarantining.add(task)
            task.add_done_callback(self._quarantining.discard)

    async def serve(self) -> None:
        token = bot_token(PLATFORM, self.channel.token, TOKEN_ENV)
        client = _Client(
            self, intents=intents_for(self.channel), max_ratelimit_timeout=LIBRARY_WAIT_LIMIT,
            # Model output must never ping @everyone, a role or a user.
            allowed_mentions=discord.AllowedMentions.none(),
            # No message cache: replies are told apart by the payload's own reference, and a
            # cache of the last thousand messages only costs memory in busy servers.
            max_messages=None,
            guild_ready_timeout=self.guild_ready_timeout)
        self.client, self._intake = client, self._new_intake()
        try:
            with self.gateway.approvals.asking(PLATFORM, self.ask_owner):
                async with client:
                    try:
                        await client.start(token)
                    finally:
                        # Stop answering before the connection goes: a reply cut short stays
                        # in the inbox for the next start instead of failing on a closed
                        # session.
                        await self._intake.close()
        except discord.LoginFailure as exc:
            raise AdapterStartError(BAD_TOKEN) from exc
        except discord.PrivilegedIntentsRequired as exc:
            raise AdapterStartError(MISSING_INTENT) from exc
        except discord.ConnectionClosed as exc:
            # Discord closes with 4004 when the token is reset while the bot is connected.
            if exc.code == CLOSE_AUTHENTICATION_FAILED:
                raise AdapterStartError(BAD_TOKEN) from exc
            raise
        except (aiohttp.ClientError, OSError) as exc:
            # Once connected discord.py reconnects by itself, so these come from the login:
            # worth another try later, unlike a rejected token.
            message = UNREACHABLE.format(type(exc).__name__)
            raise PlatformUnavailable(message, user_message=message) from exc

    async def ask_owner(self, question: Question) -> bool:
        """Approve/deny buttons on Discord need interactions, which this adapter does not take
        yet: a call that needs the owner's approval is refused, and the log says why."""
        log.warning("discord: the owner cannot be asked to approve tool calls on Discord yet "
                    "(no button interactions); the %s call from %s is refused",
                    question.request.tool, question.origin)
        return False

    async def logged_in(self, client: discord.Client) -> None:
        """After login, before the gateway connects: nothing of this run is in the inbox yet,
        so what is unanswered there is exactly what the last run left behind."""
        await self._intake.resume(partial(_download_again, client))

    def connected(self, client: discord.Client) -> None:
        """on_ready: fires again after every fresh IDENTIFY, but hands over held jobs once."""
        if not self._intake.release():
            return
        log.info("discord: connected as %s in %d servers", client.user, len(client.guilds))
        self.ready.set()

    async def receive(self, message: discord.Message, client: discord.Client) -> None:
        assert client.user is not None  # set at READY, before any message is dispatched
        try:
            event = to_event(message, client.user)
        except Exception as exc:
            await self._intake.quarantine(f"message {message.id}", {"id": message.id}, exc)
            return
        if event is not None:
            await self._intake.take(event)

    def _client(self) -> discord.Client:
        if self.client is None:
            raise DeliveryError("the Discord client is not running")
        return self.client

    async def deliver(self, event: InboundEvent, reply: Reply) -> None:
        client = self._client()
        chat = self._chat(client, event)
        leftovers = reply.leftovers
        if reply.resumed and client.user is not None:
            leftovers += await chat.unrecorded(client.user.id, event.message_id, leftovers)
        await chat.remove(leftovers)

        async def sent(message: discord.Message) -> None:
            await reply.sent(str(message.id))

        await stream_by_editing(reply, chat, self._pacer(event), sent)

    async def deliver_voice(self, event: InboundEvent,
                            clip: Awaitable[SpokenClip | None]) -> None:
        client = self._client()
        await deliver_voice_note(clip, self._pacer(event), self._chat(client, event).typing,
                                 partial(self._send_voice, client, event))

    async def _send_voice(self, client: discord.Client, event: InboundEvent,
                          spoken: SpokenClip) -> None:
        reply_to = self._chat(client, event).reply_to
        reference = reply_to.to_message_reference_dict() if reply_to else None
        # discord.py has no public call for voice messages (a message flag plus attachment
        # metadata), so the request is built with its own parameter helper. A voice message
        # carries no text: the text reply went before it.
        with discord.http.handle_message_parameters(
                file=_VoiceNote(spoken), flags=discord.MessageFlags(voice=True),
                message_reference=reference, mention_author=False if reference else None,
                allowed_mentions=discord.AllowedMentions.none()) as params:
            await _translated(client.http.send_message(int(event.chat_id), params=params))

    def _chat(self, client: discord.Client, event: InboundEvent) -> DiscordChat:
        # By id rather than from the cache: resumed events have no discord.py objects.
        guild_id = int(event.group_id) if event.group_id is not None else None
        channel = client.get_partial_messageable(int(event.chat_id), guild_id=guild_id)
        reply_to = None
        if event.chat_kind is ChatKind.GROUP:
            # fail_if_not_exists=False: the answer still arrives if the question was deleted.
            reply_to = discord.MessageReference(
                message_id=int(event.message_id), channel_id=int(event.chat_id),
                guild_id=guild_id, fail_if_not_exists=False)
        return DiscordChat(channel, reply_to)

    def _pacer(self, event: InboundEvent) -> Pacer:
        # Creates and edits share one bucket per channel, so the pacing is per channel too.
        return self._pacers.get(event.chat_id, self.channel.edit_interval)
