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
from bot.agent import AgentLoop, CutShort, ToolStatus
from bot.config import ImagesSpec
from bot.errors import DeliveryError, ImageError, ProviderError
from bot.events import (
    InboundEvent,
    MessageStatus,
    Reply,
    ReplyFailed,
    ReplyPart,
    ReplyStatus,
    ReplyText,
)
from bot.providers import ChatMessage, ThinkingDelta
from bot.providers.base import ImagePart, sees_images
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
# A model that thought and never answered: its thoughts are not the answer, so they are not
# shown; this sentence is.
THOUGHT_ONLY_REPLY = "I thought it over but reached no answer. Please try asking again."
THOUGHT_CUT_REPLY = ("I ran out of room while still thinking, before I could answer. Please "
                     "ask again, perhaps a narrower question.")
# Ends an answer cut at the token cap, so it never just stops mid-word. The voice says the
# short form: the reply does not trail off into silence either.
CUT_MARKER = " …\n\n(cut off at the length limit)"
SPOKEN_CUT_MARKER = " … Cut off at the length limit."
CUT_REPLY_NOTE = ("(Your message was too long for me to read whole: I read the first "
                  "{read:,} of its {total:,} characters.)\n\n")
DELIVERY_FAILED = "delivery failed"
CANNOT_SEE = "This model can't see images."
IMAGE_MARKER = "[image]"
FIRST_IMAGES_ONLY = "I looked at the first {count} images only."


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
                 context: ContextKeeper, images: ImagesSpec | None = None, *,
                 show_thinking: bool = False) -> None:
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
        # The chain of thought, for the record only, and the seconds spent on it; the owner
        # may ask (/think on) for a "thought for N s" line under the answer.
        self.show_thinking = show_thinking
        self.thoughts: list[str] = []
        self.thinking_seconds = 0.0
        self._thinking_since: float | None = None
        self.cut_short = False
        self.images_spec = images or ImagesSpec()
        self.images: tuple[ImagePart, ...] = ()

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
                                        tools), window, self._session_size(window))
        result = TurnResult(self.status, self.first_token_seconds,
                            time.perf_counter() - self.started, self._completion_tokens)
        log.info("%s turn in %s chat %s: persona=%s model=%s first token %s s, %.2f s in all, "
                 "%s tokens", self.status, self.event.platform, self.event.chat_id,
                 self.persona.name, self.target.label,
                 f"{self.first_token_seconds:.2f}" if self.first_token_seconds is not None
                 else "-", result.total_seconds or 0.0, result.completion_tokens)
        return result

    def _session_size(self, window: prompt_window.Window) -> int | None:
        """The session's size in tokens after this turn, counted as the summarizer counts it:
        the request just sent, and its reply; None when only loading the session can tell
        (history left out of the request, or tool results added to it)."""
        prompt = self.prompt
        if prompt is None or prompt.left_out or prompt.summary_dropped or self.agent.run.calls:
            return None
        reply = window.meter.correct(prompt_window.estimate_tokens("".join(self.pieces)))
        return prompt.tokens + prompt_window.MESSAGE_OVERHEAD_TOKENS + reply

    def _learn(self, window: prompt_window.Window) -> None:
        """Once per turn: what the backend counted for the first request corrects the guard's
        estimate for this model."""
        # A request with images is not learned from: the backend's count includes the images'
        # tokens, which the estimate of text does not, and would skew it for later turns.
        if (self.prompt is not None and self.agent.run.first_prompt_tokens is not None
                and not self._learned and not self.images):
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
            if self.event.images:
                problem = await self._look_at_images()
                if problem is not None and not (self.images or self.event.text.strip()):
                    # Nothing left to answer but the sentence itself: the model is not asked.
                    self.pieces.append(problem)
                    yield ReplyText(problem)
                    return
                if problem is not None:
                    yield ReplyText(f"{problem}\n\n")
            # The images ride on this turn's own message alone, measured with it.
            self.prompt = prompt = await window.fit(
                self.persona.system_prompt, conversation.summary, conversation.messages,
                self.event.text, self.event.transcribed, self.images)
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
                if isinstance(delta, ThinkingDelta):
                    self._heard_thinking(delta.text)
                    continue  # the adapter keeps its typing indicator on meanwhile
                self._thinking_stopped()
                if isinstance(delta, ToolStatus):
                    yield ReplyStatus(delta.text)
                    continue
                if isinstance(delta, CutShort):
                    self.cut_short = True
                    continue
                self._heard_text(delta.text)
                if self.speaker is not None:
                    await self._feed_speaker(delta.text)
                yield ReplyText(delta.text)
            self._thinking_stopped()
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
            if self.thoughts:
                self.failure = "the model only thought and gave no answer"
                yield ReplyFailed(THOUGHT_CUT_REPLY if self.cut_short else THOUGHT_ONLY_REPLY)
                return
            self.failure = "the model returned no text"
            yield ReplyFailed(EMPTY_REPLY)
            return
        # Marker and line are for the reader only: the history keeps the model's own words.
        if self.cut_short:
            if self.speaker is not None:
                await self._feed_speaker(SPOKEN_CUT_MARKER)
            yield ReplyText(CUT_MARKER)
        if self.show_thinking and self.thoughts:
            yield ReplyText(f"\n\n({thought_line(self.thinking_seconds)})")

    def _heard_thinking(self, text: str) -> None:
        if self._thinking_since is None:
            self._thinking_since = time.perf_counter()
            if self.thoughts:  # a later step's thoughts, after a tool ran
                self.thoughts.append("\n\n")
        self.thoughts.append(text)

    def _thinking_stopped(self) -> None:
        if self._thinking_since is not None:
            self.thinking_seconds += time.perf_counter() - self._thinking_since
            self._thinking_since = None

    async def _look_at_images(self) -> str | None:
        """Fetch and downscale the event's images for a model that sees them; the sentence
        for the person when one or more cannot reach it."""
        if not sees_images(self.target.model):
            log.info("%s message %s has %d image(s); %s does not see images", self.event.platform,
                     self.event.message_id, len(self.event.images), self.target.label)
            return CANNOT_SEE
        from bot.images import fetch_and_prepare  # Pillow loads with the first image only

        spec = self.images_spec
        prepared: list[ImagePart] = []
        problem: str | None = None
        if len(self.event.images) > spec.max_per_message:
            problem = FIRST_IMAGES_ONLY.format(count=spec.max_per_message)
        for image in self.event.images[:spec.max_per_message]:
            try:
                prepared.append(await fetch_and_prepare(image, spec.max_bytes, spec.max_side))
            except ImageError as exc:
                log.info("%s message %s: image %s left out: %s", self.event.platform,
                         self.event.message_id, image.ref, exc)
                problem = problem or exc.user_message
            except DeliveryError as exc:  # the platform would not hand the file over
                log.warning("%s message %s: could not fetch image %s: %s", self.event.platform,
                            self.event.message_id, image.ref, exc)
                problem = problem or ImageError.user_message
            except Exception:
                # Anything else the fetch raised (a network error the adapter did not
                # translate): said, not raised, with the traceback for the log.
                log.exception("%s message %s: could not fetch image %s", self.event.platform,
                              self.event.message_id, image.ref)
                problem = problem or ImageError.user_message
        self.images = tuple(prepared)
        return problem

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
        self._thinking_stopped()  # a reply that broke off mid-thought
        await save_turn(self.store, TurnRecord(
            inbox_id=self.inbox_id, session_id=session_id, persona=self.persona.name,
            model=self.target.label, received_at=_naive(self.event.received_at),
            first_token_at=_naive(self.first_token_at) if self.first_token_at else None,
            done_at=_naive(datetime.now(UTC)),
            prompt_tokens=self.agent.run.prompt_tokens if self.agent.run.counted else None,
            completion_tokens=self._completion_tokens,
            tool_calls=tuple(f"{c.tool}:{c.outcome}:{c.audit_id}" for c in self.agent.run.calls),
            status=self.status, error=self.failure, user_text=self._user_text(),
            user_transcribed=self.event.transcribed, reply_text="".join(self.pieces),
            thinking="".join(self.thoughts) or None,
            thinking_ms=round(self.thinking_seconds * 1000) if self.thoughts else None,
            cached_tokens=self.agent.run.cached_tokens, platform=self.event.platform,
            chat_id=self.event.chat_id, fallback_from=self.target.fallback_from,
        ))

    def _user_text(self) -> str:
        """What the history keeps of the message: its text, marked when images came with it
        (their bytes are never stored), so later turns know something was shown."""
        if not self.event.images:
            return self.event.text
        return " ".join(part for part in (IMAGE_MARKER, self.event.text) if part)

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


def thought_line(seconds: float) -> str:
    """The short line the owner may ask for under a reply that was thought over first."""
    if seconds < 1:
        return "thought for under a second"
    return f"thought for {seconds:.0f} s"


def _naive(moment: datetime) -> datetime:
    """Stored times are naive UTC (see bot.store.tables.utcnow)."""
    return moment.astimezone(UTC).replace(tzinfo=None)
