"""The path of one message: inbox → voice → router → persona → command or model turn → record.

Adapters store each event with `accept` before the platform is told it arrived, then hand it to
`answer` in the chat's lane with their own `deliver` coroutines, which consume the reply stream
and put it on the platform. The console calls `handle`, which does both. Adapters also
register, with `approvals.asking`, how they put a tool approval to the owner. Nothing here
knows any platform; the model turn itself lives in bot/turn.py.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from bot import commands
from bot.agent import AgentLoop
from bot.approvals import Approvals
from bot.config import ContextSpec, CostSpec, ImagesSpec
from bot.errors import DeliveryError, HearthbotError, VoiceError
from bot.events import InboundEvent, MessageStatus, Reply, ReplyPart, ReplyText
from bot.model_host import ModelHost
from bot.router import Resolution, resolve
from bot.store import Store, inbox
from bot.store.bindings import BindingCache
from bot.store.history import start_new_session
from bot.store.usage import resets_in, spent_today
from bot.summaries import ChatContext, ContextKeeper
from bot.tools import ToolContext, ToolGate
from bot.turn import Deliver, DeliverVoice, Turn, TurnResult
from persona import Persona

if TYPE_CHECKING:  # speech pulls in audio libraries; a text-only process never loads them
    from bot.voice.speech import Speech

log = logging.getLogger(__name__)

UNSUPPORTED = "I can read text, voice messages and images, but not that kind of message yet."
NOT_HEARD = "I couldn't make out that voice note."
VOICE_OFF = "I can't listen to voice notes here; please send text."
TOO_LONG = "That voice note is too long for me; please keep it under {:.0f} minutes."
GREETING = "Yes? Ask me anything."
OVER_BUDGET = ("I've used up today's allowance here, so I can't answer until it resets at "
               "{resets}.")


class Gateway:
    def __init__(self, store: Store, models: ModelHost, personas: Mapping[str, Persona],
                 speech: Speech | None = None, tools: ToolGate | None = None,
                 data_dir: Path | None = None, approvals: Approvals | None = None,
                 context: ContextSpec | None = None,
                 images: ImagesSpec | None = None,
                 prices: Mapping[str, CostSpec] | None = None) -> None:
        self.store = store
        self.models = models
        self.personas = personas
        self.speech = speech
        # Without a gate (or a place for the tools' data) no persona gets any tool.
        self.tools = tools if data_dir is not None else None
        self.data_dir = data_dir
        # Adapters read the size cap to pick what to download; turns, how to shrink it.
        self.images = images or ImagesSpec()
        self._roles = {name: p.role for name, p in personas.items()}
        self._bindings = BindingCache(store)
        # Where adapters register how they ask the owner to approve a tool call (the gate
        # was handed `approvals.approve` when the service was wired).
        self.approvals = approvals if approvals is not None else Approvals(store, self._roles)
        self._admin_persona = next((n for n, p in personas.items() if p.role == "admin"), None)
        self.thought_lines = commands.ThoughtLines()  # /think, per chat
        self._records: set[asyncio.Future[None]] = set()
        # Token meters and running summaries; its background work stops with `settle`.
        self.context = ContextKeeper(store, context or ContextSpec(), self._shielded)
        # Each model's price per million tokens, for the personas' daily cost budgets.
        self.prices: Mapping[str, CostSpec] = prices or {}
        self._unaddressed_voice = _HourlyBudget(speech.spec.unaddressed_per_hour if speech
                                                else 0)

    def wants(self, event: InboundEvent) -> bool:
        """Whether an event is worth keeping at all. A group message not addressed to the bot
        is dropped unstored; a group voice note only when it might still name the bot and the
        hourly budget for hearing such notes allows."""
        if event.addressed:
            return True
        if event.voice is None or self.speech is None:
            return False
        return self._unaddressed_voice.take()

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
            return TurnResult(MessageStatus.DUPLICATE)
        return await self.answer(inbox_id, event, deliver, deliver_voice)

    async def pending(self, platform: str) -> list[inbox.Pending]:
        """Events stored but never answered, oldest first.

        Adapters ask before they start receiving: then this is exactly what the last run left
        behind, and nothing of this run can be answered twice.
        """
        return await inbox.unanswered(self.store, platform)

    async def resolve(self, event: InboundEvent) -> Resolution:
        """Which persona answers this event, and why (the binding that decided)."""
        bindings = await self._bindings.bindings(event.platform)
        return resolve(event, bindings, self._roles)

    async def start_over(self, event: InboundEvent) -> None:
        """Close the conversation of the event's chat with its persona; the history stays."""
        persona = (await self.resolve(event)).persona
        await start_new_session(self.store, event.platform, event.chat_id, persona)

    async def answer(self, inbox_id: int, event: InboundEvent, deliver: Deliver,
                     deliver_voice: DeliverVoice | None = None,
                     leftovers: tuple[str, ...] = (), resumed: bool = False) -> TurnResult:
        """Answer a stored event. `leftovers` are messages an interrupted earlier attempt at
        this reply left in the chat (`resumed`: an earlier run began it); the adapter removes
        them first."""
        reply = _ReplyOutlet(self, inbox_id, event, deliver, leftovers, resumed)
        try:
            return await self._answer(inbox_id, event, reply, deliver_voice)
        except DeliveryError as exc:  # the platform refused the answer: nothing more to send
            log.warning("answering %s message %s in chat %s failed: %s", event.platform,
                        event.message_id, event.chat_id, exc)
            await self._shielded(inbox.mark(self.store, inbox_id, MessageStatus.FAILED,
                                            error=f"delivery failed: {exc}"))
            return TurnResult(MessageStatus.FAILED)
        except Exception as exc:
            # A bug, not a failure any layer below foresaw: the person still gets a sentence,
            # the row is closed with the reason, and the chat's later messages go on.
            log.exception("answering %s message %s in chat %s failed", event.platform,
                          event.message_id, event.chat_id)
            await self._shielded(inbox.mark(self.store, inbox_id, MessageStatus.FAILED,
                                            error=f"unexpected error: {exc!r}"))
            with contextlib.suppress(Exception):
                await reply.deliver(_single(HearthbotError.user_message), record=False)
            return TurnResult(MessageStatus.FAILED)

    async def settle(self) -> None:
        """Wait for turn records still being written (a stop must not cut one in half), and
        stop summarizing: a summary under way is cancelled and stores nothing."""
        while self._records:
            await asyncio.gather(*list(self._records), return_exceptions=True)
        await self.context.close()
        while self._records:  # a summary's write that had begun is finished, not cut
            await asyncio.gather(*list(self._records), return_exceptions=True)

    async def _shielded(self, write: Awaitable[None]) -> None:
        """Run a record write to its end even when the turn is cancelled meanwhile: once a
        reply is delivered, its record must land, or a restart would answer it again."""
        task = asyncio.ensure_future(write)
        self._records.add(task)
        task.add_done_callback(self._records.discard)
        await asyncio.shield(task)

    async def _answer(self, inbox_id: int, event: InboundEvent, reply: _ReplyOutlet,
                      deliver_voice: DeliverVoice | None) -> TurnResult:
        if event.voice is not None and not event.transcribed:
            event, problem = await self._transcribed(event)
            if problem is not None:
                return await self._finish(inbox_id, event, reply, problem,
                                          MessageStatus.FAILED)
        if not event.addressed:
            await inbox.mark(self.store, inbox_id, MessageStatus.IGNORED)
            return TurnResult(MessageStatus.IGNORED)
        persona = self.personas[(await self.resolve(event)).persona]
        command = commands.parse(event.text)
        if command is not None:
            name, argument = command
            text = await commands.run(name, commands.CommandCall(
                event, argument, persona, self.store, self._admin_persona, self.models,
                self._chat_context(event, persona), self.thought_lines))
            return await self._finish(inbox_id, event, reply, text, MessageStatus.ANSWERED)
        if not (event.text.strip() or event.voice or event.images):  # a mention, a sticker
            text = GREETING if event.mentioned else UNSUPPORTED
            return await self._finish(inbox_id, event, reply, text, MessageStatus.ANSWERED)
        if (refusal := await self._over_budget(persona)) is not None:
            # Refused before any model is asked; closed as failed, so it is never retried.
            return await self._finish(inbox_id, event, reply, refusal, MessageStatus.FAILED)
        speaker = (self.speech.speaker() if self.speech and deliver_voice
                   and _speaks(persona, event) else None)
        # The tools' context comes from the router's decision (persona) and the event's own
        # platform and chat: nothing the model or the message says can change it.
        context = (ToolContext(persona, event.platform, event.chat_id, self.data_dir)
                   if self.data_dir is not None else None)
        agent = AgentLoop(self.models.target(persona.model, persona.fallback), persona,
                          self.tools, context)
        turn = Turn(self.store, agent, inbox_id, event, speaker, self._shielded, self.context,
                    self.images, show_thinking=self.thought_lines.shown(event))
        return await turn.run(reply.deliver, deliver_voice)

    async def _over_budget(self, persona: Persona) -> str | None:
        """The sentence that refuses a turn once the persona's daily budget is spent, or None.

        The day is UTC's: one reset time for everyone, whatever the machine's time zone."""
        budget = persona.budget
        if budget is None:
            return None
        spent = await spent_today(self.store, self.prices, persona.name)
        over_tokens = budget.daily_tokens is not None and spent.tokens.total >= budget.daily_tokens
        # A cost that cannot be known (a model without a price any more) does not refuse.
        over_cost = (budget.daily_cost is not None and spent.cost is not None
                     and spent.cost >= budget.daily_cost)
        if not (over_tokens or over_cost):
            return None
        log.info("persona %s is over its daily budget (%d tokens, cost %s); turn refused",
                 persona.name, spent.tokens.total,
                 f"{spent.cost:.4f}" if spent.cost is not None else "unknown")
        return OVER_BUDGET.format(resets=resets_in())

    def _chat_context(self, event: InboundEvent, persona: Persona) -> ChatContext:
        tools = tuple(self.tools.specs(persona)) if self.tools is not None else ()
        return ChatContext(self.context, self.models, persona, tools, event.platform,
                           event.chat_id)

    async def _finish(self, inbox_id: int, event: InboundEvent, reply: _ReplyOutlet,
                      text: str, status: MessageStatus) -> TurnResult:
        """Answer with one sentence (or, for an unaddressed group message, not at all)."""
        if not event.addressed:
            await inbox.mark(self.store, inbox_id, MessageStatus.IGNORED)
            return TurnResult(MessageStatus.IGNORED)
        await reply.deliver(_single(text))
        error = text if status is MessageStatus.FAILED else None
        await self._shielded(inbox.mark(self.store, inbox_id, status, error=error))
        return TurnResult(status)

    async def _transcribed(self, event: InboundEvent) -> tuple[InboundEvent, str | None]:
        """The event with its voice note's transcript added, or the event and the sentence that
        says why it could not be heard."""
        assert event.voice is not None
        if self.speech is None:
            return event, VOICE_OFF
        limit = self.speech.spec.max_seconds
        if event.voice.duration > limit:
            log.info("voice note %s is %.0f s long; refused", event.message_id,
                     event.voice.duration)
            return event, TOO_LONG.format(limit / 60)
        try:
            audio = await event.voice.fetch()
            transcript = await self.speech.transcribe(audio)
        except VoiceError as exc:
            log.warning("voice note %s in %s chat %s: %s", event.message_id, event.platform,
                        event.chat_id, exc)
            return event, exc.user_message
        except DeliveryError as exc:  # the platform would not hand the file over: no traceback
            log.warning("voice note %s in %s chat %s could not be fetched: %s", event.message_id,
                        event.platform, event.chat_id, exc)
            return event, NOT_HEARD
        except Exception:
            log.exception("could not fetch or transcribe voice note %s from %s",
                          event.message_id, event.platform)
            return event, NOT_HEARD
        if transcript is None:
            return event, VOICE_OFF
        if not transcript.text.strip():
            return event, NOT_HEARD
        log.info("transcribed %.1f s of speech in %.2f s", transcript.duration,
                 transcript.seconds_taken)
        log.debug("voice note %s says: %s", event.message_id, transcript.text)
        text = "\n".join(part for part in (event.text, transcript.text.strip()) if part)
        named = self.speech.names_the_bot(transcript.text, event.bot_names)
        return replace(event, text=text, transcribed=True,
                       mentioned=event.mentioned or named), None


