"""Time from an update leaving the fake Bot API to the first visible text arriving back.

    python -m tests.bench.bench_telegram [RUNS]

The model is a fake that answers at once, so the figure is the gateway's own latency: long
poll wake-up, parsing, inbox write, routing, history, the model request, and the first draft.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from adapters.telegram import TelegramAdapter
from bot.service import open_service
from tests.fakes.llm_backends import FakeOllama, ScriptedReply
from tests.fakes.telegram import Call, FakeTelegram
from tests.support.helpers import make_config

CHAT = 4242


async def measure(runs: int) -> tuple[list[float], list[float]]:
    async with FakeTelegram() as tg, FakeOllama() as llm:
        config = make_config(
            Path(tempfile.mkdtemp(prefix="hearthbot-bench-")),
            gateway={"providers": {"ollama": {"type": "ollama", "base_url": llm.base_url,
                                              "models": [{"id": llm.models[0]}]}}},
            agents={"default": {"active_model": f"ollama/{llm.models[0]}"}},
            channels={"telegram": {"token": tg.token, "api_base_url": tg.base_url,
                                   "file_base_url": tg.base_file_url, "draft_interval": 0.0}},
        )
        assert config.channels.telegram is not None
        llm.script(*[ScriptedReply(chunks=("Hi", " there", "."))] * (runs + 5))
        latencies: list[float] = []
        to_model: list[float] = []
        async with open_service(config, voice=False) as service:
            adapter = TelegramAdapter(config.channels.telegram, service.gateway)
            task = asyncio.create_task(adapter.serve())
            await adapter.ready.wait()
            for run in range(runs + 3):
                seen = len(tg.calls)
                pushed = time.monotonic()
                tg.push_text(chat_id=CHAT, from_id=CHAT, text="/new" if run == 0 else "hello")
                visible = await _first_call(tg, seen, ("sendMessageDraft", "sendMessage"))
                await _first_call(tg, seen, ("sendMessage",))  # runs must not overlap
                if run >= 3:  # the first turns pay for connection set-up
                    latencies.append(visible.at - pushed)
                    to_model.append(llm.requests_to("/api/chat")[-1].at - pushed)
                await asyncio.sleep(0.05)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return latencies, to_model


async def _first_call(tg: FakeTelegram, seen: int, methods: tuple[str, ...]) -> Call:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for call in tg.calls[seen:]:
            if call.status == 200 and call.method in methods and call.params.get("text"):
                return call
        await asyncio.sleep(0.001)
    raise TimeoutError(f"no {methods} call within 10 s")


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    latencies, to_model = asyncio.run(measure(runs))
    print(f"update pushed -> first visible text at the fake Bot API, instant model (n={runs})")
    for name, seconds in (("first visible text", latencies), ("of which, to the model", to_model)):
        values = [v * 1000 for v in seconds]
        print(f"{name:<24} median {statistics.median(values):6.1f} ms   "
              f"min {min(values):6.1f} ms   max {max(values):6.1f} ms")


if __name__ == "__main__":
    main()
