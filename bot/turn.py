"""One model turn, from the prompt to the record.

A `Turn` fits the conversation into the model's window, streams the model's reply to the
adapter (feeding the speaker sentence by sentence when the reply is also spoken), records the
turn, and only then hands the voice note over. Summarizing the conversation, when it has grown
long, is handed to the context keeper last, so it never delays this reply or the next one's
first token. Its progress lives in plain attributes, read by the record and the result once the
adapter has consumed the stream.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from bot import prompt_window
from bot.agent import AgentLoop, ToolStatus
from bot.errors import DeliveryError, ProviderError
from bot.events import (
    InboundEvent,
    MessageStatus,
    Reply,
    ReplyFailed,
    ReplyPart,
    ReplyStatus,
    ReplyText,
)
from bot.providers import ChatMessage
from bot.store import Store
from bot.store.history import Conversation, TurnRecord, open_conversation, save_turn
from bot.summaries import ContextKeeper, Job, output_budget

if TYPE_CHECKING:  # speech pulls in audio libraries; a text-only process never loads them
    from bot.voice.speech import Speaker
    from bot.voice.tts import SpokenClip

log = logging.getLogger(__name__)

Deliver = Callable[[InboundEvent, Reply], Awaitable[None]]
# How a turn hands its reply to the adapter (the gateway adds what the adapter needs besides).
SendReply = Callable[[AsyncIterator[ReplyPart]], Awaitable[None]]
# Runs a record write to its end even if the turn is cancelled meanwhile.
Shield = Callable[[Awaitable[None]], Awaitable[None]]
# Sends a voice note; it is handed the clip still being made, so the adapter can show that it is
# recording while the last sentences are synthesized. The clip is None when nothing was speakable.
DeliverVoice = Callable[[InboundEvent, Awaitable["SpokenClip | None"]], Awaitable[None]]

EMPTY_REPLY = "The model had nothing to say to that. Please try rephrasing."
CUT_REPLY_NOTE = ("(Your message was too long for me to read whole: I read the first "
                  "{read:,} of its {total:,} characters.)\n\n")
DELIVERY_FAILED = "delivery failed"


@dataclass(frozen=True)
class TurnResult:
    status: MessageStatus
    # Filled for model turns: seconds from the start of the turn to the first text, and in all.
    first_token_seconds: float | None = None
    total_seconds: float | None = None
    completion_tokens: int | None = None

    @property
    def answered(self) -> bool:
        return self.status is MessageStatus.ANSWERED

    @property
    def tokens_per_second(self) -> float | None:
        """Decode speed: tokens after the first, over the time after the first."""
        if not (self.completion_tokens and self.first_token_seconds is not None
                and self.total_seconds and self.completion_tokens > 1):
            return None
        decoding = self.total_seconds - self.first_token_seconds
        return (self.completion_tokens - 1) / decoding if decoding > 0 else None


class Turn:
    def __init__(self, store: Store, agent: AgentLoop, inbox_id: int,
                 event: InboundEvent, speaker: Speaker | None, shield: Shield,
                 context: ContextKeeper) -> None:
        self.store = store
        self.agent = agent
        self.context = context
        self.target = agent.target
        self.persona = agent.persona
        self.inbox_id = inbox_id
        self.event = event
        self.speaker = speaker
        self.shield = shield
        self.started = time.perf_counter()
        self.pieces: list[str] = []
        self.first_token_at: datetime | None = None
        self.first_token_seconds: float | None = None
        self.failure: str | None = None
        self.prompt: prompt_window.Prompt | None = None
        self._learned = False

    async def run(self, send: SendReply, deliver_voice: DeliverVoice | None) -> TurnResult:
        conversation = await open_conversation(self.store, self.event.platform,
                                               self.event.chat_id, self.persona.name)
        tools = tuple(self.agent.tools())
        window = self.context.window(self.target, output_budget(self.persona, self.target),
                                     tools)
        self.agent.refit = functools.partial(self._refit, window)
        try:
            # From the measuring to the last token the backend is this reply's: a summary
            # being written on it stops and waits.
            with self.context.replying(self.target):
                async with aclosing(self._reply(window, conversation)) as stream:
                    await send(stream)
        except DeliveryError as exc:  # the platform refused: a known failure, no traceback
            log.warning("delivering the reply to %s chat %s failed: %s", self.event.platform,
                        self.event.chat_id, exc)
            self.failure = self.failure or f"{DELIVERY_FAILED}: {exc}"
        except Exception as exc:
            log.exception("delivering the reply to %s chat %s failed", self.event.platform,
                          self.event.chat_id)
            self.failure = self.failure or f"{DELIVERY_FAILED}: {exc!r}"
        # The final message is out: from here to the record is the window in which a crash
        # would answer this message again, so nothing else happens in between.
        await self.shield(self._record(conversation.session_id))
        self._learn(window)
        # Recorded before speaking: once the text is delivered the message is answered, and a
        # restart during synthesis must not answer it again.
        if self.speaker is not None and deliver_voice is not None:
            await self._speak(deliver_voice)
        if self.status is MessageStatus.ANSWERED:
            self.context.after_turn(Job(conversation.session_id, self.target, self.persona,
                                        tools))
        result = TurnResult(self.status, self.first_token_seconds,
                            time.perf_counter() - self.started, self._completion_tokens)
        log.info("%s turn in %s chat %s: persona=%s model=%s first token %s s, %.2f s in all, "
                 "%s tokens", self.status, self.event.platform, self.event.chat_id,
                 self.persona.name, self.target.label,
                 f"{self.first_token_seconds:.2f}" if self.first_token_seconds is not None
                 else "-", result.total_seconds or 0.0, result.completion_tokens)
        return result

    def _learn(self, window: prompt_window.Window) -> None:
        """Once per turn: what the backend counted for the first request corrects the guard's
        estimate for this model."""
        if (self.prompt is not None and self.agent.run.first_prompt_tokens is not None
                and not self._learned):
            window.learn(self.prompt.estimate, self.agent.run.first_prompt_tokens)
            self._learned = True

    async def _refit(self, window: prompt_window.Window, messages: list[ChatMessage],
                     own: int) -> list[ChatMessage]:
        # The first request's count is in by now: the grown request is measured with it.
        self._learn(window)
        return await window.refit(messages, own)

    @property
    def _completion_tokens(self) -> int | None:
        return self.agent.run.completion_tokens if self.agent.run.counted else None

    @property
    def status(self) -> MessageStatus:
        return MessageStatus.FAILED if self.failure else MessageStatus.ANSWERED

    async def _reply(self, window: prompt_window.Window,
                     conversation: Conversation) -> AsyncGenerator[ReplyPart, None]:
        try:
            self.prompt = prompt = await window.fit(
                self.persona.system_prompt, conversation.summary, conversation.messages,
                self.event.text, self.event.transcribed)
            if prompt.left_out:
                log.warning("%s chat %s: %d earlier messages are not summarized and do not "
                            "fit the window; they are left out of this request",
                            self.event.platform, self.event.chat_id, prompt.left_out)
            if prompt.summary_dropped:
                log.warning("%s chat %s: the message leaves no room for the summary; it is left "
                            "out of this request", self.event.platform, self.event.chat_id)
            if prompt.cut is not None:
                read, total = prompt.cut
                log.info("%s message %s cut to %d of %d characters to fit the window",
                         self.event.platform, self.event.message_id, read, total)
                yield ReplyText(CUT_REPLY_NOTE.format(read=read, total=total))
            async for delta in self.agent.reply(prompt.messages):
                if isinstance(delta, ToolStatus):
                    yield ReplyStatus(delta.text)
                    continue
                self._heard_text(delta.text)
                if self.speaker is not None:
                    await self._feed_speaker(delta.text)
                yield ReplyText(delta.text)
        except ProviderError as exc:
            self.failure = str(exc)
            log.warning("turn for %s message %s failed: %s", self.event.platform,
                        self.event.message_id, exc)
            yield ReplyFailed(exc.user_message)
            return
        except Exception as exc:
            # A bug or a reply no parser expected: the user still gets a sentence.
            self.failure = f"unexpected error: {exc!r}"
            log.exception("turn for %s message %s failed", self.event.platform,
                          self.event.message_id)
            yield ReplyFailed(ProviderError.user_message)
            return
        if not "".join(self.pieces).strip():
            self.failure = "the model returned no text"
            yield ReplyFailed(EMPTY_REPLY)

    def _heard_text(self, text: str) -> None:
        if self.first_token_at is None:
            self.first_token_at = datetime.now(UTC)
            self.first_token_seconds = time.perf_counter() - self.started
        self.pieces.append(text)

    async def _feed_speaker(self, text: str) -> None:
        """A speaker that fails is dropped, and the reply goes on as text alone."""
        assert self.speaker is not None
        try:
            await self.speaker.feed(text)
        except Exception:
            log.exception("speech synthesis failed; the reply continues as text only")
            self.speaker.abandon()
            self.speaker = None

    async def _record(self, session_id: int) -> None:
        await save_turn(self.store, TurnRecord(
            inbox_id=self.inbox_id, session_id=session_id, persona=self.persona.name,
            model=self.target.label, received_at=_naive(self.event.received_at),
            first_token_at=_naive(self.first_token_at) if self.first_token_at else None,
            done_at=_naive(datetime.now(UTC)),
            prompt_tokens=self.agent.run.prompt_tokens if self.agent.run.counted else None,
            completion_tokens=self._completion_tokens,
            tool_calls=tuple(f"{c.tool}:{c.outcome}:{c.audit_id}" for c in self.agent.run.calls),
            status=self.status, error=self.failure, user_text=self.event.text,
            user_transcribed=self.event.transcribed, reply_text="".join(self.pieces),
            cached_tokens=self.agent.run.cached_tokens, platform=self.event.platform,
            chat_id=self.event.chat_id, fallback_from=self.target.fallback_from,
        ))

    async def _speak(self, deliver_voice: DeliverVoice) -> None:
        assert self.speaker is not None
        if self.failure is not None:
            self.speaker.abandon()
            return
        try:
            await deliver_voice(self.event, self.speaker.finish())
        except Exception:
            # The text reply has arrived; a missing voice note is logged, not retried.
            log.exception("the spoken reply to %s chat %s failed", self.event.platform,
                          self.event.chat_id)


def _naive(moment: datetime) -> datetime:
    """Stored times are naive UTC (see bot.store.tables.utcnow)."""
    return moment.astimezone(UTC).replace(tzinfo=None)
