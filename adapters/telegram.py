"""Telegram, through python-telegram-bot's Bot API client, by long polling.

The polling loop is our own rather than PTB's Updater so that every update is written to the
inbox before the next getUpdates call acknowledges it: a crash can delay an answer, never lose
one. Wire types stop here: `to_event` is the one place a Telegram Update becomes an
InboundEvent, and `TelegramChat` the one place a reply becomes Bot API calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from telegram import Bot, BotCommand, Message, MessageEntity, Update, User
from telegram.constants import ChatAction, ChatType, ParseMode
from telegram.error import BadRequest, InvalidToken, NetworkError, RetryAfter, TelegramError
from telegram.request import HTTPXRequest

from adapters.chunking import without_gaps
from adapters.intake import Intake, bot_token
from adapters.streaming import (
    ChatPacers,
    Pacer,
    deliver_voice_note,
    stream_by_editing,
    stream_by_preview,
)
from adapters.telegram_format import to_telegram_html
from bot.commands import listed
from bot.config import TelegramChannel
from bot.errors import (
    AdapterStartError,
    DeliveryError,
    FormattingRejected,
    NotModified,
    PlatformUnavailable,
    RateLimited,
)
from bot.events import ChatKind, InboundEvent, ReplyPart, VoiceAttachment
from bot.gateway import Gateway

if TYPE_CHECKING:
    from bot.voice.tts import SpokenClip

log = logging.getLogger(__name__)

PLATFORM = "telegram"
TEXT_LIMIT = 4096
T = TypeVar("T")
FetchFile = Callable[[str], Awaitable[bytes]]


def to_event(update: Update, me: User, fetch_file: FetchFile) -> InboundEvent | None:
    """An Update as our event, or None for what is not a message to us (edits, channel posts,
    messages from bots, service messages)."""
    message = update.message
    if message is None or message.from_user is None or message.from_user.is_bot:
        return None
    if message.chat.type == ChatType.PRIVATE:
        kind = ChatKind.DM
    elif message.chat.type in (ChatType.GROUP, ChatType.SUPERGROUP):
        kind = ChatKind.GROUP
    else:
        return None
    text = message.text or message.caption or ""
    mentioned, text = _strip_mention(message, text, me)
    replied = message.reply_to_message
    sender = message.from_user
    return InboundEvent(
        platform=PLATFORM,
        chat_id=str(message.chat.id),
        chat_kind=kind,
        sender_id=str(sender.id),
        sender_name=sender.full_name,
        message_id=str(message.message_id),
        text=text,
        account=me.username,
        bot_names=tuple(name for name in (me.username, me.first_name) if name),
        group_id=str(message.chat.id) if kind is ChatKind.GROUP else None,
        mentioned=mentioned,
        reply_to_bot=bool(replied and replied.from_user and replied.from_user.id == me.id),
        voice=_voice(message, fetch_file),
        received_at=message.date,
    )


def _strip_mention(message: Message, text: str, me: User) -> tuple[bool, str]:
    """Whether the bot is named in the message, and the text without its @name."""
    handle = f"@{me.username}".lower() if me.username else None
    entities = message.parse_entities() or message.parse_caption_entities()
    mentioned = any(
        (entity.type == MessageEntity.MENTION and value.lower() == handle)
        or (entity.type == MessageEntity.TEXT_MENTION and entity.user is not None
            and entity.user.id == me.id)
        # /new@this_bot is addressed to us even in a busy group.
        or (entity.type == MessageEntity.BOT_COMMAND and handle is not None
            and value.lower().endswith(handle))
        for entity, value in entities.items()
    )
    if mentioned and me.username:
        # "@bot what time is it" reads as "what time is it"; "/new@bot" stays a command.
        text = re.sub(rf"(?<![\w/])@{re.escape(me.username)}\b", "", text, flags=re.IGNORECASE)
        text = without_gaps(text)
    return mentioned, text


def _voice(message: Message, fetch_file: FetchFile) -> VoiceAttachment | None:
    media = message.voice or message.audio
    if media is None:
        return None
    duration = media.duration
    seconds = duration.total_seconds() if isinstance(duration, timedelta) else float(duration)
    return VoiceAttachment(mime_type=media.mime_type or "audio/ogg", duration=seconds,
                           ref=media.file_id, fetch=partial(fetch_file, media.file_id))


async def _translated(call: Awaitable[T]) -> T:
    """A Bot API call with PTB's errors translated into delivery errors."""
    try:
        return await call
    except RetryAfter as exc:
        wait = exc.retry_after
        raise RateLimited(wait.total_seconds() if isinstance(wait, timedelta) else float(wait),
                          "by Telegram") from exc
    except BadRequest as exc:
        problem = exc.message.lower()
        if "can't parse entities" in problem:
            raise FormattingRejected(exc.message) from exc
        if "message is not modified" in problem:
            raise NotModified(exc.message) from exc
        raise DeliveryError(exc.message) from exc
    except InvalidToken as exc:
        raise DeliveryError("the bot token was rejected") from exc
    except NetworkError as exc:  # includes TimedOut
        raise PlatformUnavailable(exc.message) from exc
    except TelegramError as exc:
        raise DeliveryError(exc.message) from exc


