"""Telegram, through python-telegram-bot's Bot API client, by long polling.

The polling loop is our own rather than PTB's Updater so that every update is written to the
inbox before the next getUpdates call acknowledges it: a crash can delay an answer, never lose
one. Wire types stop here: `to_event` is the one place a Telegram Update becomes an
InboundEvent, and `TelegramChat` the one place a reply becomes Bot API calls.

Tool approvals go to the owner's DM as a message with [Approve] [Deny] buttons; the presses
come back through the same polling loop as callback queries, which are answered there and
never stored in the inbox (they are not messages to answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import re
import secrets
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from telegram import (
    Bot,
    BotCommand,
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    MessageEntity,
    PhotoSize,
    Update,
    User,
)
from telegram.constants import ChatAction, ChatType, ParseMode
from telegram.error import BadRequest, InvalidToken, NetworkError, RetryAfter, TelegramError
from telegram.request import HTTPXRequest
from telegram.warnings import PTBUserWarning

from adapters.chunking import without_gaps
from adapters.intake import Intake, bot_token
from adapters.streaming import (
    ChatPacers,
    Pacer,
    deliver_voice_note,
    stream_by_editing,
    stream_by_preview,
)
from bot.approvals import Question
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
from bot.events import (
    ChatKind,
    ImageAttachment,
    InboundEvent,
    Reply,
    VoiceAttachment,
    clean_text,
)
from bot.gateway import Gateway

if TYPE_CHECKING:
    from bot.voice.tts import SpokenClip

log = logging.getLogger(__name__)

PLATFORM = "telegram"
TEXT_LIMIT = 4096
T = TypeVar("T")
FetchFile = Callable[[str], Awaitable[bytes]]
# The updates the bot asks for: messages to answer, and presses on its approval buttons.
ALLOWED_UPDATES = ["message", "callback_query"]

# An approval button's callback_data (at most 64 bytes): "approval:<token>:<choice>".
APPROVAL_DATA = "approval"
YES, NO = "yes", "no"
APPROVED = "Approved."
DENIED = "Denied."
EXPIRED = "No answer in time; not run."
STOPPED = "The bot stopped before an answer; not run."
CLOSED = "This question is closed."
OWNER_ONLY = "Only the owner can answer this."


def to_event(update: Update, me: User, fetch_file: FetchFile,
             max_image_bytes: int | None = None) -> InboundEvent | None:
    """An Update as our event, or None for what is not a message to us (edits, channel posts,
    messages from bots, service messages). Of a photo's sizes the largest within
    `max_image_bytes` is taken."""
    message = update.message
    if message is None or message.from_user is None or message.from_user.is_bot:
        return None
    if message.chat.type == ChatType.PRIVATE:
        kind = ChatKind.DM
    elif message.chat.type in (ChatType.GROUP, ChatType.SUPERGROUP):
        kind = ChatKind.GROUP
    else:
        return None
    text = clean_text(message.text or message.caption or "")
    mentioned, text = _strip_mention(message, text, me)
    replied = message.reply_to_message
    sender = message.from_user
    return InboundEvent(
        platform=PLATFORM,
        chat_id=str(_number(message.chat.id, "chat id")),
        chat_kind=kind,
        sender_id=str(_number(sender.id, "sender id")),
        sender_name=sender.full_name,
        message_id=str(_number(message.message_id, "message id")),
        text=text,
        account=me.username,
        bot_names=tuple(name for name in (me.username, me.first_name) if name),
        group_id=str(message.chat.id) if kind is ChatKind.GROUP else None,
        mentioned=mentioned,
        reply_to_bot=bool(replied and replied.from_user and replied.from_user.id == me.id),
        voice=_voice(message, fetch_file),
        images=_images(message, fetch_file, max_image_bytes),
        received_at=message.date,
    )


def _number(value: object, what: str) -> int:
    """Telegram's ids are integers; anything else is a malformed update, refused here."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"the {what} is not a number")


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


def _images(message: Message, fetch_file: FetchFile,
            max_bytes: int | None) -> tuple[ImageAttachment, ...]:
    """A photo (one of the sizes Telegram made of it), or an image sent as a file.

    An album arrives as one message per photo, so a message holds at most one image.
    """
    if message.photo:
        size = _photo_size(message.photo, max_bytes)
        # Telegram re-encodes every photo it is sent as JPEG.
        return (ImageAttachment(mime_type="image/jpeg", size=size.file_size, ref=size.file_id,
                                fetch=partial(fetch_file, size.file_id)),)
    document = message.document
    if document is not None and (document.mime_type or "").startswith("image/"):
        return (ImageAttachment(mime_type=document.mime_type or "image/jpeg",
                                size=document.file_size, ref=document.file_id,
                                fetch=partial(fetch_file, document.file_id)),)
    return ()


