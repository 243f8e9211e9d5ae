"""Running summaries: the oldest turns of a long conversation folded into one note.

After a reply is delivered, the keeper measures what the next request would take. Past
`context.summarize_at` of the budget, the oldest turns that the kept window does not hold are
folded into the session's running summary by the resident model, with a short fixed prompt. The
summary is stored with the id of the last message it covers and rides, as one note in the
system message, ahead of the verbatim turns of every later request. The newest turns (at least
the last two exchanges) always stay verbatim.

A summary never stands in front of a reply: it runs only while no reply is under way on the
same backend, and a reply that begins cancels the summary being written (it is written again
once the backend is idle). A summary that fails (model down, empty or overlong) changes
nothing: the previous summary and the turns stay, the guard leaves the oldest verbatim turns
out of the request instead, and the next attempt waits a growing number of turns.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import cast

from bot.config import ContextSpec, GenerationParams
from bot.errors import HearthbotError
from bot.model_host import ModelHost, ModelTarget
from bot.prompt_window import (
    TokenMeter,
    Window,
    as_chat,
    estimate_prompt,
    kept_from,
    largest,
    system_message,
)
from bot.providers import ChatMessage, Delta, StreamEnd, TextDelta, ToolSpec
from bot.providers.base import output_cap
from bot.store import Store
from bot.store.history import (
    Conversation,
    StoredMessage,
    load_conversation,
    messages_between,
    open_conversation,
    save_summary,
)
from bot.store.usage import record_summary
from persona import Persona

log = logging.getLogger(__name__)

SUMMARY_PROMPT = (
    "You keep the running summary of a chat between a user and an assistant. Rewrite the "
    "summary so that it also covers the new turns. Keep every name, number, date, fact, "
    "preference, decision and open request. Write plain sentences, at most {words} words, "
    "and nothing but the summary."
)
# No chain of thought: thoughts would spend the summary's small token budget and are dropped.
SUMMARY_PARAMS = GenerationParams(temperature=0.2, think=False)
# After a failed summary the next attempt waits 0, 1, 3, 7, then 15 turns: a model that is
# down is asked again now and then, never in a loop.
MAX_WAIT_TURNS = 15
# Below this share of the threshold, by the turn's own count, a session is not read back to be
# counted again. The turn counts the way the summarizer does, except its reply, which the
# backend's tokenizer has not seen: the margin is for that.
FAR_BELOW = 0.5
FOLD_BATCH = 100  # messages read from the store per summarizing request, at most

# Runs a write to its end even if the task awaiting it is cancelled (the gateway's shield).
Shield = Callable[[Awaitable[None]], Awaitable[None]]


class SummaryRejected(HearthbotError):
    """The model answered, but not with a usable summary."""

    user_message = "the model did not write a usable summary"


@dataclass(frozen=True)
class Job:
    """What summarizing one session needs: the model that answers in it, and the budget its
    turns have (which the summary and the kept turns must leave room in)."""

    session_id: int
    target: ModelTarget
    persona: Persona
    tools: tuple[ToolSpec, ...] = ()

    @property
    def output_tokens(self) -> int:
        return output_budget(self.persona, self.target)


@dataclass(frozen=True)
class Folded:
    messages: int  # messages newly covered by the summary
    summary: str
    requests: int = 0


def output_budget(persona: Persona, target: ModelTarget) -> int:
    return output_cap(target.model, persona.params)


class _Lane:
    """One backend: the replies under way on it, and the summaries waiting for it."""

    def __init__(self) -> None:
        self.replies = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.queue: dict[int, Job] = {}
        self.worker: asyncio.Task[None] | None = None
        self.running: asyncio.Task[Folded] | None = None


@dataclass
class _Backoff:
    failures: int = 0
    wait_turns: int = 0


class ContextKeeper:
    """The gateway's context guard state: each model's token meter, and the summaries."""

    def __init__(self, store: Store, spec: ContextSpec, shield: Shield) -> None:
        self.store = store
        self.spec = spec
        self.shield = shield
        self.meters: dict[str, TokenMeter] = {}
        self._lanes: dict[str, _Lane] = {}
        self._backoff: dict[int, _Backoff] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._closed = False

    def window(self, target: ModelTarget, output_tokens: int,
               tools: Sequence[ToolSpec] = ()) -> Window:
        meter = self.meters.setdefault(target.label, TokenMeter())
        return Window(target, meter, output_tokens, tools, self.spec.margin)

    def threshold(self, window: Window) -> float:
        """The session size, in tokens, past which its older turns are summarized."""
        return self.spec.summarize_at * window.budget

    def summary_limit(self, window: Window) -> int:
        """The longest summary, in tokens, that the turns' budget leaves room for."""
        return max(int(window.budget * self.spec.summary_share), 16)

    @contextlib.contextmanager
    def replying(self, target: ModelTarget) -> Iterator[None]:
        """Held while a reply uses the backend: summaries wait, and the one being written is
        cancelled (it is written again when the backend is idle)."""
        lane = self._lane(target)
        lane.replies += 1
        lane.idle.clear()
        if lane.running is not None:
            lane.running.cancel()
        try:
            yield
        finally:
            lane.replies -= 1
            if lane.replies == 0:
                lane.idle.set()

    def after_turn(self, job: Job, window: Window, size_at_most: int | None) -> None:
        """A reply was delivered in this session: summarize it in the background if the next
        request would be too full (unless an earlier failure says to wait a few turns).

        `size_at_most` is the turn's own estimate of the session's size, when it has one: far
        below the threshold, the session is not loaded and counted again just to learn that."""
        if self._closed:
            return
        if size_at_most is not None and size_at_most < FAR_BELOW * self.threshold(window):
            return
        backoff = self._backoff.get(job.session_id)
        if backoff is not None and backoff.wait_turns > 0:
            backoff.wait_turns -= 1
            return
        lane = self._lane(job.target)
        lane.queue[job.session_id] = job
        if lane.worker is None or lane.worker.done():
            lane.worker = asyncio.create_task(self._work(lane),
                                              name=f"summaries-{job.target.label}")

    async def compact(self, job: Job) -> Folded:
        """Fold everything but the last two exchanges into the summary now (`/compact`).
        Raises a HearthbotError when the summary could not be written."""
        with self.replying(job.target):
            folded = await self._summarize(job, force=True)
        self._backoff.pop(job.session_id, None)
        return folded

    @property
    def working(self) -> bool:
        """Whether a summary is waiting or being written."""
        return any(lane.worker is not None and not lane.worker.done()
                   for lane in self._lanes.values())

    async def idle(self) -> None:
        """Wait until no summary is waiting or being written."""
        while workers := [lane.worker for lane in self._lanes.values()
                          if lane.worker is not None and not lane.worker.done()]:
            await asyncio.wait(workers)

    async def close(self) -> None:
        """Stop: a summary being written is cancelled; nothing half-written is stored."""
        self._closed = True
        workers = [lane.worker for lane in self._lanes.values() if lane.worker is not None]
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)

    def _lane(self, target: ModelTarget) -> _Lane:
        # By the model's label: a turn's provider is a fresh view of the resident backend, and
        # one model is resident at a time, so replies and summaries on it share one lane.
        return self._lanes.setdefault(target.label, _Lane())

    async def _work(self, lane: _Lane) -> None:
        while lane.queue:
            await lane.idle.wait()
            session_id, job = next(iter(lane.queue.items()))
            del lane.queue[session_id]
            attempt = asyncio.create_task(self._attempt(job))
            lane.running = attempt
            try:
                await asyncio.wait([attempt])
            except asyncio.CancelledError:
                attempt.cancel()
                await asyncio.gather(attempt, return_exceptions=True)
                raise
            finally:
                lane.running = None
            if attempt.cancelled():
                # A reply began on this backend: this summary waits until it is over.
                log.debug("session %s: summarizing paused for a reply", session_id)
                lane.queue.setdefault(session_id, job)

    async def _attempt(self, job: Job) -> Folded:
        try:
            folded = await self._summarize(job, force=False)
        except HearthbotError as exc:
            self._failed(job.session_id, str(exc))
            return Folded(0, "")
        except Exception as exc:
            log.exception("session %s: summarizing failed", job.session_id)
            self._failed(job.session_id, repr(exc))
            return Folded(0, "")
        self._backoff.pop(job.session_id, None)
        return folded

    def _failed(self, session_id: int, reason: str) -> None:
        backoff = self._backoff.setdefault(session_id, _Backoff())
        backoff.failures += 1
        backoff.wait_turns = min(2 ** (backoff.failures - 1) - 1, MAX_WAIT_TURNS)
        log.warning("session %s: summarizing failed (%s); the previous summary and every turn "
                    "stay, and the oldest verbatim turns are left out of requests that would "
                    "not fit; next attempt %s", session_id, reason,
                    "after the next turn" if backoff.wait_turns == 0
                    else f"after {backoff.wait_turns + 1} more turns")

    async def _summarize(self, job: Job, force: bool) -> Folded:
        lock = self._locks.setdefault(job.session_id, asyncio.Lock())
        async with lock:
            conversation = await load_conversation(self.store, job.session_id)
            window = self.window(job.target, job.output_tokens, job.tools)
            history = conversation.messages
            system = system_message(job.persona.system_prompt, conversation.summary)
            if not force:
                size = await window.count([system, *as_chat(history)])
                if size <= self.threshold(window):
                    return Folded(0, conversation.summary)
            start = (kept_from(history) if force
                     else await self._kept_start(window, system, history))
            if not history or start <= 0:
                # Everything loaded stays verbatim; older messages (beyond what is loaded)
                # are folded only if there are any.
                before = history[0].id if history else conversation.summary_through + 1
            else:
                before = history[start].id
            return await self._fold(job, window, conversation, before)

    async def _kept_start(self, window: Window, system: ChatMessage,
                          history: Sequence[StoredMessage]) -> int:
        """Where the turns kept verbatim begin: as many of the newest as fill `keep_share` of
        the budget, and never fewer than the last two exchanges."""
        chat = as_chat(history)
        base = await window.count([system])
        allowed = self.spec.keep_share * window.budget

        async def fits(kept: int) -> bool:
            return await window.count([system, *chat[len(chat) - kept:]]) - base <= allowed

        start = min(len(history) - await largest(0, len(history), fits), kept_from(history))
        while start < len(history) and history[start].role == "assistant":
            start += 1  # the kept turns open on the user's message
        return start

    async def _fold(self, job: Job, window: Window, conversation: Conversation,
                    before: int) -> Folded:
        summary, through = conversation.summary, conversation.summary_through
        limit = self.summary_limit(window)
        writing = self.window(job.target, limit)  # the summarizing request's own budget
        folded = requests = 0
        while batch := await messages_between(self.store, job.session_id, through, before,
                                              FOLD_BATCH):
            messages, used = await _request(writing, summary, batch, limit)
            requests += 1
            text = await _generate(writing, messages, limit,
                                   functools.partial(self._spent, job))
            covered = batch[used - 1].id
            if not await self._save(job.session_id, text, covered, through):
                log.info("session %s: its summary moved on meanwhile; this one is dropped",
                         job.session_id)
                break
            summary, through, folded = text, covered, folded + used
            log.info("session %s: the summary now covers %d more messages (through message "
                     "%s, %d characters)", job.session_id, used, covered, len(text))
        return Folded(folded, summary, requests)

    async def _spent(self, job: Job, end: StreamEnd) -> None:
        """A summarizing request's tokens count as the conversation's usage (its persona's
        budget pays for them), on a record of their own."""
        target = job.target
        await self.shield(record_summary(self.store, job.session_id, target.label,
                                         end.prompt_tokens, end.completion_tokens,
                                         end.cached_tokens, target.fallback_from))

    async def _save(self, session_id: int, summary: str, through: int, expected: int) -> bool:
        written: list[bool] = []

        async def write() -> None:
            written.append(await save_summary(self.store, session_id, summary, through,
                                              expected))

        await self.shield(write())
        return bool(written and written[0])


