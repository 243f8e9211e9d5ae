"""The path of one message: inbox → router → persona → session → model → reply → record.

Adapters call `Gateway.handle(event, deliver)`; `deliver` is the adapter's own coroutine that
consumes the reply stream and puts it on the platform. Nothing here knows any platform.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from bot import context
from bot.events import InboundEvent, ReplyFailed, ReplyPart, ReplyText
from bot.pairing import redeem
from bot.providers import StreamEnd, TextDelta
from bot.errors import ProviderError
from bot.residency import ModelHost
from bot.router import Resolution, resolve
from bot.store import Store, inbox
from bot.store.bindings import list_bindings
from bot.store.history import TurnRecord, open_conversation, save_turn, start_new_session
from persona import Persona

if TYPE_CHECKING:  # speech pulls in audio libraries; a text-only process never loads them
    from bot.speech import Speaker, Speech
    from bot.voice.tts import SpokenClip

log = logging.getLogger(__name__)

Deliver = Callable[[InboundEvent, AsyncIterator[ReplyPart]], Awaitable[None]]
# Sends a voice note; it is handed the clip still being made, so the adapter can show that it is
# recording while the last sentences are synthesized. The clip is None when nothing was speakable.
DeliverVoice = Callable[[InboundEvent, Awaitable["SpokenClip | None"]], Awaitable[None]]

EMPTY_REPLY = "The model had nothing to say to that. Please try rephrasing."
UNSUPPORTED = "I can read text and voice messages, but not that kind of message yet."
NOT_HEARD = "I couldn't make out that voice note."
VOICE_OFF = "I can't listen to voice notes here; please send text."
TOO_LONG = "That voice note is too long for me; please keep it under {:.0f} minutes."
GREETING = "Yes? Ask me anything."
DELIVERY_FAILED = "delivery failed"


class Outcome(StrEnum):
    ANSWERED = "answered"
    FAILED = "failed"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"


@dataclass(frozen=True)
class TurnResult:
    outcome: Outcome
    # Filled for model turns: seconds from the start of the turn to the first text, and in all.
    first_token_seconds: float | None = None
    total_seconds: float | None = None
    completion_tokens: int | None = None

    @property
    def answered(self) -> bool:
        return self.outcome is Outcome.ANSWERED

    @property
    def tokens_per_second(self) -> float | None:
        """Decode speed: tokens after the first, over the time after the first."""
        if not (self.completion_tokens and self.first_token_seconds is not None
                and self.total_seconds and self.completion_tokens > 1):
            return None
        decoding = self.total_seconds - self.first_token_seconds
        return (self.completion_tokens - 1) / decoding if decoding > 0 else None


@dataclass(frozen=True)
class Command:
    name: str
    help: str


COMMANDS = (
    Command("new", "start a fresh conversation"),
    Command("whoami", "say which persona answers you"),
    Command("pair", "pair this DM with the owner's code from `hearthbot pair`"),
)


class Gateway:
    def __init__(self, store: Store, models: ModelHost, personas: Mapping[str, Persona],
                 speech: Speech | None = None) -> None:
        self.store = store
        self.models = models
        self.personas = personas
        self.speech = speech
        self._roles = {name: p.role for name, p in personas.items()}
        self._admin_persona = next((n for n, p in personas.items() if p.role == "admin"), None)

    async def accept(self, event: InboundEvent) -> int | None:
        """Store an event before it is acknowledged; None when it was seen before."""
        inbox_id = await inbox.record(self.store, event)
        if inbox_id is None:
            log.info("%s message %s in chat %s seen before; not answering again",
                     event.platform, event.message_id, event.chat_id)
        return inbox_id

    async def handle(self, event: InboundEvent, deliver: Deliver,
                     deliver_voice: DeliverVoice | None = None) -> TurnResult:
        """Answer one inbound event exactly once."""
        inbox_id = await self.accept(event)
        if inbox_id is None:
            return TurnResult(Outcome.DUPLICATE)
        return await self.answer(inbox_id, event, deliver, deliver_voice)

    async def pending(self, platform: str) -> list[tuple[int, InboundEvent]]:
        """Events stored but never answered, oldest first.

        Adapters ask before they start receiving: then this is exactly what the last run left
        behind, and nothing of this run can be answered twice.
        """
        return await inbox.unanswered(self.store, platform)

    async def persona_for(self, event: InboundEvent) -> Resolution:
        bindings = await list_bindings(self.store, event.platform)
        return resolve(event, bindings, self._roles)

    async def start_over(self, event: InboundEvent) -> None:
        """Close the conversation of the event's chat with its persona; the history stays."""
        persona = (await self.persona_for(event)).persona
        await start_new_session(self.store, event.platform, event.chat_id, persona)

    async def answer(self, inbox_id: int, event: InboundEvent, deliver: Deliver,
                     deliver_voice: DeliverVoice | None = None) -> TurnResult:
        if event.voice is not None and not event.transcribed:
            heard = await self._hear(inbox_id, event, deliver)
            if isinstance(heard, Outcome):
                return TurnResult(heard)
            event = heard
        if not event.addressed:
            await inbox.mark(self.store, inbox_id, inbox.IGNORED)
            return TurnResult(Outcome.IGNORED)
        resolution = await self.persona_for(event)
        persona = self.personas[resolution.persona]
        command = _command_in(event.text)
        if command is not None or not (event.text.strip() or event.voice):
            if command is not None:
                reply = await self._run_command(*command, event, persona)
            else:  # a bare mention, or a sticker, photo or the like
                reply = GREETING if event.mentioned else UNSUPPORTED
            await deliver(event, _single(reply))
            await inbox.mark(self.store, inbox_id, inbox.ANSWERED)
            return TurnResult(Outcome.ANSWERED)
        return await self._model_turn(inbox_id, event, persona, deliver, deliver_voice)

    async def _hear(self, inbox_id: int, event: InboundEvent,
                    deliver: Deliver) -> InboundEvent | Outcome:
        """The event with its voice note transcribed; or, when it could not be heard, the
        outcome once that was answered (or, unaddressed in a group, let be)."""
        from bot.errors import VoiceError

        assert event.voice is not None
        problem, transcript = NOT_HEARD, None
        limit = self.speech.spec.max_seconds if self.speech else 0.0
        if self.speech and event.voice.duration > limit:
            log.info("voice note %s is %.0f s long; refused", event.message_id,
                     event.voice.duration)
            return await self._unheard(inbox_id, event, deliver, TOO_LONG.format(limit / 60))
        try:
            audio = await event.voice.fetch()
            transcript = await self.speech.transcribe(audio) if self.speech else None
            if transcript is None:
                problem = VOICE_OFF
        except VoiceError as exc:
            log.warning("voice note %s in %s chat %s: %s", event.message_id, event.platform,
                        event.chat_id, exc)
            problem = exc.user_message
        except Exception:
            log.exception("could not fetch or transcribe voice note %s from %s",
                          event.message_id, event.platform)
        if transcript is not None and transcript.text.strip():
            log.info("transcribed %.1f s of speech in %.2f s", transcript.duration,
                     transcript.seconds_taken)
            log.debug("voice note %s says: %s", event.message_id, transcript.text)
            text = "\n".join(part for part in (event.text, transcript.text.strip()) if part)
            named = self.speech is not None and self.speech.names_the_bot(
                transcript.text, event.bot_names)
            return replace(event, text=text, transcribed=True,
                           mentioned=event.mentioned or named)
        return await self._unheard(inbox_id, event, deliver, problem)

    async def _unheard(self, inbox_id: int, event: InboundEvent, deliver: Deliver,
                       problem: str) -> Outcome:
        if not event.addressed:
            await inbox.mark(self.store, inbox_id, inbox.IGNORED)
            return Outcome.IGNORED
        await deliver(event, _single(problem))
        await inbox.mark(self.store, inbox_id, inbox.FAILED, error=problem)
        return Outcome.FAILED

    async def _run_command(self, command: str, argument: str, event: InboundEvent,
                           persona: Persona) -> str:
        if command == "start":
            return ("Hello! Send me a message and I'll answer. "
                    + " ".join(f"/{c.name} to {c.help}." for c in COMMANDS[:2]))
        if command == "pair":
            if self._admin_persona is None:
                return "Pairing is not available: no admin persona is configured."
            result = await redeem(self.store, event, argument, self._admin_persona)
            return result.message
        if command == "new":
            await start_new_session(self.store, event.platform, event.chat_id, persona.name)
            return "Started a fresh conversation."
        if command == "whoami":
            return f"You are talking to the {persona.name} persona ({persona.role})."
        known = ", ".join(f"/{c.name} ({c.help})" for c in COMMANDS)
        return f"I don't know that command. I understand: {known}."

    async def _model_turn(self, inbox_id: int, event: InboundEvent, persona: Persona,
                          deliver: Deliver, deliver_voice: DeliverVoice | None) -> TurnResult:
        target = self.models.target(persona.model)
        conversation = await open_conversation(self.store, event.platform, event.chat_id,
                                               persona.name)
        output_tokens = persona.params.max_tokens or target.model.max_tokens
        messages = context.fit_messages(persona.system_prompt, conversation.messages, event.text,
                                        event.transcribed, target.model, output_tokens,
                                        conversation.summary)
        pieces: list[str] = []
        first_token_at: datetime | None = None
        first_token_seconds: float | None = None
        end: StreamEnd | None = None
        failure: str | None = None
        started = time.perf_counter()
        speaker = (self.speech.speaker() if self.speech and deliver_voice
                   and _speaks(persona, event) else None)

        async def reply() -> AsyncGenerator[ReplyPart, None]:
            nonlocal first_token_at, first_token_seconds, end, failure, speaker
            try:
                async for delta in target.provider.stream(target.model, messages,
                                                          persona.params):
                    if isinstance(delta, TextDelta):
                        if first_token_at is None:
                            first_token_at = _now()
                            first_token_seconds = time.perf_counter() - started
                        pieces.append(delta.text)
                        if speaker is not None:
                            speaker = await _feed(speaker, delta.text)
                        yield ReplyText(delta.text)
                    elif isinstance(delta, StreamEnd):
                        end = delta
            except ProviderError as exc:
                failure = str(exc)
                log.warning("turn for %s message %s failed: %s", event.platform,
                            event.message_id, exc)
                yield ReplyFailed(exc.user_message)
                return
            except Exception as exc:
                # A bug or a reply no parser expected: the user still gets a sentence.
                failure = f"unexpected error: {exc!r}"
                log.exception("turn for %s message %s failed", event.platform, event.message_id)
                yield ReplyFailed(ProviderError.user_message)
                return
            if not "".join(pieces).strip():
                failure = "the model returned no text"
                yield ReplyFailed(EMPTY_REPLY)

        try:
            async with aclosing(reply()) as stream:
                await deliver(event, stream)
        except Exception as exc:
            log.exception("delivering the reply to %s chat %s failed", event.platform,
                          event.chat_id)
            failure = failure or f"{DELIVERY_FAILED}: {exc!r}"
        status = inbox.FAILED if failure else inbox.ANSWERED
        await save_turn(self.store, TurnRecord(
            inbox_id=inbox_id, session_id=conversation.session_id, persona=persona.name,
            model=target.label, received_at=_naive(event.received_at),
            first_token_at=_naive(first_token_at) if first_token_at else None,
            done_at=_naive(_now()),
            prompt_tokens=end.prompt_tokens if end else None,
            completion_tokens=end.completion_tokens if end else None,
            status=status, error=failure, user_text=event.text,
            user_transcribed=event.transcribed, reply_text="".join(pieces),
        ))
        # Recorded before speaking: once the text is delivered the message is answered, and a
        # restart during synthesis must not answer it again.
        if speaker is not None and deliver_voice is not None:
            await self._speak(event, speaker, deliver_voice, failed=failure is not None)
        result = TurnResult(Outcome.FAILED if failure else Outcome.ANSWERED,
                            first_token_seconds, time.perf_counter() - started,
                            end.completion_tokens if end else None)
        log.info("%s turn in %s chat %s: persona=%s model=%s first token %s s, %.2f s in all, "
                 "%s tokens", status, event.platform, event.chat_id, persona.name, target.label,
                 f"{first_token_seconds:.2f}" if first_token_seconds is not None else "-",
                 result.total_seconds or 0.0, result.completion_tokens)
        return result

    async def _speak(self, event: InboundEvent, speaker: Speaker, deliver_voice: DeliverVoice,
                     failed: bool) -> None:
        if failed:
            speaker.abandon()
            return
        try:
            await deliver_voice(event, speaker.finish())
        except Exception:
            # The text reply has arrived; a missing voice note is logged, not retried.
            log.exception("the spoken reply to %s chat %s failed", event.platform, event.chat_id)