async def _formatted(attempt: Callable[[str, str | None], Awaitable[T]], text: str,
                     final: bool) -> T:
    """Progress goes out as plain text (half a reply is rarely well-formed Markdown); the final
    text as HTML, or plain again if Telegram refuses the HTML."""
    if not final:
        return await attempt(text, None)
    try:
        return await attempt(to_telegram_html(text), ParseMode.HTML)
    except FormattingRejected as exc:
        log.info("Telegram refused the formatting (%s); sending plain text", exc)
        return await attempt(text, None)


class TelegramChat:
    """One reply in one chat, as Bot API calls: drafts and messages in DMs, a message edited in
    place in groups (threaded as a reply to the message that asked)."""

    limit = TEXT_LIMIT
    reformats_final = True  # the final version is sent as HTML

    def __init__(self, bot: Bot, chat_id: int, reply_to: int | None) -> None:
        self.bot = bot
        self.chat_id = chat_id
        self.reply_to = reply_to
        # Each reply gets its own draft; a non-zero id is required.
        self.draft_id = secrets.randbelow(2**31 - 1) + 1

    async def send(self, text: str, final: bool) -> int:
        async def attempt(body: str, parse_mode: str | None) -> int:
            message = await _translated(self.bot.send_message(
                self.chat_id, body, parse_mode=parse_mode,
                reply_to_message_id=self.reply_to, allow_sending_without_reply=True))
            return message.message_id

        return await _formatted(attempt, text, final)

    async def edit(self, handle: int, text: str, final: bool) -> None:
        async def attempt(body: str, parse_mode: str | None) -> None:
            with contextlib.suppress(NotModified):
                await _translated(self.bot.edit_message_text(
                    body, chat_id=self.chat_id, message_id=handle, parse_mode=parse_mode))

        await _formatted(attempt, text, final)

    async def preview(self, text: str) -> None:
        await _translated(self.bot.send_message_draft(self.chat_id, self.draft_id, text))

    async def typing(self) -> None:
        await _translated(self.bot.send_chat_action(self.chat_id, ChatAction.TYPING))