def _transcript(turns: Sequence[StoredMessage], cut: int | None) -> str:
    lines = [f"{'Assistant' if m.role == 'assistant' else 'User'}: {m.content}" for m in turns]
    if cut is not None and lines:
        lines[-1] = lines[-1][:cut] + " [...]"
    return "\n".join(lines)


def _summary_request(summary: str, turns: Sequence[StoredMessage], limit: int,
                     cut: int | None = None) -> list[ChatMessage]:
    words = max(limit // 2, 12)  # words run longer than tokens: room to finish a sentence
    body = (f"Summary so far:\n{summary or '(none yet)'}\n\nNew turns:\n"
            f"{_transcript(turns, cut)}\n\nWrite the updated summary.")
    return [ChatMessage("system", SUMMARY_PROMPT.format(words=words)),
            ChatMessage("user", body)]


async def _request(window: Window, summary: str, batch: Sequence[StoredMessage],
                   limit: int) -> tuple[list[ChatMessage], int]:
    """The summarizing request for as many of `batch` as fit, and how many that is (at least
    one: a message too long even alone is summarized from its beginning)."""
    used = await largest(0, len(batch), lambda n: window.fits(
        _summary_request(summary, batch[:n], limit)))
    if used:
        return _summary_request(summary, batch[:used], limit), used
    if not await window.fits(_summary_request(summary, batch[:1], limit, cut=0)):
        raise SummaryRejected("the summary so far leaves no room for new turns")
    keep = await largest(0, len(batch[0].content), lambda n: window.fits(
        _summary_request(summary, batch[:1], limit, cut=n)))
    return _summary_request(summary, batch[:1], limit, cut=keep), 1


async def _generate(window: Window, messages: list[ChatMessage], limit: int,
                    spent: Callable[[StreamEnd], Awaitable[None]]) -> str:
    target = window.target
    pieces: list[str] = []
    finish, reported = "stop", None
    params = GenerationParams(temperature=SUMMARY_PARAMS.temperature,
                              top_p=SUMMARY_PARAMS.top_p,
                              repeat_penalty=SUMMARY_PARAMS.repeat_penalty, max_tokens=limit,
                              think=SUMMARY_PARAMS.think)
    deltas = cast(AsyncGenerator[Delta, None],
                  target.provider.stream(target.model, messages, params))
    async with aclosing(deltas) as stream:
        async for delta in stream:
            if isinstance(delta, TextDelta):
                pieces.append(delta.text)
            elif isinstance(delta, StreamEnd):
                finish, reported = delta.finish_reason, delta.prompt_tokens
                # Spent whether or not the summary turns out usable.
                await spent(delta)
    window.learn(estimate_prompt(messages), reported)
    text = "".join(pieces).strip()
    if not text:
        raise SummaryRejected("the model wrote an empty summary")
    if finish == "length" or await window.text_tokens(text) > limit:
        raise SummaryRejected(f"the summary ran over its {limit} tokens")
    return text


@dataclass(frozen=True)
class ChatContext:
    """What `/compact` and `/context` work on: one chat's conversation with one persona.
    The model is looked up only when one of them runs."""

    keeper: ContextKeeper
    models: ModelHost
    persona: Persona
    tools: tuple[ToolSpec, ...]
    platform: str
    chat_id: str

    @property
    def target(self) -> ModelTarget:
        return self.models.target(self.persona.model, self.persona.fallback)

    async def _conversation(self) -> Conversation:
        return await open_conversation(self.keeper.store, self.platform, self.chat_id,
                                       self.persona.name)

    async def compact(self) -> str:
        conversation = await self._conversation()
        target = self.target
        job = Job(conversation.session_id, target, self.persona, self.tools)
        try:
            folded = await self.keeper.compact(job)
        except HearthbotError as exc:
            log.warning("session %s: /compact failed: %s", job.session_id, exc)
            return (f"I couldn't summarize right now ({exc.user_message.rstrip('.')}). "
                    "Nothing was lost: the earlier summary and the turns stay as they were.")
        if not folded.messages:
            return ("Nothing to compact yet: the conversation is short enough to keep whole "
                    "(the last two exchanges always stay word for word).")
        window = self.keeper.window(target, job.output_tokens, self.tools)
        tokens = await window.text_tokens(folded.summary)
        return (f"Compacted: {folded.messages} older messages folded into the summary "
                f"(now {tokens:,} tokens). The last two exchanges stay word for word.")

    async def describe(self) -> str:
        conversation = await self._conversation()
        target = self.target
        window = self.keeper.window(target, output_budget(self.persona, target), self.tools)
        prompt = await window.fit(self.persona.system_prompt, conversation.summary,
                                  conversation.messages, "", False)
        exact = window.exact
        tools = await window.tools_tokens(prompt.messages[0])
        how = ("counted with the model's own tokenizer" if exact
               else "estimated, corrected by the backend's own counts"
               if window.meter.learned else "estimated (no usable count from the backend yet)")
        share = prompt.tokens / window.size
        lines = [f"Context: {prompt.tokens:,} of {window.size:,} tokens ({share:.0%}), {how}.",
                 f"Set aside: {window.output_tokens:,} for the reply and {window.margin:,} as a "
                 f"safety margin" + (f"; tool schemas take {tools:,}." if tools else ".")]
        if conversation.summary:
            summary_tokens = await window.text_tokens(conversation.summary)
            lines.append(f"Summary: {summary_tokens:,} tokens "
                         f"({len(conversation.summary):,} characters) of earlier turns.")
        else:
            lines.append("Summary: none yet.")
        kept = f"Turns kept word for word: {prompt.kept // 2}"
        if prompt.left_out:
            kept += (f"; {prompt.left_out} older messages are neither summarized nor sent "
                     f"(summarizing will catch up)")
        lines.append(kept + ".")
        threshold = int(self.keeper.threshold(window))
        lines.append(f"Older turns are summarized past {self.keeper.spec.summarize_at:.0%} of "
                     f"the {window.budget:,}-token budget ({threshold:,} tokens); /compact does "
                     "it now.")
        return "\n".join(lines)
