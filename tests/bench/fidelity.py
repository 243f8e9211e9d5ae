"""(2) Streaming fidelity: how fast text grows in front of the user, as a share of how fast the
backend streams it.

The fake Ollama streams one word per token at a steady rate; the fake Bot API records every
draft, message and edit. The user's rate is the words gained between the first text shown and
the complete text, over the time between them; the backend's is its tokens over the time from
its first byte to its last. Pacing is the default a user has (drafts in a DM, edits in a
group, each at its configured interval), because that is what a user sees. Also: how long the
complete text takes to appear after the backend's last byte, and how many updates it took.
"""

from __future__ import annotations

import statistics

from tests.bench.common import VISIBLE, Result, TelegramRig, progress, telegram_rig, wait_for
from tests.fakes.llm_backends import ScriptedReply

RATES = (10, 30, 100, 300)  # tokens per second the backend streams
DM, GROUP = 6_000_001, -100_600_001
# Six characters a word: 600 words still fit one Telegram message, so one message shows it all.
MOST_WORDS = 600
BOT = "@hearth_test_bot"


def _words(count: int) -> tuple[str, ...]:
    return tuple(f"w{n:04d} " for n in range(count))


def _shown(text: str) -> int:
    return sum(1 for word in text.split() if word.startswith("w") and len(word) == 5)


async def _one(rig: TelegramRig, rate: int, tokens: int, group: bool,
               n: int) -> dict[str, float]:
    """Run `n` in a chat of its own: no history grows, and no summary is written."""
    tg, llm = rig.tg, rig.llm
    chat = GROUP - n if group else DM + n
    llm.script(ScriptedReply(chunks=_words(tokens), token_delay=1 / rate))
    seen, asked = len(tg.calls), len(llm.requests_to("/api/chat"))
    update = (tg.push_text(chat_id=chat, from_id=DM, chat_type="group", chat_title="Bench",
                           text=f"{BOT} count") if group
              else tg.push_text(chat_id=chat, from_id=chat, text="count"))

    def complete() -> list[tuple[float, int]]:
        shown = [(c.at, _shown(str(c.params["text"]))) for c in tg.calls[seen:]
                 if c.status == 200 and c.method in VISIBLE and c.params.get("chat_id") == chat
                 and c.params.get("text")]
        return shown if shown and shown[-1][1] == tokens else []

    await wait_for(complete, f"{tokens} words shown")
    await rig.answered(update)
    shown = complete()
    (request,) = llm.requests_to("/api/chat")[asked:]
    assert request.first_byte_at is not None and request.done_at is not None
    backend = (tokens - 1) / (request.done_at - request.first_byte_at)
    (first_at, first_count), (last_at, _) = shown[0], shown[-1]
    user = (tokens - first_count) / (last_at - first_at) if last_at > first_at else float("nan")
    return {"backend_tps": backend, "user_tps": user, "ratio": user / backend,
            "complete_after_last_byte_ms": (last_at - request.done_at) * 1000,
            "updates": len(shown)}


async def run(quick: bool) -> Result:
    seconds, runs = (2.0, 1) if quick else (6.0, 3)
    figures: dict[str, dict[str, float]] = {}
    result = Result(
        "fidelity",
        "(2) streaming fidelity: words/s the user sees at the fake Bot API vs tokens/s the "
        "backend streams (default pacing)",
        ("chat", "backend tok/s", "user tok/s", "ratio", "complete after last byte ms",
         "updates", "runs"))
    chats = 0
    async with telegram_rig(draft_interval=None, edit_interval=None) as rig:
        intervals = rig.service.config.channels.telegram
        assert intervals is not None
        for group in (False, True):
            kind = "group" if group else "dm"
            for rate in RATES:
                progress(f"fidelity: {kind} at {rate} tok/s")
                tokens = min(MOST_WORDS, max(10, int(rate * seconds)))
                samples = []
                for _ in range(runs):
                    samples.append(await _one(rig, rate, tokens, group, chats))
                    chats += 1
                median = {key: statistics.median(s[key] for s in samples) for key in samples[0]}
                figures[f"{kind}_{rate}"] = {**median, "runs": runs, "tokens": tokens}
                result.rows.append((f"{kind} @ {rate}", median["backend_tps"],
                                    median["user_tps"], median["ratio"],
                                    median["complete_after_last_byte_ms"],
                                    int(median["updates"]), runs))
    result.figures = {"rates": figures, "draft_interval_s": intervals.draft_interval,
                      "edit_interval_s": intervals.edit_interval}
    result.notes.append(f"pacing: drafts every {intervals.draft_interval:g} s in a DM, edits "
                        f"every {intervals.edit_interval:g} s in a group; medians of {runs} "
                        f"run(s), each a new chat, of about {seconds:g} s (at most "
                        f"{MOST_WORDS} words)")
    return result
