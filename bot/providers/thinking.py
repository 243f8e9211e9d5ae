"""Telling a model's chain of thought from its answer, whatever form the backend sends it in.

Backends that know about thinking send it apart from the answer (Ollama's `message.thinking`,
the `reasoning_content` / `reasoning` fields of OpenAI-compatible servers); their providers
turn it into ThinkingDeltas. Others pass the model's raw text on, with the thinking wrapped in
`<think>…</think>` (DeepSeek-R1 distills, Qwen3, SmolLM3 and QwQ without a reasoning parser,
and every model run in-process). `separate_thinking` splits that text here, for every backend
alike, before anything reads the text as an answer or as a tool call written as text.

The split is incremental: a tag may arrive cut across chunks ("<thi", "nk>"), so a chunk's
tail that could still become a tag is held back until the next chunk settles it. A reply that
opens thinking and never closes it stays thinking to its end: a model cut off by its token cap
while thinking must not have its raw thoughts shown as the answer.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing

from bot.providers.base import Delta, TextDelta, ThinkingDelta

OPEN_THINK = "<think>"
CLOSE_THINK = "</think>"


class ThinkTagSplitter:
    """Feeds of raw text in, (thinking, answer) pieces out; `finish` flushes what is held."""

    def __init__(self) -> None:
        self.thinking = False
        self._held = ""
        self._after_close = False  # the blank line templates put after the thoughts is dropped

    def feed(self, text: str) -> list[TextDelta | ThinkingDelta]:
        out: list[TextDelta | ThinkingDelta] = []
        rest = self._held + text
        self._held = ""
        while rest:
            tag = CLOSE_THINK if self.thinking else OPEN_THINK
            at = rest.find(tag)
            if at >= 0:
                self._emit(out, rest[:at])
                rest = rest[at + len(tag):]
                self.thinking = not self.thinking
                self._after_close = not self.thinking
                continue
            keep = _partial_tag_length(rest, tag)
            self._emit(out, rest[:len(rest) - keep])
            self._held = rest[len(rest) - keep:]
            break
        return out

    def finish(self) -> list[TextDelta | ThinkingDelta]:
        """What is still held once the stream ends: a tag that never completed is text (or
        thinking, when inside a thought)."""
        out: list[TextDelta | ThinkingDelta] = []
        held, self._held = self._held, ""
        self._emit(out, held)
        return out

    def _emit(self, out: list[TextDelta | ThinkingDelta], text: str) -> None:
        if not text:
            return
        if self.thinking:
            out.append(ThinkingDelta(text))
            return
        if self._after_close:
            # Templates put a blank line between the thoughts and the answer; it may come
            # in a later chunk than the closing tag.
            text = text.lstrip("\n")
            if not text:
                return
            self._after_close = False
        out.append(TextDelta(text))


def _partial_tag_length(text: str, tag: str) -> int:
    """How many characters at the end of `text` could be the start of `tag`."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


async def separate_thinking(deltas: AsyncGenerator[Delta, None]
                            ) -> AsyncGenerator[Delta, None]:
    """`deltas` with `<think>…</think>` in the text turned into ThinkingDeltas; everything
    else (thinking the backend already sent apart, tool calls, the end) passes unchanged."""
    splitter = ThinkTagSplitter()
    async with aclosing(deltas) as source:
        async for delta in source:
            if isinstance(delta, TextDelta):
                for piece in splitter.feed(delta.text):
                    yield piece
                continue
            if not isinstance(delta, ThinkingDelta):
                # A tool call or the end settles any tag that was still half-written.
                for piece in splitter.finish():
                    yield piece
            yield delta
        for piece in splitter.finish():
            yield piece
