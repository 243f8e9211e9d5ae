"""Tool-call plumbing every provider shares: schemas out, call ids, argument decoding, and
recovering calls that a model wrote as plain text.

Small local models often "call" a tool by answering with the call itself as text: the whole
reply is `{"name": "file_read", "arguments": {"path": "a.txt"}}` (Llama 3.x writes
`{"name": ..., "parameters": ...}`, others `{"tool": ..., "parameters": ...}`), or one or more
`<tool_call>{...}</tool_call>` blocks (Qwen and Hermes templates). When tools were offered,
such a reply is turned into ToolCallDeltas, but only for tools that were offered; anything
else stays text.

That costs latency only for replies that open with `{` or `<tool_call>`: their text is held
back until the reply ends, because only then is it clear whether the whole reply was a call.
Every other reply streams untouched from its first visible character.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Collection, Sequence
from contextlib import aclosing

from bot.config import GenerationParams, ModelSpec
from bot.providers.base import (
    ChatMessage,
    Delta,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
    ToolSpec,
    offered_tools,
)
from bot.providers.thinking import separate_thinking

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"
_NAME_KEYS = ("name", "tool")
_ARGUMENT_KEYS = ("arguments", "parameters")
_ALLOWED_KEYS = frozenset({*_NAME_KEYS, *_ARGUMENT_KEYS, "type"})


def function_schema(tool: ToolSpec) -> dict[str, object]:
    """A tool as the OpenAI-style function schema that Ollama, OpenAI servers and chat
    templates all read."""
    return {"type": "function", "function": {"name": tool.name, "description": tool.description,
                                             "parameters": tool.parameters}}


def call_id(index: int, name: str, arguments: object) -> str:
    """A stable id for a call whose backend gave none: the same call at the same position
    always gets the same id, and different calls almost surely different ones."""
    canonical = json.dumps([name, arguments], sort_keys=True, separators=(",", ":"))
    return f"call_{index}_{hashlib.sha256(canonical.encode()).hexdigest()[:8]}"


def decode_arguments(text: str) -> tuple[dict[str, object], str | None]:
    """Arguments streamed as JSON text: (the object, None), or ({}, the text) when the text is
    not a JSON object. Empty text means a call without arguments."""
    if not text.strip():
        return {}, None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {}, text
    return (value, None) if isinstance(value, dict) else ({}, text)


def make_call(index: int, name: str, arguments: object, given_id: object = None) -> ToolCallDelta:
    """A ToolCallDelta from arguments as a backend sent them: an object, JSON text, or
    something else (kept as raw text). `given_id` is used when the backend sent one."""
    if isinstance(arguments, dict):
        decoded: dict[str, object] = {str(k): v for k, v in arguments.items()}
        raw = None
    elif isinstance(arguments, str):
        decoded, raw = decode_arguments(arguments)
    elif arguments is None:
        decoded, raw = {}, None
    else:
        decoded, raw = {}, json.dumps(arguments)
    identifier = given_id if isinstance(given_id, str) and given_id else call_id(
        index, name, raw if raw is not None else decoded)
    return ToolCallDelta(id=identifier, name=name, arguments=decoded, raw_arguments=raw)


# --- calls written as text ------------------------------------------------------------------


def text_tool_calls(text: str, offered: Collection[str]) -> list[ToolCallDelta] | None:
    """The calls a whole reply consists of, or None when it is not only calls to offered
    tools (then it is an ordinary reply and stays text)."""
    reply = text.strip()
    if reply.startswith(OPEN_TAG):
        bodies = _tagged_bodies(reply)
    elif reply.startswith("{"):
        bodies = [reply]
    else:
        return None
    if not bodies:
        return None
    calls: list[ToolCallDelta] = []
    for index, body in enumerate(bodies):
        call = _object_call(body, index, offered)
        if call is None:
            return None
        calls.append(call)
    return calls


def _tagged_bodies(reply: str) -> list[str]:
    """The insides of `<tool_call>...</tool_call>` blocks making up the whole reply; [] when
    anything else is in between. The last closing tag may be missing: a stop token often cuts
    it off."""
    bodies: list[str] = []
    rest = reply
    while rest:
        if not rest.startswith(OPEN_TAG):
            return []
        rest = rest[len(OPEN_TAG):]
        end = rest.find(CLOSE_TAG)
        if end < 0:
            bodies.append(rest)
            break
        bodies.append(rest[:end])
        rest = rest[end + len(CLOSE_TAG):].lstrip()
    return bodies


def _object_call(body: str, index: int, offered: Collection[str]) -> ToolCallDelta | None:
    try:
        value = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict) or not set(value) <= _ALLOWED_KEYS:
        return None
    if value.get("type", "function") != "function":
        return None
    names = [value[k] for k in _NAME_KEYS if k in value]
    if len(names) != 1 or not isinstance(names[0], str) or names[0] not in offered:
        return None
    given = [value[k] for k in _ARGUMENT_KEYS if k in value]
    if len(given) > 1:
        return None
    arguments = given[0] if given else {}
    if isinstance(arguments, str):  # some models encode the arguments a second time
        arguments, raw = decode_arguments(arguments)
        if raw is not None:
            return None
    if not isinstance(arguments, dict):
        return None
    return make_call(index, names[0], arguments)


class TextCallDetector:
    """Decides, as text streams in, whether a reply might be a call written as text.

    `feed` returns the text to pass on now: everything, once the reply has shown it is not a
    call; nothing while it might still be one. `finish` settles the held text at the end.
    """

    def __init__(self, offered: Collection[str]) -> None:
        self.offered = frozenset(offered)
        self._held = ""
        self._passing = not self.offered

    def feed(self, text: str) -> str:
        if self._passing:
            return text
        self._held += text
        head = self._held.lstrip()
        if not head or head.startswith(("{", OPEN_TAG)) or OPEN_TAG.startswith(head):
            return ""  # nothing visible yet, or it may still be a call
        return self.release()

    def release(self) -> str:
        """Give up on a call: pass everything held and everything after it on as text."""
        held, self._held, self._passing = self._held, "", True
        return held

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        """(text still to emit, calls found) once the reply is complete."""
        if self._passing or not self._held:
            return self.release(), []
        calls = text_tool_calls(self._held, self.offered)
        if calls is None:
            return self.release(), []
        self._held = ""
        return "", calls


async def recover_text_tool_calls(
    deltas: AsyncGenerator[Delta, None], tools: Sequence[ToolSpec]
) -> AsyncIterator[Delta]:
    """`deltas` with any call written as text turned into ToolCallDeltas (see the module
    docstring). Without offered tools the stream passes through untouched. A backend that
    already sends structured calls is believed: held text is then released as text."""
    detector = TextCallDetector([t.name for t in tools])
    # aclosing: a reader that stops early must stop the backend's stream now, not at GC.
    async with aclosing(deltas) as source:
        async for delta in source:
            if isinstance(delta, TextDelta):
                if text := detector.feed(delta.text):
                    yield TextDelta(text)
            elif isinstance(delta, ToolCallDelta):
                if text := detector.release():
                    yield TextDelta(text)
                yield delta
            elif isinstance(delta, ThinkingDelta):
                yield delta  # thoughts are never a call, and do not settle whether text is
            else:
                text, calls = detector.finish()
                if text:
                    yield TextDelta(text)
                for call in calls:
                    yield call
                yield delta


class ToolOfferingProvider(ABC):
    """The part of `ChatProvider.stream` every backend shares: offer tools only to a model that
    can call them, take `<think>` blocks out of the text, and read a reply that is a call
    written as text as that call. Backends implement `generate`, which streams what the
    backend sends for the tools it is given."""

    def stream(self, model: ModelSpec, messages: Sequence[ChatMessage],
               params: GenerationParams, tools: Sequence[ToolSpec] = ()) -> AsyncIterator[Delta]:
        offered = offered_tools(model, tools)
        # Thoughts come out first: JSON a model muses about inside <think> is not a call.
        deltas = separate_thinking(self.generate(model, messages, params, offered))
        return recover_text_tool_calls(deltas, offered) if offered else deltas

    @abstractmethod
    def generate(self, model: ModelSpec, messages: Sequence[ChatMessage],
                 params: GenerationParams,
                 tools: Sequence[ToolSpec]) -> AsyncGenerator[Delta, None]:
        """One reply from the backend; `tools` are already the ones this model may call."""
