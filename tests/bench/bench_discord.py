"""First-visible-text latency through the Discord adapter, with an instant model.

    python -m tests.bench.bench_discord [RUNS]

The real discord.py client, the real gateway and store, the fake Discord and an instant fake
Ollama, all on 127.0.0.1 in one process. Each run: a new user DMs the bot (a fresh chat, so no
pacing from the previous reply and no history); the time is taken from the moment the fake
dispatches MESSAGE_CREATE to the moment the first POST /channels/{id}/messages reaches it.
The split shows where that time goes.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from adapters.discord import DiscordAdapter
from bot.config import DiscordChannel, parse_config
from bot.events import InboundEvent, MessageStatus
from bot.service import Service, open_service
from bot.store import inbox
from tests.fakes.discord import FakeDiscord
from tests.fakes.llm_backends import FakeOllama

WARM_UP = 3
FIRST_USER = 400000000000000001


@dataclass(frozen=True)
class Run:
    dispatched: float  # the fake puts MESSAGE_CREATE on the socket
    received: float  # the adapter hands the parsed event to the inbox
    stored: float  # the inbox write is done
    model_asked: float  # the fake model receives /api/chat
    shown: float  # the fake receives the first message create

    @property
    def total(self) -> float:
        return self.shown - self.dispatched


SEGMENTS: dict[str, Callable[[Run], float]] = {
    "gateway → parsed event": lambda r: r.received - r.dispatched,
    "inbox write": lambda r: r.stored - r.received,
    "lane, persona, session → model": lambda r: r.model_asked - r.stored,
    "model → first message POST": lambda r: r.shown - r.model_asked,
}


def _config(data_dir: str, ollama: FakeOllama) -> Any:
    model = ollama.models[0]
    return parse_config({
        "data_dir": data_dir,
        "gateway": {"providers": {"fake": {"type": "ollama", "base_url": ollama.base_url,
                                           "models": [{"id": model}]}}},
        "agents": {"default": {"active_model": f"fake/{model}"}},
    })


class Timer:
    """Wraps Gateway.accept to note when each event arrives and when it is stored."""

    def __init__(self, service: Service) -> None:
        self.marks: dict[str, tuple[float, float]] = {}
        self._accept = service.gateway.accept
        service.gateway.accept = self._timed  # type: ignore[method-assign]

    async def _timed(self, event: InboundEvent) -> int | None:
        received = time.monotonic()
        inbox_id = await self._accept(event)
        self.marks[event.message_id] = (received, time.monotonic())
        return inbox_id


async def _one(fake: FakeDiscord, ollama: FakeOllama, service: Service, timer: Timer,
               user_id: int) -> Run:
    asked_before = len(ollama.requests_to("/api/chat"))
    dispatched = time.monotonic()
    msg = fake.dm(author_id=user_id, author_name=f"user{user_id}", content="hello")
    channel = fake.dm_channel_id(user_id)
    (first, *_) = await fake.wait_for_call("POST", f"/channels/{channel}/messages", within=10)
    # The turn is fully done before the next one starts.
    deadline = time.monotonic() + 10
    while await inbox.state_of(service.store, "discord", msg["channel_id"],
                               msg["id"]) != MessageStatus.ANSWERED:
        if time.monotonic() > deadline:
            raise SystemExit(f"message {msg['id']} was not answered")
        await asyncio.sleep(0.005)
    received, stored = timer.marks[msg["id"]]
    asked = ollama.requests_to("/api/chat")[asked_before]
    return Run(dispatched, received, stored, asked.at, first.at)


def _line(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (f"{name:<34} median {statistics.median(ms):7.1f} ms   min {min(ms):7.1f}   "
            f"max {max(ms):7.1f}")


async def bench(runs: int) -> None:
    logging.getLogger("discord").setLevel(logging.ERROR)  # optional voice libraries, etc.
    async with FakeOllama() as ollama, FakeDiscord() as fake:
        with fake.patch_client_urls():
            config = _config(tempfile.mkdtemp(prefix="hearthbot-bench-"), ollama)
            async with open_service(config) as service:
                timer = Timer(service)
                adapter = DiscordAdapter(DiscordChannel(token=fake.token), service.gateway,
                                         guild_ready_timeout=0.05)
                task = asyncio.create_task(adapter.serve())
                await asyncio.wait_for(adapter.ready.wait(), 10)
                try:
                    results = [await _one(fake, ollama, service, timer, FIRST_USER + n)
                               for n in range(WARM_UP + runs)][WARM_UP:]
                finally:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
    print(f"Discord: MESSAGE_CREATE dispatched → first message POST received, instant model "
          f"(n={runs}, after {WARM_UP} warm-up runs)")
    print(_line("first visible text", [r.total for r in results]))
    for name, segment in SEGMENTS.items():
        print(_line(f"  {name}", [segment(r) for r in results]))


if __name__ == "__main__":
    asyncio.run(bench(int(sys.argv[1]) if len(sys.argv) > 1 else 30))
