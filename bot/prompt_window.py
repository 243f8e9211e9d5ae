"""The context guard: fit persona prompt, summary, history and the new message into the window.

Every request is measured before it is sent. The budget is the model's context window less the
reply's output budget and a safety margin; the tools' schemas are counted inside the prompt, as
the backend renders them. Counts come from the model's own tokenizer when the backend holds it
(the in-process engines); otherwise from an estimate that each backend's reported prompt counts
correct, learned per model. The newest turns stay verbatim and the oldest give way; a message
too large even on its own is cut, with a note to the model and one in the reply.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from bot.errors import ContextOverflow
from bot.model_host import ModelTarget
from bot.providers import ChatMessage, TokenCounting, ToolSpec
from bot.providers.base import ImagePart, offered_tools
from bot.store.history import StoredMessage

# Without the model's tokenizer, an estimate that real tokenizers rarely exceed: a run of ASCII
# letters costs a token per four letters (English words are mostly one or two), and every
# digit, symbol, line break and character outside ASCII costs one.
LETTERS_PER_TOKEN = 4
_PIECES = re.compile(r"[A-Za-z]+|\n+|[^\sA-Za-z]")
MESSAGE_OVERHEAD_TOKENS = 4  # role markers and separators in chat templates
REPLY_OVERHEAD_TOKENS = 4  # the assistant header the template ends the prompt with
# What one downscaled image costs a vision model: from about 256 (Gemma 3) through 576 (LLaVA)
# to about 1,300 (Qwen2.5-VL at 1024 px). Counted high, so an image never overflows the window.
IMAGE_TOKENS = 1024
TRANSCRIPT_NOTE = "[voice note, transcribed automatically; words may be misheard]"
CUT_NOTE = "\n[message shortened: it was too long for the model to read whole]"
SUMMARY_HEADING = "Summary of the earlier conversation (those turns are not shown):"
# The last exchanges always travel verbatim, however full the window (see `kept_from`).
KEPT_EXCHANGES = 2


@functools.lru_cache(maxsize=4096)
def estimate_tokens(text: str) -> int:
    """A rough count of one text's tokens, before any correction learned from the backend.
    (Cached: the guard measures the same history many times while it fits a request.)"""
    total = 0
    for piece in _PIECES.findall(text):
        total += -(-len(piece) // LETTERS_PER_TOKEN) if piece[0].isalpha() else 1
    return total


def estimate_prompt(messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()) -> int:
    """The uncorrected estimate of a whole request: messages, role markers, call traffic and
    the tools' schemas."""
    total = REPLY_OVERHEAD_TOKENS
    for message in messages:
        total += MESSAGE_OVERHEAD_TOKENS + estimate_tokens(message.content)
        total += IMAGE_TOKENS * len(message.images)
        for call in message.tool_calls:
            total += estimate_tokens(call.name + json.dumps(call.arguments))
    return total + schema_tokens(tools)


def schema_tokens(tools: Sequence[ToolSpec]) -> int:
    """What offering these tools costs in prompt tokens (their schemas ride in the prompt)."""
    return sum(estimate_tokens(json.dumps({"name": t.name, "description": t.description,
                                           "parameters": t.parameters}))
               + MESSAGE_OVERHEAD_TOKENS for t in tools)


def user_content(text: str, transcribed: bool) -> str:
    # A transcript is untrusted input that may be misheard; the model is told so.
    return f"{TRANSCRIPT_NOTE}\n{text}" if transcribed else text


def system_message(system_prompt: str, summary: str) -> ChatMessage:
    """The persona's prompt, with the running summary as one note after it."""
    if not summary:
        return ChatMessage("system", system_prompt)
    return ChatMessage("system", f"{system_prompt}\n\n{SUMMARY_HEADING}\n{summary}")


def as_chat(history: Sequence[StoredMessage]) -> list[ChatMessage]:
    return [ChatMessage("assistant", m.content) if m.role == "assistant"
            else ChatMessage("user", user_content(m.content, m.transcribed)) for m in history]


