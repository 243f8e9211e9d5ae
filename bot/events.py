"""The one event type every adapter produces, and the reply pieces the core hands back."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum


class MessageStatus(StrEnum):
    """Where an inbound message stands; the inbox, the turn record and the gateway share it."""

    RECEIVED = "received"  # stored, not yet answered
    ANSWERED = "answered"
    FAILED = "failed"  # answered with a plain sentence about what went wrong
    IGNORED = "ignored"  # not addressed to the bot (a group message without a mention)
    DUPLICATE = "duplicate"  # seen before; never stored twice, never answered twice
    REJECTED = "rejected"  # a payload that could not be read; quarantined, never answered


class ChatKind(StrEnum):
    DM = "dm"
    GROUP = "group"


def clean_text(value: object) -> str:
    """Text as the core wants it: a string (a number sent as text becomes its digits), with
    lone UTF-16 surrogates, which no encoder accepts, replaced by U+FFFD."""
    text = value if isinstance(value, str) else ("" if value is None else str(value))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # Paired surrogates become the character they encode; lone ones become U+FFFD.
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


async def _not_fetchable() -> bytes:
    raise LookupError("this attachment's bytes were not kept; the adapter must fetch it again")


def _check_file(mime_type: object, ref: object) -> None:
    """What every attachment needs to be fetched and told apart: a media type and a handle."""
    if not isinstance(mime_type, str):
        raise ValueError(f"an attachment's media type must be a string, not "
                         f"{type(mime_type).__name__}")
    if not isinstance(ref, str) or not ref:
        raise ValueError("an attachment needs a non-empty string as its reference")


@dataclass(frozen=True)
class VoiceAttachment:
    """A voice note or audio file; the bytes are fetched only when needed.

    `ref` is the platform's own handle for the file (a file id, a URL), kept with the stored
    event so that the adapter can fetch it again after a restart.
    """

    mime_type: str
    duration: float
    ref: str
    fetch: Callable[[], Awaitable[bytes]] = field(default=_not_fetchable, repr=False,
                                                  compare=False)

    def __post_init__(self) -> None:
        _check_file(self.mime_type, self.ref)
        duration = self.duration
        if isinstance(duration, bool) or not isinstance(duration, int | float) \
                or not math.isfinite(duration) or duration < 0:
            raise ValueError(f"a voice note's duration must be a number of seconds, not "
                             f"{type(duration).__name__}")
        object.__setattr__(self, "duration", float(duration))


@dataclass(frozen=True)
class ImageAttachment:
    """A photo or image file; its bytes are fetched only when a model that sees images answers.

    `size` is the file's size in bytes as the platform reports it before any download (None when
    it does not say), so that an image over the cap is refused without fetching it. `ref`, like
    a voice note's, lets the adapter fetch it again after a restart.
    """

    mime_type: str
    size: int | None
    ref: str
    fetch: Callable[[], Awaitable[bytes]] = field(default=_not_fetchable, repr=False,
                                                  compare=False)

    def __post_init__(self) -> None:
        _check_file(self.mime_type, self.ref)
        if self.size is not None and (isinstance(self.size, bool)
                                      or not isinstance(self.size, int) or self.size < 0):
            raise ValueError(f"an image's size must be a number of bytes, not "
                             f"{type(self.size).__name__}")


@dataclass(frozen=True)
class InboundEvent:
    platform: str
    chat_id: str
    chat_kind: ChatKind
    sender_id: str
    sender_name: str
    message_id: str
    text: str = ""
    account: str | None = None
    group_id: str | None = None
    mentioned: bool = False
    reply_to_bot: bool = False
    voice: VoiceAttachment | None = None
    # Photos and image files, in the order the platform lists them; the text is their caption.
    images: tuple[ImageAttachment, ...] = ()
    # Speech-to-text output can be misheard or hallucinated: prompts mark it as such.
    transcribed: bool = False
    # What the bot is called in this chat (user name, display name): a voice note saying one
    # of these is addressed to it.
    bot_names: tuple[str, ...] = ()
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        # The one gate every platform's payload passes: whatever a platform or a newer API
        # sends, the core only ever sees well-formed text and ids, so a malformed message is
        # refused here, at the edge, instead of failing later in a turn or a stored row.
        for name in ("platform", "chat_id", "sender_id", "message_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, not {type(value).__name__}")
        if not isinstance(self.chat_kind, ChatKind):
            raise ValueError(f"unknown chat kind {self.chat_kind!r}")
        if not isinstance(self.received_at, datetime):
            raise ValueError("received_at must be a datetime")
        object.__setattr__(self, "text", clean_text(self.text))
        object.__setattr__(self, "sender_name", clean_text(self.sender_name))
        object.__setattr__(self, "bot_names", tuple(clean_text(n) for n in self.bot_names))
        object.__setattr__(self, "images", tuple(self.images))

    @property
    def addressed(self) -> bool:
        """Whether the bot should answer: always in a DM, in a group only when addressed."""
        return self.chat_kind is ChatKind.DM or self.mentioned or self.reply_to_bot


@dataclass(frozen=True)
class ReplyText:
    """A piece of the reply as it streams."""

    text: str


@dataclass(frozen=True)
class ReplyStatus:
    """What the assistant is doing meanwhile ("reading notes/todo.md…"): shown while nothing
    newer is, never part of the final reply."""

    text: str


@dataclass(frozen=True)
class ReplyFailed:
    """The turn could not be completed; `message` is one plain sentence for the user."""

    message: str


ReplyPart = ReplyText | ReplyStatus | ReplyFailed


async def _not_recorded(handle: str) -> None:
    return None


@dataclass(frozen=True)
class Reply:
    """What an adapter is handed to deliver.

    Iterate it for the parts as they stream. `leftovers` are messages an earlier, interrupted
    attempt at this same reply left in the chat: the adapter removes them before it sends
    anything, so a restart never leaves a truncated reply beside the full one. The adapter
    calls `sent` with each message's platform id as soon as that message exists (the last one
    excepted: the turn's record follows it at once). `resumed` says an earlier run began this
    reply: a crash between a message's creation and its record leaves one that `leftovers`
    cannot name, which an adapter that can read its chat looks for itself.
    """

    parts: AsyncIterator[ReplyPart]
    leftovers: tuple[str, ...] = ()
    sent: Callable[[str], Awaitable[None]] = _not_recorded
    resumed: bool = False

    def __aiter__(self) -> Reply:
        return self

    def __anext__(self) -> Awaitable[ReplyPart]:
        return self.parts.__anext__()