def _speaks(persona: Persona, event: InboundEvent) -> bool:
    if persona.voice_replies == "always":
        return True
    return persona.voice_replies == "inbound" and event.transcribed


async def _single(text: str) -> AsyncIterator[ReplyPart]:
    yield ReplyText(text)


class _HourlyBudget:
    """At most `per_hour` takes in any hour; it remembers only the takes of the last hour."""

    def __init__(self, per_hour: int) -> None:
        self.per_hour = per_hour
        self._taken: collections.deque[float] = collections.deque()

    def take(self) -> bool:
        now = time.monotonic()
        while self._taken and now - self._taken[0] >= 3600:
            self._taken.popleft()
        if len(self._taken) >= self.per_hour:
            return False
        self._taken.append(now)
        return True


class _ReplyOutlet:
    """Hands one answer's parts to the adapter as a Reply: with the leftovers of an earlier
    attempt to remove, and each sent message remembered until the turn is recorded."""

    def __init__(self, gateway: Gateway, inbox_id: int, event: InboundEvent, deliver: Deliver,
                 leftovers: tuple[str, ...], resumed: bool) -> None:
        self._gateway = gateway
        self._inbox_id = inbox_id
        self._event = event
        self._deliver = deliver
        self._leftovers = leftovers
        self._resumed = resumed

    async def deliver(self, parts: AsyncIterator[ReplyPart], record: bool = True) -> None:
        # Only the first delivery can meet what an earlier run left behind.
        reply = (Reply(parts, self._leftovers, self._sent, self._resumed) if record
                 else Reply(parts, self._leftovers, resumed=self._resumed))
        await self._deliver(self._event, reply)
        self._leftovers, self._resumed = (), False

    async def _sent(self, handle: str) -> None:
        await inbox.add_sent(self._gateway.store, self._inbox_id, handle)
