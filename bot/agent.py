"""The agent loop: model → tool calls → results → model, until the model answers.

Bounded in steps and in wall time. Every call goes through the tool gate with the context the
caller built from the router's decision; the loop itself decides nothing about permissions.
What the person sees comes out as text deltas and short status lines ("reading notes/todo.md…"),
which the adapter replaces with the answer.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from bot.model_host import ModelTarget
from bot.providers import (
    ChatMessage,
    StreamEnd,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
    ToolSpec,
)
from bot.providers.base import LENGTH
from bot.tools import ToolContext, ToolGate, ToolResult
from persona import Persona

# Fits a request grown by tool traffic back into the window; the int is the index of this
# turn's own user message (what comes before it may give way).
Refit = Callable[[list[ChatMessage], int], Awaitable[list[ChatMessage]]]

MAX_STEPS = 8
BUDGET_SECONDS = 180.0
OUT_OF_STEPS = "I stopped after {steps} tool steps without reaching an answer."
OUT_OF_TIME = "I ran out of time for tools ({seconds:.0f} s) before reaching an answer."


@dataclass(frozen=True)
class ToolStatus:
    """A line that says what a tool is doing while it runs."""

    text: str


@dataclass(frozen=True)
class CutShort:
    """The answer stopped at the model's token cap, not where the model meant to end it."""


@dataclass
class AgentRun:
    """What one loop produced besides the reply: the calls made and the tokens spent."""

    calls: list[ToolResult] = field(default_factory=list)
    steps: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Of the prompt tokens, those served from the backend's cache; None until one says.
    cached_tokens: int | None = None
    counted: bool = False  # whether the backend reported tokens at all
    finish_reason: str | None = None
    # The prompt of the first request alone, as the backend counted it: the context guard
    # measured exactly that request, so the two together calibrate its estimate.
    first_prompt_tokens: int | None = None

    def add(self, end: StreamEnd) -> None:
        self.finish_reason = end.finish_reason
        if self.steps == 1 and self.first_prompt_tokens is None:
            self.first_prompt_tokens = end.prompt_tokens
        if end.prompt_tokens is not None or end.completion_tokens is not None:
            self.counted = True
            self.prompt_tokens += end.prompt_tokens or 0
            self.completion_tokens += end.completion_tokens or 0
        if end.cached_tokens is not None:
            self.cached_tokens = (self.cached_tokens or 0) + end.cached_tokens


class AgentLoop:
    def __init__(self, target: ModelTarget, persona: Persona, gate: ToolGate | None,
                 context: ToolContext | None, *, max_steps: int = MAX_STEPS,
                 budget_seconds: float = BUDGET_SECONDS) -> None:
        self.target = target
        self.persona = persona
        self.gate = gate if context is not None else None
        self.context = context
        self.max_steps = max_steps
        self.budget_seconds = budget_seconds
        self.run = AgentRun()
        self.refit: Refit | None = None

    def tools(self) -> list[ToolSpec]:
        """The schemas offered to the model: the persona's allowed tools, nothing else."""
        return self.gate.specs(self.persona) if self.gate is not None else []

    async def reply(self, messages: Sequence[ChatMessage]
                    ) -> AsyncGenerator[TextDelta | ThinkingDelta | ToolStatus | CutShort, None]:
        """Stream the answer to `messages`, running the tools the model asks for between.

        Thoughts pass through as ThinkingDeltas for the record; they never join the history
        sent back to the model. CutShort comes last when the final answer hit the token cap
        (a tool step cut there is not the answer: its calls go to the gate, which refuses
        malformed ones)."""
        history = list(messages)
        own = len(history) - 1  # this turn's message; tool traffic is appended after it
        tools = self.tools()
        started = time.monotonic()
        while True:
            self.run.steps += 1
            if self.run.steps > 1 and self.refit is not None:
                fitted = await self.refit(history, own)
                own -= len(history) - len(fitted)
                history = fitted
            said: list[str] = []
            calls: list[ToolCallDelta] = []
            async for delta in self.target.provider.stream(self.target.model, history,
                                                           self.persona.params, tools):
                if isinstance(delta, TextDelta):
                    said.append(delta.text)
                    yield delta
                elif isinstance(delta, ThinkingDelta):
                    yield delta
                elif isinstance(delta, ToolCallDelta):
                    calls.append(delta)
                else:
                    self.run.add(delta)
            if not calls or self.gate is None or self.context is None:
                if self.run.finish_reason == LENGTH:
                    yield CutShort()
                return
            if self.run.steps >= self.max_steps:
                yield TextDelta(_aside(OUT_OF_STEPS.format(steps=self.run.steps)))
                return
            history.append(ChatMessage.tool_request(calls, "".join(said)))
            for call in calls:
                if time.monotonic() - started > self.budget_seconds:
                    yield TextDelta(_aside(OUT_OF_TIME.format(seconds=self.budget_seconds)))
                    return
                yield ToolStatus(describe(call))
                # Arguments that were not valid JSON reach the gate as the raw text: it refuses
                # them (and audits the attempt) instead of running the tool on empty ones.
                arguments = call.raw_arguments if call.malformed else call.arguments
                result = await self.gate.execute(call.name, arguments, self.context)
                self.run.calls.append(result)
                history.append(ChatMessage.tool_result(call, result.content))


def describe(call: ToolCallDelta) -> str:
    """A short line for the chat while the call runs: what is read, searched or run."""
    argument = next((str(call.arguments[key]) for key in ("path", "query", "url", "command")
                     if isinstance(call.arguments.get(key), str)), "")
    if len(argument) > 60:
        argument = argument[:57] + "…"
    if call.name == "file_read" and argument:
        return f"reading {argument}…"
    if call.name == "knowledge_lookup" and argument:
        return f"searching notes for “{argument}”…"
    if call.name == "external_fetch" and argument:
        return f"fetching {argument}…"
    name = call.name if len(call.name) <= 40 else call.name[:39] + "…"
    return f"running {name}…"


def _aside(text: str) -> str:
    return f"\n\n({text})"
