"""Platform-neutral delivery: fence-safe splitting, pacing, streaming with retries, lanes."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator

import pytest

from adapters.chunking import split_message
from adapters.lanes import ChatLanes, Job
from adapters.streaming import Pacer, stream_by_editing, stream_by_preview
from bot.errors import PlatformUnavailable, RateLimited
from bot.events import ReplyFailed, ReplyPart, ReplyText
from tests.support.helpers import FENCE, code_reply


def test_short_text_is_one_piece() -> None:
    assert split_message("hello", 10) == ["hello"]


@pytest.mark.parametrize("limit", [2000, 4096])
def test_pieces_fit_and_fences_stay_balanced(limit: int) -> None:
    text = code_reply(400)
    pieces = split_message(text, limit)
    assert len(pieces) > 1
    assert all(len(p) <= limit for p in pieces)
    assert all(p.count(FENCE) % 2 == 0 for p in pieces)
    assert all(p.startswith(f"{FENCE}python\n") for p in pieces[1:-1])
    # Nothing is lost: removing the added fences gives the original lines back.
    original = [line for line in text.splitlines() if line.strip()]
    rejoined = [line for p in pieces for line in p.splitlines() if line.strip()]
    assert [line for line in rejoined if not line.startswith(FENCE)] == [
        line for line in original if not line.startswith(FENCE)]


def test_prose_splits_at_paragraphs() -> None:
    text = "\n\n".join(f"Paragraph {n} " + "word " * 60 for n in range(20))
    pieces = split_message(text, 1000)
    assert all(p.startswith("Paragraph") for p in pieces)


async def parts(*texts: str, fail: str | None = None, gap: float = 0.0) -> AsyncIterator[ReplyPart]:
    for text in texts:
        await asyncio.sleep(gap)
        yield ReplyText(text)
    if fail:
        yield ReplyFailed(fail)


class FakeEditable:
    limit = 50

    def __init__(self, reformats_final: bool = False) -> None:
        # Whether the final form is rendered differently (as Telegram's HTML is).
        self.reformats_final = reformats_final
        self.calls: list[tuple[str, object, str, bool, float]] = []
        self.messages: dict[int, str] = {}
        self.refuse: list[Exception] = []

    def final_differs(self, shown: str, final: str) -> bool:
        return self.reformats_final or shown != final

    def _maybe_refuse(self) -> None:
        if self.refuse:
            raise self.refuse.pop(0)

    async def send(self, text: str, final: bool) -> int:
        self._maybe_refuse()
        handle = len(self.messages) + 1
        self.messages[handle] = text
        self.calls.append(("send", handle, text, final, time.monotonic()))
        return handle

    async def edit(self, handle: int, text: str, final: bool) -> None:
        self._maybe_refuse()
        self.messages[handle] = text
        self.calls.append(("edit", handle, text, final, time.monotonic()))

    async def preview(self, text: str) -> None:
        self._maybe_refuse()
        self.calls.append(("preview", None, text, False, time.monotonic()))

    async def typing(self) -> None:
        self.calls.append(("typing", None, "", False, time.monotonic()))


async def test_editing_stream_ends_with_the_whole_reply_and_respects_the_floor() -> None:
    chat = FakeEditable()
    chat.reformats_final = True
    words = [f"w{n} " for n in range(30)]
    await stream_by_editing(parts(*words, gap=0.01), chat, Pacer(0.05))
    shown = " ".join(chat.messages[h] for h in sorted(chat.messages))
    assert shown.split() == "".join(words).split()
    stamps = [c[4] for c in chat.calls if c[0] in ("send", "edit")]
    assert all(b - a >= 0.045 for a, b in itertools.pairwise(stamps))
    assert all(c[3] for c in chat.calls[-len(chat.messages):])  # the last calls are final


async def test_unchanged_pieces_get_no_final_edit_without_reformatting() -> None:
    chat = FakeEditable()
    await stream_by_editing(parts("all ", "at ", "once"), chat, Pacer(0.0))
    assert [(c[0], c[2]) for c in chat.calls if c[0] != "typing"] == [
        ("send", "all "), ("edit", "all at "), ("edit", "all at once")]
    chat.reformats_final = True
    chat.calls.clear()
    await stream_by_editing(parts("all ", "at ", "once"), chat, Pacer(0.0))
    assert [(c[0], c[2], c[3]) for c in chat.calls if c[0] != "typing"][-1] == (
        "edit", "all at once", True)


async def test_rate_limit_mid_stream_waits_and_still_completes() -> None:
    chat = FakeEditable()
    chat.refuse = [RateLimited(0.3)]
    refused_at = time.monotonic()  # the first call is refused at once
    await stream_by_editing(parts("one ", "two ", "three", gap=0.05), chat, Pacer(0.01))
    assert chat.messages == {1: "one two three"}
    first_success = min(c[4] for c in chat.calls if c[0] in ("send", "edit"))
    assert first_success - refused_at >= 0.3, "nothing may reach the chat while it is held"


async def test_network_errors_on_the_final_send_are_retried() -> None:
    chat = FakeEditable()
    chat.refuse = [PlatformUnavailable("down"), PlatformUnavailable("down")]
    await stream_by_editing(parts("hi"), chat, Pacer(0.0))
    assert chat.messages == {1: "hi"}


async def test_failure_sentence_follows_the_partial_text() -> None:
    chat = FakeEditable()
    await stream_by_editing(parts("partial", fail="It broke."), chat, Pacer(0.0))
    assert chat.messages == {1: "partial\n\nIt broke."}


async def test_preview_stream_sends_full_pieces_as_messages() -> None:
    chat = FakeEditable()
    words = [f"word{n} " for n in range(25)]
    sent = await stream_by_preview(parts(*words), chat, Pacer(0.0))
    texts = [chat.messages[h] for h in sent]
    assert len(texts) > 2 and all(len(t) <= chat.limit for t in texts)
    assert " ".join(texts).split() == "".join(words).split()
    assert any(c[0] == "preview" for c in chat.calls)


async def test_lanes_keep_order_per_chat_and_run_chats_together() -> None:
    lanes = ChatLanes()
    log: list[str] = []

    def job(name: str, delay: float) -> Job:
        async def run() -> None:
            log.append(f"start {name}")
            await asyncio.sleep(delay)
            log.append(f"end {name}")
        return run

    lanes.submit("a", job("a1", 0.05))
    lanes.submit("a", job("a2", 0.0))
    lanes.submit("b", job("b1", 0.0))
    await lanes.idle()
    assert log.index("end a1") < log.index("start a2")
    assert log.index("end b1") < log.index("end a1")
