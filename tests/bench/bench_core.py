"""Figures for the core path, printed as medians of several runs.

    python -m tests.bench.bench_core embedded [RUNS]   # bundled model: first token, tokens/s
    python -m tests.bench.bench_core overhead [RUNS]   # one `chat --once` process, instant backend
    python -m tests.bench.bench_core serve-fake PORT   # an instant fake Ollama, for outside timers

Both measurements run the real `hearthbot chat --once` command in a fresh process each time,
with a throw-away data directory, as a user's script would.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tests.fakes.llm_backends import FakeOllama, ScriptedReply

STATS = re.compile(r"first token ([\d.]+) s, (\d+) tokens in ([\d.]+) s(?:, ([\d.]+) tokens/s)?")
PROMPT = "Tell me a short story about a lighthouse keeper."


async def _once(env: dict[str, str], *args: str) -> tuple[float, str]:
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", *args, "chat", "--stats", "--once", PROMPT, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await process.communicate()
    elapsed = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"run failed: {err.decode()}")
    return elapsed, err.decode()


def _summary(name: str, values: list[float], unit: str) -> str:
    return (f"{name:<28} median {statistics.median(values):8.3f} {unit}   "
            f"min {min(values):8.3f}   max {max(values):8.3f}   (n={len(values)})")


async def embedded(runs: int) -> None:
    home = tempfile.mkdtemp(prefix="hearthbot-bench-")
    env = {**os.environ, "HEARTHBOT_HOME": home}
    await _once(env)  # warm-up: page cache, first migration
    first, speed, wall = [], [], []
    for _ in range(runs):
        elapsed, err = await _once(env)
        match = STATS.search(err)
        if match is None:
            raise SystemExit(f"no stats line in: {err!r}")
        first.append(float(match.group(1)))
        if match.group(4):
            speed.append(float(match.group(4)))
        wall.append(elapsed)
    print("bundled SmolLM2-135M through `hearthbot chat --once` (model loaded per process)")
    print(_summary("time to first token", first, "s"))
    print(_summary("decode speed", speed, "tok/s"))
    print(_summary("whole process", wall, "s"))


async def overhead(runs: int) -> None:
    async with FakeOllama() as fake:
        fake.script(*[ScriptedReply(chunks=("ok",))] * (runs + 1))
        home = Path(tempfile.mkdtemp(prefix="hearthbot-bench-"))
        config = home / "config.json"
        config.write_text(json.dumps({
            "gateway": {"providers": {"fake": {"type": "ollama", "base_url": fake.base_url,
                                                "models": [{"id": fake.models[0]}]}}},
            "agents": {"default": {"active_model": f"fake/{fake.models[0]}"}}}))
        env = {**os.environ, "HEARTHBOT_HOME": str(home)}
        await _once(env, "--config", str(config))
        wall, turn = [], []
        for _ in range(runs):
            elapsed, err = await _once(env, "--config", str(config))
            match = STATS.search(err)
            assert match is not None, err
            wall.append(elapsed)
            turn.append(float(match.group(3)))
    print("one `hearthbot chat --once` turn against an instant fake Ollama")
    print(_summary("whole process", wall, "s"))
    print(_summary("turn inside the gateway", turn, "s"))


async def serve_fake(port: int) -> None:
    fake = FakeOllama()
    await fake.start(port)
    print(f"fake Ollama at {fake.base_url}; Ctrl-C stops it", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    what = sys.argv[1] if len(sys.argv) > 1 else "overhead"
    number = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    if what == "embedded":
        asyncio.run(embedded(number))
    elif what == "overhead":
        asyncio.run(overhead(number))
    elif what == "serve-fake":
        asyncio.run(serve_fake(number))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