def kept_from(history: Sequence[StoredMessage]) -> int:
    """The index where the last `KEPT_EXCHANGES` exchanges begin (0 if there are fewer)."""
    users = [i for i, m in enumerate(history) if m.role == "user"]
    return users[-KEPT_EXCHANGES] if len(users) >= KEPT_EXCHANGES else 0


class TokenMeter:
    """What one model's backend has taught about its tokenizer: the ratio of the prompt counts
    it reported to the estimates of the same requests.

    The largest of the recent ratios is used, so one short count never makes the guard less
    careful. A count under half the estimate is not believed: it is what a backend reports when
    it counts only the prompt tokens it did not have cached (some Ollama versions do).
    """

    SAMPLES = 32
    LOWEST = 0.5

    def __init__(self) -> None:
        self._ratios: deque[float] = deque(maxlen=self.SAMPLES)

    @property
    def ratio(self) -> float:
        return max(self._ratios, default=1.0)

    @property
    def learned(self) -> bool:
        return bool(self._ratios)

    def learn(self, estimated: int, reported: int | None) -> None:
        if reported is None or reported <= 0 or estimated <= 0:
            return
        ratio = reported / estimated
        if ratio >= self.LOWEST:
            self._ratios.append(min(ratio, 4.0))

    def correct(self, estimated: int) -> int:
        return math.ceil(estimated * self.ratio)


@dataclass(frozen=True)
class Prompt:
    """One request, fitted and measured."""

    messages: list[ChatMessage]
    tokens: int  # as counted (with the model's tokenizer when `exact`), tools included
    estimate: int  # the uncorrected estimate of the same request, to learn from the backend
    exact: bool
    kept: int  # history messages sent verbatim
    left_out: int  # history messages not covered by the summary that did not fit
    # (characters read, characters sent) when the new message was cut to fit.
    cut: tuple[int, int] | None = None
    summary_dropped: bool = False


