"""The one event type every adapter produces, and the reply pieces the core hands back."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
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


class ChatKind(StrEnum):
    DM = "dm"
    GROUP = "group"


async def _not_fetchable() -> bytes:
    raise LookupError("this voice note's bytes were not kept; the adapter must fetch it again")


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
    # Speech-to-text output can be misheard or hallucinated: prompts mark it as such.
    transcribed: bool = False
    # What the bot is called in this chat (user name, display name): a voice note saying one
    # of these is addressed to it.
    bot_names: tuple[str, ...] = ()
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def addressed(self) -> bool:
        """Whether the bot should answer: always in a DM, in a group only when addressed."""
        return self.chat_kind is ChatKind.DM or self.mentioned or self.reply_to_bot


@dataclass(frozen=True)
class ReplyText:
    """A piece of the reply as it streams."""

    text: str


@dataclass(frozen=True)
class ReplyFailed:
    """The turn could not be completed; `message` is one plain sentence for the user."""

    message: str


ReplyPart = ReplyText | ReplyFailed
