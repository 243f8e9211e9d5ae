"""(1) The gateway's own latency per message, through the real Telegram client.

An update is put on the fake Bot API's queue (the adapter is parked in its long poll, as in
production); the clock runs until the fake receives the first call that shows text (a draft in
a DM) and the final message. The model is an instant fake Ollama, and the time it spent on the
request (request received → first byte, and → last byte) is subtracted, so what is left is
hearthbot's: poll wake-up, parsing, the inbox write, routing, history, the model request, the
draft, the final send. Every run is a new chat, so no pacing from an earlier reply and no
history weigh on it. Drafts are sent unpaced (draft_interval 0): pacing is a choice, the
first visible text is what this measures.

Beside it: the same request sent by a bare httpx client straight to the same fake, the floor a
gateway could reach; and one `hearthbot chat --once` process against an instant backend.
"""

from __future__ import annotations

import json
import sys
import time
from functools import partial
from pathlib import Path

import httpx

from tests.bench.bench_core import once_wall
from tests.bench.common import (
    VISIBLE,
    Result,
    first_text_call,
    progress,
    spread,
    telegram_rig,
    wait_for,
)
from tests.fakes.llm_backends import FakeOllama
from tests.fakes.telegram import Call

FIRST_CHAT = 5_000_000
WARM_UP = 5


async def _raw_httpx(base_url: str, body: dict[str, object], runs: int) -> list[float]:
    """Seconds from sending the request to the first content line, over one kept-alive
    connection, as the gateway's provider keeps one."""
    seconds = []
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        for run in range(runs + WARM_UP):
            started = time.perf_counter()
            async with client.stream("POST", "/api/chat", json=body) as response:
                first: float | None = None
                async for line in response.aiter_lines():
                    if first is None and json.loads(line).get("message", {}).get("content"):
                        first = time.perf_counter()
            assert first is not None, "the fake sent no text"
            if run >= WARM_UP:
                seconds.append(first - started)
    return seconds


async def run(quick: bool) -> Result:
    runs = 40 if quick else 300
    first_visible: list[float] = []
    final: list[float] = []
    backend_first: list[float] = []
    whole_first: list[float] = []  # backend time included, to compare with the bare request
    async with telegram_rig() as rig:
        tg, llm = rig.tg, rig.llm
        for n in range(WARM_UP + runs):
            chat = FIRST_CHAT + n
            seen, asked = len(tg.calls), len(llm.requests_to("/api/chat"))
            pushed = time.monotonic()
            update = tg.push_text(chat_id=chat, from_id=chat, text="hello")

            def finished(seen: int = seen, chat: int = chat) -> Call | None:
                return first_text_call(tg, seen, ("sendMessage",), chat)

            # Watch the fake's record, not the database: a poll of the store would compete with
            # the turn for the event loop and the SQLite file.
            await wait_for(finished, "the final message")
            await rig.answered(update)  # the turn is recorded before the next one starts
            shown = first_text_call(tg, seen, VISIBLE, chat)
            done = first_text_call(tg, seen, ("sendMessage",), chat)
            assert shown is not None and done is not None
            (request,) = llm.requests_to("/api/chat")[asked:]
            assert request.first_byte_at is not None and request.done_at is not None
            if n >= WARM_UP:  # the first turns pay for connections and caches
                to_first = request.first_byte_at - request.at
                backend_first.append(to_first)
                first_visible.append(shown.at - pushed - to_first)
                whole_first.append(shown.at - pushed)
                final.append(done.at - pushed - (request.done_at - request.at))
            if n % 50 == 0:
                progress(f"overhead: {n}/{WARM_UP + runs}")
        body = llm.chat_bodies()[-1]
        base_url = llm.base_url
        raw = await _raw_httpx(base_url, body, runs)
    async with FakeOllama() as fake:
        once = await once_wall(fake, 3 if quick else 10)
    spreads = {
        "first_visible_ms": spread(first_visible, 1000),
        "final_text_ms": spread(final, 1000),
        "raw_httpx_first_token_ms": spread(raw, 1000),
        "backend_first_byte_ms": spread(backend_first, 1000),
        "chat_once_wall_s": spread(once),
    }
    ratio = _ratio(whole_first, raw)
    figures = {**spreads, "ratio_first_visible_to_raw_p50": ratio, "draft_interval_s": 0.0}
    result = Result(
        "overhead",
        "(1) gateway overhead per message: Telegram update queued -> text at the fake Bot API, "
        "instant model, backend time subtracted",
        ("measure", "p50 ms", "p90 ms", "p99 ms", "max ms", "n"),
        figures=figures)
    for label, key in (("first visible text", "first_visible_ms"),
                       ("final text", "final_text_ms"),
                       ("raw httpx -> first token", "raw_httpx_first_token_ms"),
                       ("backend first byte (subtracted)", "backend_first_byte_ms")):
        s = spreads[key]
        result.rows.append((label, s["p50"], s["p90"], s["p99"], s["max"], s["n"]))
    s = spreads["chat_once_wall_s"]
    result.rows.append(("`chat --once` process (ms)", s["p50"] * 1000, s["p90"] * 1000,
                        s["p99"] * 1000, s["max"] * 1000, s["n"]))
    result.notes.append(f"first visible text p50 is {ratio:.1f}"
                        "x a bare httpx request's time to first token (both with the "
                        "backend's time)")
    result.notes.append("drafts unpaced (draft_interval 0); each run a new DM; one process "
                        "holds the fakes and the gateway")
    result.chart = partial(chart, spreads)
    return result


def _ratio(gateway: list[float], raw: list[float]) -> float:
    from statistics import median

    return median(gateway) / median(raw)


def chart(figures: dict[str, dict[str, float | int]], folder: Path) -> Path:
    """Percentiles of the three latencies, side by side, as a small PNG in `folder`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = (("first visible text", "first_visible_ms"), ("final text", "final_text_ms"),
              ("raw httpx first token", "raw_httpx_first_token_ms"))
    marks = ("p50", "p90", "p99")
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
    width = 0.26
    for i, (label, key) in enumerate(series):
        values = [figures[key][m] for m in marks]
        bars = ax.bar([x + (i - 1) * width for x in range(len(marks))], values, width,
                      label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(range(len(marks)), marks)
    ax.set_ylabel("ms")
    n = figures["first_visible_ms"]["n"]
    ax.set_title(f"Telegram message → text, instant model (n={n})", fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "latency.png"
    fig.savefig(path)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit("run it through the suite: python -m tests.bench --only overhead")