class TelegramAdapter:
    platform = PLATFORM

    def __init__(self, channel: TelegramChannel, gateway: Gateway) -> None:
        self.channel = channel
        self.gateway = gateway
        self.ready = asyncio.Event()
        self._intake = Intake(PLATFORM, gateway, self.deliver, self.deliver_voice)
        self._pacers = ChatPacers()
        self._bot: Bot | None = None
        # The next update wanted; asking for it acknowledges everything before it.
        self._offset: int | None = None

    async def idle(self) -> None:
        """Wait until every message taken in so far has been answered."""
        await self._intake.idle()

    async def serve(self) -> None:
        poll_timeout = self.channel.poll_timeout
        bot = Bot(
            bot_token(PLATFORM, self.channel.token, "TELEGRAM_BOT_TOKEN"),
            base_url=self.channel.api_base_url,
            base_file_url=self.channel.file_base_url,
            request=HTTPXRequest(connection_pool_size=32, read_timeout=30.0),
            # A long poll must outlast the server's own wait, or every quiet poll times out.
            get_updates_request=HTTPXRequest(read_timeout=poll_timeout + 10.0),
        )
        try:
            await bot.initialize()
        except InvalidToken as exc:
            await bot.shutdown()
            raise AdapterStartError("Telegram rejected the bot token; check "
                                    "channels.telegram.token or TELEGRAM_BOT_TOKEN.") from exc
        self._bot = bot
        try:
            await self._prepare(bot)
            self.ready.set()
            log.info("telegram: polling as @%s", bot.username)
            await self._poll(bot, poll_timeout)
        finally:
            await self._intake.close()
            if self._offset is not None:
                # Acknowledge what was stored, so a restart is not sent it again; anything
                # unanswered is resumed from the inbox.
                with contextlib.suppress(TelegramError):
                    await bot.get_updates(offset=self._offset, timeout=0)
            await bot.shutdown()

    async def _prepare(self, bot: Bot) -> None:
        await bot.delete_webhook(drop_pending_updates=False)
        with contextlib.suppress(TelegramError):
            await bot.set_my_commands([BotCommand(c.name, c.help[:256]) for c in listed()])
        await self._intake.resume(lambda _event, file_id: self._fetch_file(file_id))

    async def _poll(self, bot: Bot, poll_timeout: int) -> None:
        failures = 0
        while True:
            try:
                updates = await bot.get_updates(offset=self._offset, timeout=poll_timeout,
                                                allowed_updates=["message"])
            except RetryAfter as exc:
                wait = exc.retry_after
                await asyncio.sleep(wait.total_seconds() if isinstance(wait, timedelta)
                                    else float(wait))
                continue
            except InvalidToken as exc:
                raise AdapterStartError("Telegram no longer accepts the bot token; it may have "
                                        "been revoked.") from exc
            except TelegramError as exc:
                failures += 1
                backoff = min(2.0**failures, 60.0)
                log.warning("telegram: polling failed (%s); retrying in %.0f s", exc, backoff)
                await asyncio.sleep(backoff)
                continue
            failures = 0
            for update in updates:
                await self._receive(bot, update)
                self._offset = update.update_id + 1

    async def _receive(self, bot: Bot, update: Update) -> None:
        try:
            event = to_event(update, bot.bot, self._fetch_file)
        except Exception:
            log.exception("telegram: could not read update %s; skipped", update.update_id)
            return
        if event is not None:
            await self._intake.take(event)

    def _client(self) -> Bot:
        if self._bot is None:
            raise DeliveryError("the Telegram client is not running")
        return self._bot

    async def _fetch_file(self, file_id: str) -> bytes:
        file = await _translated(self._client().get_file(file_id))
        return bytes(await _translated(file.download_as_bytearray()))

    def _pacer(self, event: InboundEvent) -> Pacer:
        interval = (self.channel.draft_interval if event.chat_kind is ChatKind.DM
                    else self.channel.edit_interval)
        return self._pacers.get(event.chat_id, interval)

    async def deliver_voice(self, event: InboundEvent,
                            clip: Awaitable[SpokenClip | None]) -> None:
        bot, chat_id = self._client(), int(event.chat_id)
        reply_to = None if event.chat_kind is ChatKind.DM else int(event.message_id)

        async def recording() -> None:
            await _translated(bot.send_chat_action(chat_id, ChatAction.RECORD_VOICE))

        async def send(spoken: SpokenClip) -> None:
            await _translated(bot.send_chat_action(chat_id, ChatAction.UPLOAD_VOICE))
            await _translated(bot.send_voice(
                chat_id, voice=spoken.ogg_opus, duration=round(spoken.duration),
                filename="reply.ogg", reply_to_message_id=reply_to,
                allow_sending_without_reply=True))

        await deliver_voice_note(clip, self._pacer(event), recording, send)

    async def deliver(self, event: InboundEvent, reply: AsyncIterator[ReplyPart]) -> None:
        bot = self._client()
        if event.chat_kind is ChatKind.DM:
            chat = TelegramChat(bot, int(event.chat_id), reply_to=None)
            await stream_by_preview(reply, chat, self._pacer(event))
        else:
            chat = TelegramChat(bot, int(event.chat_id), reply_to=int(event.message_id))
            await stream_by_editing(reply, chat, self._pacer(event))