async def _feed(speaker: Speaker, text: str) -> Speaker | None:
    """Hand text to the speaker; a speaker that fails is dropped and the text goes on alone."""
    try:
        await speaker.feed(text)
    except Exception:
        log.exception("speech synthesis failed; the reply continues as text only")
        speaker.abandon()
        return None
    return speaker


def _speaks(persona: Persona, event: InboundEvent) -> bool:
    if persona.voice_replies == "always":
        return True
    return persona.voice_replies == "inbound" and event.transcribed


_COMMAND_NAME = re.compile(r"[a-z0-9_]{1,32}")


def _command_in(text: str) -> tuple[str, str] | None:
    """`/pair ABC` or `/pair@botname ABC` → ("pair", "ABC"); anything else is not a command."""
    if not text.startswith("/") or len(text) < 2 or text[1].isspace():
        return None
    word, _, argument = text[1:].partition(" ")
    name = word.split("@", 1)[0].lower()
    # "/usr/bin is missing" is a sentence, not a command.
    return (name, argument.strip()) if _COMMAND_NAME.fullmatch(name) else None


async def _single(text: str) -> AsyncIterator[ReplyPart]:
    yield ReplyText(text)


def _now() -> datetime:
    return datetime.now(UTC)


def _naive(moment: datetime) -> datetime:
    """Stored times are naive UTC (see bot.store.tables.utcnow)."""
    return moment.astimezone(UTC).replace(tzinfo=None)