def _photo_size(sizes: tuple[PhotoSize, ...], max_bytes: int | None) -> PhotoSize:
    """The largest size within the cap; when none is, the smallest (it is then refused by its
    size, before any download, with a sentence that says so)."""
    by_pixels = sorted(sizes, key=lambda s: s.width * s.height)
    fitting = [s for s in by_pixels
               if max_bytes is None or s.file_size is None or s.file_size <= max_bytes]
    return fitting[-1] if fitting else by_pixels[0]


class _WithoutPayloads(logging.Filter):
    """python-telegram-bot logs a batch it cannot parse with the raw updates in the message,
    people's words included; the adapter quarantines that batch by shape, so the record keeps
    only its first line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Error while parsing updates"):
            record.msg, record.args, record.exc_info = "Error while parsing updates", (), None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_PAYLOAD_FILTER = _WithoutPayloads()


class _Unreadable:
    """An update the library could not parse, kept raw for the quarantine."""

    def __init__(self, payload: object, problem: Exception) -> None:
        self.payload = payload
        self.problem = problem


async def _raw_updates(bot: Bot, **params: object) -> object:
    """getUpdates as Telegram sent it, unparsed: the library's documented way to read what it
    cannot, and to acknowledge without reading."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBUserWarning)
        return await bot.do_api_request("getUpdates", api_kwargs=params)


def _update_id(payload: object, batch: list[tuple[int, Update | _Unreadable]],
               offset: int | None) -> int:
    """An update's id; for one too broken to say, the id after the one before it, so that
    acknowledging it still moves past it."""
    value = payload.get("update_id") if isinstance(payload, dict) else None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return batch[-1][0] + 1 if batch else (offset or 0)


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
    # The Markdown parser loads with the first final text: an idle service does not hold it.
    from adapters.telegram_format import to_telegram_html

    try:
        return await attempt(to_telegram_html(text), ParseMode.HTML)
    except FormattingRejected as exc:
        log.info("Telegram refused the formatting (%s); sending plain text", exc)
        return await attempt(text, None)


class TelegramChat:
    """One reply in one chat, as Bot API calls: drafts and messages in DMs, a message edited in
    place in groups (threaded as a reply to the message that asked)."""

    limit = TEXT_LIMIT

    def __init__(self, bot: Bot, chat_id: int, reply_to: int | None) -> None:
        self.bot = bot
        self.chat_id = chat_id
        self.reply_to = reply_to
        # Each reply gets its own draft; a non-zero id is required.
        self.draft_id = secrets.randbelow(2**31 - 1) + 1

    def final_differs(self, shown: str, final: str) -> bool:
        # Progress goes out as plain text and the final text as HTML: a final edit is needed
        # when the text changed, or when its HTML shows more than the plain text did.
        from adapters.telegram_format import to_telegram_html

        return shown != final or to_telegram_html(final) != html.escape(final, quote=False)

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

    async def remove(self, handles: tuple[str, ...]) -> None:
        """Delete what an interrupted earlier attempt at this reply left in the chat."""
        for handle in handles:
            try:
                await _translated(self.bot.delete_message(self.chat_id, int(handle)))
            except DeliveryError as exc:  # already gone, or too old to delete
                log.info("telegram: could not remove message %s in chat %s: %s", handle,
                         self.chat_id, exc)


def question_text(question: Question) -> str:
    """The approval message: what would run, who asked, and how long the owner has."""
    return (f"Approve a tool call?\n\n{question.request.tool} {question.arguments}\n\n"
            f"Asked by {question.origin}. No answer within {_duration(question.seconds)} "
            "means no.")


def _duration(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        minutes = int(seconds // 60)
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    return f"{seconds:g} s"


def approval_keyboard(token: str) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[
        InlineKeyboardButton("Approve", callback_data=f"{APPROVAL_DATA}:{token}:{YES}"),
        InlineKeyboardButton("Deny", callback_data=f"{APPROVAL_DATA}:{token}:{NO}"),
    ]])


@dataclass
class _OpenQuestion:
    """An approval waiting for the owner: only a press by `owner` settles `answer`."""

    owner: int
    answer: asyncio.Future[bool]


