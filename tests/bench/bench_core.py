"""One `hearthbot chat --once` process against an instant backend, and that backend on its own.

    python -m tests.bench.bench_core overhead [RUNS]   # one `chat --once` process, instant backend
    python -m tests.bench.bench_core serve-fake PORT   # an instant fake Ollama, for outside timers

The suite (python -m tests.bench) reports the same `chat --once` figure in its overhead table;
this script stays for timing the process alone and for serving the fake to other programs.
Each run is a fresh process with a throw-away data directory, as a user's script would have.
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

from tests.fakes.llm_backends import FakeOllama

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


async def once_runs(fake: FakeOllama, runs: int) -> tuple[list[float], list[float]]:
    """Wall seconds of each `chat --once` process, and the turn inside it, after one warm-up
    (page cache, the first migration)."""
    home = Path(tempfile.mkdtemp(prefix="hearthbot-bench-"))
    config = home / "config.json"
    config.write_text(json.dumps({
        "gateway": {"port": 0, "providers": {"fake": {"type": "ollama", "base_url": fake.base_url,
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
    return wall, turn


async def once_wall(fake: FakeOllama, runs: int) -> list[float]:
    return (await once_runs(fake, runs))[0]


def _summary(name: str, values: list[float], unit: str) -> str:
    return (f"{name:<28} median {statistics.median(values):8.3f} {unit}   "
            f"min {min(values):8.3f}   max {max(values):8.3f}   (n={len(values)})")


async def overhead(runs: int) -> None:
    async with FakeOllama() as fake:
        wall, turn = await once_runs(fake, runs)
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
    if what == "overhead":
        asyncio.run(overhead(number))
    elif what == "serve-fake":
        asyncio.run(serve_fake(number))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
