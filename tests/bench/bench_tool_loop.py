"""What one tool round trip costs in the agent loop, apart from any model: the same console
turn against an instant fake Ollama, once answered directly and once after one `file_read`
call (model → tool call → gate → tool → audit → model → answer).

    python -m tests.bench.bench_tool_loop [RUNS]
"""

from __future__ import annotations

import asyncio
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

from adapters.console import ConsoleChat
from bot.service import open_service
from tests.fakes.llm_backends import FakeOllama, ScriptedReply, ToolCall
from tests.support.helpers import make_config


async def main(runs: int) -> None:
    data = Path(tempfile.mkdtemp(prefix="hearthbot-bench-"))
    workspace = data / "admin"
    workspace.mkdir()
    (workspace / "notes.md").write_text("The meeting is on Tuesday.\n")
    async with FakeOllama() as fake:
        config = make_config(
            data,
            gateway={"providers": {"ollama": {"type": "ollama", "base_url": fake.base_url,
                                              "models": [{"id": fake.models[0],
                                                          "capabilities": ["tools"]}]}}},
            agents={"default": {"active_model": f"ollama/{fake.models[0]}"},
                    "instances": {"admin": {"role": "admin", "workspace": str(workspace)},
                                  "guest": {"role": "guest"}}})
        async with open_service(config, voice=False) as service:
            chat = ConsoleChat(service.gateway, out=io.StringIO(), err=io.StringIO())
            plain, with_tool = [], []
            for n in range(runs + 1):
                fake.script(ScriptedReply(chunks=("Tuesday.",)))
                started = time.perf_counter()
                await chat.ask(f"when is the meeting? {n}")
                plain.append(time.perf_counter() - started)
                fake.script(ScriptedReply.calling(ToolCall("file_read", {"path": "notes.md"})),
                            ScriptedReply(chunks=("Tuesday.",)))
                started = time.perf_counter()
                await chat.ask(f"check my notes: when is the meeting? {n}")
                with_tool.append(time.perf_counter() - started)
    plain, with_tool = plain[1:], with_tool[1:]  # the first of each warms caches
    extra = [t - p for p, t in zip(plain, with_tool, strict=True)]
    print(f"console turn, instant fake Ollama, n={runs}")
    for name, values in (("answered directly", plain), ("after one file_read", with_tool),
                         ("one tool round trip", extra)):
        print(f"  {name:<22} median {statistics.median(values) * 1000:7.2f} ms   "
              f"min {min(values) * 1000:7.2f}   max {max(values) * 1000:7.2f}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 30))