class TelegramAdapter:
    platform = PLATFORM

    def __init__(self, channel: TelegramChannel, gateway: Gateway, *,
                 stop_seconds: float = 10.0) -> None:
        self.channel = channel
        self.gateway = gateway
        self.stop_seconds = stop_seconds
        self.ready = asyncio.Event()
        self._intake = Intake(PLATFORM, gateway, self.deliver, self.deliver_voice)
        self._pacers = ChatPacers()
        self._bot: Bot | None = None
        # The next update wanted; asking for it acknowledges everything before it.
        self._offset: int | None = None
        self._stopping = asyncio.Event()
        self._fetching: asyncio.Future[list[tuple[int, Update | _Unreadable]]] | None = None
        # Approvals put to the owner and not settled yet, by the token on their buttons.
        self._questions: dict[str, _OpenQuestion] = {}

    @property
    def last_seen(self) -> str | None:
        """The last message (or quarantined payload) taken in; all before it were too."""
        return self._intake.last_seen

    async def idle(self) -> None:
        """Wait until every message taken in so far has been answered."""
        await self._intake.idle()

    async def stop(self) -> None:
        """Stop taking updates; serve() then lets replies under way finish and returns."""
        self._stopping.set()
        if self._fetching is not None:
            self._fetching.cancel()

    async def serve(self) -> None:
        poll_timeout = self.channel.poll_timeout
        self._stopping.clear()
        logging.getLogger("telegram.Bot").addFilter(_PAYLOAD_FILTER)  # added once; again is a no-op
        bot = Bot(
            bot_token(PLATFORM, self.channel.token, "TELEGRAM_BOT_TOKEN"),
            base_url=self.channel.api_base_url,
            base_file_url=self.channel.file_base_url,
            # More chats answering at once than there are connections wait their turn for one:
            # a request still waiting was never sent, so giving up on it (the library's 1 s)
            # would only fail a reply the platform would have taken. The read timeout bounds
            # how long any connection stays taken.
            request=HTTPXRequest(connection_pool_size=32, read_timeout=30.0, pool_timeout=None),
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
        stopped = False
        # Asked until the replies under way are done: one waiting for the owner then is cut
        # off with them and asks again at the next start.
        with self.gateway.approvals.asking(PLATFORM, self.ask_owner):
            try:
                await self._prepare(bot)
                self.ready.set()
                log.info("telegram: polling as @%s", bot.username)
                await self._poll(bot, poll_timeout)
                stopped = True
            finally:
                if stopped:
                    await self._intake.drain(self.stop_seconds)
                else:
                    await self._intake.close()
                await self._acknowledge(bot)
                await bot.shutdown()

    async def _acknowledge(self, bot: Bot) -> None:
        """Tell Telegram what was stored, so a restart is not sent it again; anything
        unanswered is resumed from the inbox. Raw, so that an unreadable update still waiting
        cannot make the acknowledgement fail."""
        if self._offset is None:
            return
        with contextlib.suppress(TelegramError):
            await _raw_updates(bot, offset=self._offset, limit=1, timeout=0)

    async def _prepare(self, bot: Bot) -> None:
        await bot.delete_webhook(drop_pending_updates=False)
        with contextlib.suppress(TelegramError):
            await bot.set_my_commands([BotCommand(c.name, c.help[:256]) for c in listed()])
        await self._intake.resume(lambda _event, file_id: self._fetch_file(file_id))

    async def _poll(self, bot: Bot, poll_timeout: int) -> None:
        """Fetch, store and acknowledge updates until stop() is called."""
        failures = 0
        while not self._stopping.is_set():
            self._fetching = asyncio.ensure_future(self._fetch(bot, poll_timeout))
            try:
                batch = await self._fetching
            except asyncio.CancelledError:
                if self._stopping.is_set():  # stop() cut the long poll short; nothing was taken
                    return
                raise
            except RetryAfter as exc:
                wait = exc.retry_after
                await self._pause(wait.total_seconds() if isinstance(wait, timedelta)
                                  else float(wait))
                continue
            except InvalidToken as exc:
                raise AdapterStartError("Telegram no longer accepts the bot token; it may have "
                                        "been revoked.") from exc
            except TelegramError as exc:
                failures += 1
                backoff = min(2.0**failures, 60.0)
                log.warning("telegram: polling failed (%s); retrying in %.0f s", exc, backoff)
                await self._pause(backoff)
                continue
            finally:
                self._fetching = None
            failures = 0
            for update_id, update in batch:
                await self._receive(bot, update_id, update)
                self._offset = update_id + 1

    async def _pause(self, seconds: float) -> None:
        """Wait before polling again, unless a stop comes first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _fetch(self, bot: Bot, poll_timeout: int) -> list[tuple[int, Update | _Unreadable]]:
        """The next batch of updates. When the library cannot parse the batch (an update from
        a newer Bot API, a malformed payload), it is fetched again raw and read update by
        update, so one bad update is set aside instead of stopping every later one."""
        try:
            updates = await bot.get_updates(offset=self._offset, timeout=poll_timeout,
                                            allowed_updates=ALLOWED_UPDATES)
            return [(update.update_id, update) for update in updates]
        except TelegramError:
            raise
        except Exception as exc:
            log.warning("telegram: the library could not read a batch of updates (%s); "
                        "reading them one by one", type(exc).__name__)
        raw = await _raw_updates(bot, offset=self._offset, timeout=0,
                                 allowed_updates=ALLOWED_UPDATES)
        batch: list[tuple[int, Update | _Unreadable]] = []
        for payload in raw if isinstance(raw, list) else []:
            update_id = _update_id(payload, batch, self._offset)
            try:
                batch.append((update_id, Update.de_json(payload, bot)))
            except Exception as exc:
                batch.append((update_id, _Unreadable(payload, exc)))
        return batch

    async def _receive(self, bot: Bot, update_id: int, update: Update | _Unreadable) -> None:
        if isinstance(update, _Unreadable):
            await self._intake.quarantine(f"update {update_id}", update.payload, update.problem)
            return
        try:
            if update.callback_query is not None:
                await self._pressed(bot, update.callback_query)
                return
            event = to_event(update, bot.bot, self._fetch_file, self.gateway.images.max_bytes)
        except Exception as exc:
            # The library parses loosely (a float where a string belongs gets through): one
            # update we cannot make sense of is set aside, never a reason to stop polling.
            await self._intake.quarantine(f"update {update_id}", update.to_dict(), exc)
            return
        if event is not None:
            await self._intake.take(event)

    async def ask_owner(self, question: Question) -> bool:
        """Ask the owner in their DM, with [Approve] [Deny] buttons, and wait for a press."""
        bot = self._client()
        try:
            owner = int(question.owner)
        except ValueError:
            log.warning("telegram: the owner's binding names %r, not a user id; the %s call is "
                        "refused", question.owner, question.request.tool)
            return False
        token = secrets.token_urlsafe(12)
        text = question_text(question)
        answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._questions[token] = _OpenQuestion(owner, answer)
        try:
            try:
                # In a private chat the chat id is the user's id.
                sent = await _translated(bot.send_message(
                    owner, text, reply_markup=approval_keyboard(token)))
            except DeliveryError as exc:  # e.g. the owner never opened a DM with the bot
                log.warning("telegram: could not ask the owner (%s) to approve %s: %s; the "
                            "call is refused", owner, question.request.tool, exc)
                return False
            try:
                async with asyncio.timeout(question.seconds):
                    approved = await answer
            except TimeoutError:
                await self._settle(bot, owner, sent.message_id, text, EXPIRED)
                return False
            except asyncio.CancelledError:
                await asyncio.shield(self._settle(bot, owner, sent.message_id, text, STOPPED))
                raise
            await self._settle(bot, owner, sent.message_id, text,
                               APPROVED if approved else DENIED)
            return approved
        finally:
            del self._questions[token]

    async def _settle(self, bot: Bot, chat_id: int, message_id: int, text: str,
                      verdict: str) -> None:
        """Say on the question what came of it; without a markup the buttons go."""
        try:
            await _translated(bot.edit_message_text(f"{text}\n\n{verdict}", chat_id=chat_id,
                                                    message_id=message_id))
        except Exception as exc:  # the answer stands whether or not the chat shows it
            log.warning("telegram: could not mark the approval question %s in chat %s as %r: "
                        "%s", message_id, chat_id, verdict, exc)

    async def _pressed(self, bot: Bot, query: CallbackQuery) -> None:
        """A press on an approval button: it counts only from the owner the question went to,
        and only while the question is open. Every press is answered, so the button stops
        spinning."""
        data = query.data if isinstance(query.data, str) else ""
        kind, _, rest = data.partition(":")
        token, _, choice = rest.rpartition(":")
        question = self._questions.get(token) if kind == APPROVAL_DATA else None
        if question is None or question.answer.done() or choice not in (YES, NO):
            reply = CLOSED
        elif query.from_user.id != question.owner:
            log.warning("telegram: user %s pressed an approval button meant for the owner; "
                        "ignored", query.from_user.id)
            reply = OWNER_ONLY
        else:
            question.answer.set_result(choice == YES)
            reply = APPROVED if choice == YES else DENIED
        try:
            await _translated(bot.answer_callback_query(query.id, text=reply))
        except DeliveryError as exc:
            log.info("telegram: could not answer a button press: %s", exc)

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

    async def deliver(self, event: InboundEvent, reply: Reply) -> None:
        bot = self._client()
        reply_to = None if event.chat_kind is ChatKind.DM else int(event.message_id)
        chat = TelegramChat(bot, int(event.chat_id), reply_to)
        await chat.remove(reply.leftovers)

        async def sent(message_id: int) -> None:
            await reply.sent(str(message_id))

        if event.chat_kind is ChatKind.DM:
            await stream_by_preview(reply, chat, self._pacer(event), sent)
        else:
            await stream_by_editing(reply, chat, self._pacer(event), sent)