class Window:
    """The budget of one model for one kind of request, and the counting that fills it."""

    def __init__(self, target: ModelTarget, meter: TokenMeter, output_tokens: int,
                 tools: Sequence[ToolSpec] = (), margin_share: float = 0.05) -> None:
        self.target = target
        self.meter = meter
        self.tools = offered_tools(target.model, tools)
        self.output_tokens = output_tokens
        self.size = target.model.context_window
        self.margin = math.ceil(self.size * margin_share)
        self.budget = self.size - output_tokens - self.margin
        self.exact = False

    async def count(self, messages: Sequence[ChatMessage],
                    tools: Sequence[ToolSpec] | None = None) -> int:
        """The request's prompt tokens, tools included: exact when the backend can say."""
        tools = self.tools if tools is None else tools
        provider = self.target.provider
        if isinstance(provider, TokenCounting):
            counted = await provider.count_tokens(self.target.model, messages, tools)
            if counted is not None:
                self.exact = True
                return counted
        self.exact = False
        return self.meter.correct(estimate_prompt(messages, tools))

    async def fits(self, messages: Sequence[ChatMessage]) -> bool:
        return await self.count(messages) <= self.budget

    async def tools_tokens(self, system: ChatMessage) -> int:
        if not self.tools:
            return 0
        return await self.count([system]) - await self.count([system], ())

    async def fit(self, system_prompt: str, summary: str, history: Sequence[StoredMessage],
                  text: str, transcribed: bool, images: tuple[ImagePart, ...] = ()) -> Prompt:
        """The prompt for one turn: the system note (persona prompt and summary), as many of
        the newest history messages as fit, and the new message (cut if it cannot fit) with
        the images sent with it, which are measured with it."""
        system = system_message(system_prompt, summary)

        def own(content: str) -> ChatMessage:
            return ChatMessage("user", content, images=images)

        content = user_content(text, transcribed)
        cut: tuple[int, int] | None = None
        summary_dropped = False
        if not await self.fits([system, own(content)]):
            if summary and not await self.fits([system, own(CUT_NOTE)]):
                # Only when nothing of the message would fit beside it: better the message
                # than an old summary.
                system, summary_dropped = system_message(system_prompt, ""), True
            if images and not await self.fits([system, own(CUT_NOTE)]):
                raise ContextOverflow(
                    f"{self.target.label}: {len(images)} image(s) do not fit the "
                    f"{self.size}-token window beside the system prompt",
                    user_message="That image does not fit in the model's context window; the "
                                 "owner can lower images.max_side or pick a model with a "
                                 "larger window.")
            if not await self.fits([system, own(CUT_NOTE)]):
                raise ContextOverflow(
                    f"{self.target.label}: the system prompt and tool schemas alone fill the "
                    f"{self.size}-token window",
                    user_message="My instructions alone fill the model's context window; the "
                                 "owner needs to shorten the system prompt or pick a model "
                                 "with a larger window.")
            keep = await largest(0, len(content), lambda n: self.fits(
                [system, own(content[:n] + CUT_NOTE)]))
            cut = (keep, len(content))
            content = content[:keep] + CUT_NOTE
        new = own(content)
        earlier = as_chat(history)

        def prompt(kept: int) -> list[ChatMessage]:
            return [system, *earlier[len(earlier) - kept:], new]

        kept = await largest(0, len(earlier), lambda k: self.fits(prompt(k)))
        # A window that opens on an assistant turn confuses chat templates; start on a user turn.
        while kept and earlier[len(earlier) - kept].role == "assistant":
            kept -= 1
        messages = prompt(kept)
        return Prompt(messages, await self.count(messages),
                      estimate_prompt(messages, self.tools), self.exact, kept,
                      len(earlier) - kept, cut, summary_dropped)

    async def refit(self, messages: list[ChatMessage], protected: int) -> list[ChatMessage]:
        """A request grown by tool traffic, fitted again: the history before the message at
        `protected` (this turn's own) gives way first, then the longest tool results are cut."""
        messages = list(messages)
        while not await self.fits(messages):
            if protected > 1:
                del messages[1]
                protected -= 1
                while protected > 1 and messages[1].role == "assistant":
                    del messages[1]
                    protected -= 1
                continue
            results = [i for i, m in enumerate(messages)
                       if m.role == "tool" and len(m.content) > len(CUT_NOTE)]
            if not results:
                raise ContextOverflow(f"{self.target.label}: this turn's own messages no "
                                      f"longer fit the {self.size}-token window")
            longest = max(results, key=lambda i: len(messages[i].content))
            keep = await largest(0, len(messages[longest].content) - 1,
                                  self._cut_fits(messages, longest))
            messages = _cut_result(messages, longest, keep)
        return messages

    def _cut_fits(self, messages: list[ChatMessage],
                  at: int) -> Callable[[int], Awaitable[bool]]:
        return lambda keep: self.fits(_cut_result(messages, at, keep))

    def learn(self, estimate: int, reported: int | None) -> None:
        """Correct the estimate with what the backend counted for the request whose
        uncorrected estimate was `estimate`."""
        if not self.exact:
            self.meter.learn(estimate, reported)

    async def text_tokens(self, text: str) -> int:
        """What one text costs inside a message (role markers aside)."""
        probe = ChatMessage("system", "-")
        return max(await self.count([probe, ChatMessage("assistant", text)], ())
                   - await self.count([probe], ()) - MESSAGE_OVERHEAD_TOKENS, 0)


def _cut_result(messages: list[ChatMessage], at: int, keep: int) -> list[ChatMessage]:
    """The messages with the tool result at `at` shortened to `keep` characters and the note."""
    whole = messages[at]
    shortened = ChatMessage("tool", whole.content[:keep] + CUT_NOTE,
                            tool_call_id=whole.tool_call_id, tool_name=whole.tool_name)
    return [*messages[:at], shortened, *messages[at + 1:]]


async def largest(low: int, high: int, fits: Callable[[int], Awaitable[bool]]) -> int:
    """The largest n in [low, high] for which `fits(n)` holds, given that it holds for `low`
    and that it holds for every smaller n where it holds for a larger one."""
    while low < high:
        middle = (low + high + 1) // 2
        if await fits(middle):
            low = middle
        else:
            high = middle - 1
    return low
