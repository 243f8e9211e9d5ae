"""(3) Throughput: messages per second the service answers from many chats at once, with every
message stored in SQLite as in production and pacing off, and how late the event loop runs
meanwhile.

Each of CHATS direct chats sends PER_CHAT messages, all queued on the fake Bot API at once; the
instant fake Ollama answers each. Throughput is the messages over the time from the first
being queued to the last final message reaching the fake. A probe task sleeps 5 ms at a time
and records how much later than asked it wakes: that is what every other coroutine (a poll,
another chat's reply) would wait too. The fakes run on the same loop, so their work is in
the figure as well; they are small next to the gateway's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence

from tests.bench.common import Result, progress, spread, telegram_rig, wait_for
from tests.fakes.telegram import Call
from tests.support.helpers import db_rows

FIRST_CHAT = 7_000_000
PROBE = 0.005
ANSWERED = "select count(*) from inbox where state = 'answered'"


async def _probe(lags: list[float]) -> None:
    while True:
        asked = time.perf_counter()
        await asyncio.sleep(PROBE)
        lags.append(time.perf_counter() - asked - PROBE)


def _finals(calls: Sequence[Call], seen: int) -> int:
    return sum(1 for c in calls[seen:] if c.method == "sendMessage" and c.status == 200)


async def run(quick: bool) -> Result:
    chats, per_chat = (10, 3) if quick else (50, 10)
    total = chats * per_chat
    async with telegram_rig() as rig:
        tg = rig.tg
        # One message first, so connections and caches are warm before the clock starts.
        warm = tg.push_text(chat_id=FIRST_CHAT - 1, from_id=FIRST_CHAT - 1, text="hi")
        await rig.answered(warm)
        idle: list[float] = []
        probe = asyncio.create_task(_probe(idle))
        await wait_for(lambda: len(idle) >= 50, "an idle baseline of the loop")
        probe.cancel()
        lags: list[float] = []
        probe = asyncio.create_task(_probe(lags))
        seen = len(tg.calls)
        started = time.monotonic()
        for round_ in range(per_chat):
            for n in range(chats):
                tg.push_text(chat_id=FIRST_CHAT + n, from_id=FIRST_CHAT + n,
                             text=f"message {round_} from chat {n}")
        progress(f"throughput: {total} messages queued from {chats} chats")
        await wait_for(lambda: _finals(tg.calls, seen) >= total, f"{total} replies",
                       within=600)
        last = max(c.at for c in tg.calls[seen:] if c.method == "sendMessage")
        probe.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await probe
        elapsed = last - started

        def recorded() -> int:
            (count,) = db_rows(rig.service, ANSWERED)[0]
            assert isinstance(count, int)
            return count

        # Each turn is recorded just after its final message: the clock has stopped by now.
        await wait_for(lambda: recorded() >= total + 1, "every turn recorded")
        answered = db_rows(rig.service, ANSWERED)
        turns = db_rows(rig.service, "select count(*) from turns")
    figures = {"chats": chats, "per_chat": per_chat, "messages": total,
               "seconds": elapsed, "messages_per_second": total / elapsed,
               "answered_in_store": answered[0][0], "turns_in_store": turns[0][0],
               "loop_lag_ms": spread(lags, 1000), "idle_loop_lag_ms": spread(idle, 1000),
               "probe_interval_ms": PROBE * 1000}
    result = Result(
        "throughput",
        f"(3) throughput: {total} messages from {chats} DMs queued at once, instant model, "
        "SQLite on, pacing off",
        ("measure", "value", "p50 ms", "p99 ms", "max ms", "n"), figures=figures)
    result.rows.append(("messages/s", total / elapsed, None, None, None, total))
    result.rows.append(("seconds for all", elapsed, None, None, None, total))
    for label, key in (("event-loop lag under load", "loop_lag_ms"),
                       ("event-loop lag idle", "idle_loop_lag_ms")):
        s = figures[key]
        assert isinstance(s, dict)
        result.rows.append((label, None, s["p50"], s["p99"], s["max"], s["n"]))
    result.notes.append(f"the store holds {answered[0][0]} answered messages and "
                        f"{turns[0][0]} turns (the warm-up included); lag: how late a "
                        f"{PROBE * 1000:g} ms sleep wakes")
    return result
