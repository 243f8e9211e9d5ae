"""How much later the spoken reply arrives than the text reply, for a three-sentence answer.

    python -m tests.bench.bench_voice_reply [RUNS]

A piper-spoken question goes in as a Telegram voice note; the fake model answers three
sentences at a steady pace. The figure is the time from the text reply's final message to the
voice note's arrival at the fake Bot API, which is what a user waits for the voice.
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
from bot.voice.tts import Synthesizer
from tests.fakes.llm_backends import FakeOllama, ScriptedReply
from tests.fakes.telegram import Call, FakeTelegram
from tests.support.helpers import make_config

ANSWER = ("It is sunny and warm in Paris today. ", "Take your sunglasses with you. ",
          "Enjoy a long walk along the river.")
CHAT = 777


async def _call(tg: FakeTelegram, method: str, seen: int) -> Call:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for call in tg.calls[seen:]:
            if call.method == method and call.status == 200:
                return call
        await asyncio.sleep(0.002)
    raise TimeoutError(method)


async def measure(runs: int, interval: float) -> tuple[list[float], list[float]]:
    question = await Synthesizer().synthesize("What is the weather like in Paris today?")
    async with FakeTelegram() as tg, FakeOllama() as llm:
        config = make_config(
            Path(tempfile.mkdtemp(prefix="hearthbot-bench-")),
            gateway={"providers": {"ollama": {"type": "ollama", "base_url": llm.base_url,
                                              "models": [{"id": llm.models[0]}]}}},
            agents={"default": {"active_model": f"ollama/{llm.models[0]}"}},
            channels={"telegram": {"token": tg.token, "api_base_url": tg.base_url,
                                   "file_base_url": tg.base_file_url,
                                   "draft_interval": interval}},
        )
        assert config.channels.telegram is not None
        # Words arrive at about 30 tokens/s, a realistic local model's pace.
        words = tuple(w + " " for sentence in ANSWER for w in sentence.split())
        llm.script(*[ScriptedReply(chunks=words, token_delay=0.033)] * (runs + 2))
        extra, whole = [], []
        async with open_service(config) as service:
            adapter = TelegramAdapter(config.channels.telegram, service.gateway)
            task = asyncio.create_task(adapter.serve())
            await adapter.ready.wait()
            for run in range(runs + 1):
                seen = len(tg.calls)
                pushed = time.monotonic()
                tg.push_voice(chat_id=CHAT, from_id=CHAT, data=question.ogg_opus, duration=3)
                text = await _call(tg, "sendMessage", seen)
                voice = await _call(tg, "sendVoice", seen)
                if run > 0:  # the first run waits for the models to finish loading
                    extra.append(voice.at - text.at)
                    whole.append(voice.at - pushed)
                await asyncio.sleep(0.2)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return extra, whole


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    # With the default pacing of a DM, and with none, to show what synthesis itself costs.
    for interval in (0.4, 0.0):
        extra, whole = asyncio.run(measure(runs, interval))
        print(f"spoken reply to a voice note, three sentences (n={runs}), "
              f"DM pacing {interval:g} s")
        for name, values in (("voice after the text", extra),
                             ("voice note in -> voice out", whole)):
            print(f"  {name:<28} median {statistics.median(values):.3f} s   "
                  f"min {min(values):.3f} s   max {max(values):.3f} s")


if __name__ == "__main__":
    main()
