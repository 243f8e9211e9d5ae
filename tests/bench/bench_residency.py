"""Cold start and first-turn latency, with and without the warm-up at start, for the embedded
bundled model and for a managed llama_cpp.server serving the same GGUF; and how long a managed
server killed with SIGKILL takes to answer again.

    python -m tests.bench.bench_residency [RUNS]

Each run uses a fresh residency manager (a fresh process for the managed server); the GGUF is
in the page cache after the first run, as it is for a service that restarts. Figures are
medians over RUNS:

  cold start       start(): wait for the backend, load, warm (one token)
  first turn cold  time to the first token of a turn that finds nothing loaded
  first turn warm  time to the first token of the first turn after start()
  next turn        time to the first token of the turn after that
  back after kill  (managed) SIGKILL to the server answering its health check again
  turn after kill  (managed) time to the first token of a turn sent right after the kill
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from bot.config import Config, GenerationParams, parse_config
from bot.model_host import ModelHost
from bot.providers import ChatMessage, TextDelta
from bot.providers.bundled import bundled_model_path

SYSTEM = ChatMessage("system", "You are a helpful assistant.")
QUESTIONS = ("Name three colours.", "Name three animals.", "Name three rivers.")
PARAMS = GenerationParams(max_tokens=16)


def embedded_config() -> Config:
    return parse_config({"data_dir": tempfile.mkdtemp(prefix="hearthbot-bench-")})


def managed_config() -> Config:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "llama_cpp.server", "--model", "{path}", "--model_alias",
               "{model}", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
               "--n_threads", "1", "--n_threads_batch", "1"]
    return parse_config({
        "data_dir": tempfile.mkdtemp(prefix="hearthbot-bench-"),
        "gateway": {"providers": {"llama": {
            "type": "openai-compat", "base_url": f"http://127.0.0.1:{port}/v1",
            "first_token_timeout": 120, "managed": {"command": command},
            "models": [{"id": "smollm2", "path": str(bundled_model_path()),
                        "context_window": 2048}]}}},
        "agents": {"default": {"active_model": "llama/smollm2"}}})


async def first_token(host: ModelHost, question: int = 0) -> float:
    """Time to the first token of one turn. Different questions share only the system prompt,
    as turns of a conversation do, so the engine's prompt cache helps no more than that."""
    target = host.target(None)
    messages = (SYSTEM, ChatMessage("user", QUESTIONS[question]))
    started = time.perf_counter()
    seen: float | None = None
    async for delta in target.provider.stream(target.model, messages, PARAMS):
        if seen is None and isinstance(delta, TextDelta):
            seen = time.perf_counter() - started
    assert seen is not None, "the model said nothing"
    return seen


async def one_run(make: Callable[[], Config], managed: bool) -> dict[str, float]:
    figures: dict[str, float] = {}
    host = ModelHost(make())
    try:
        figures["first turn cold"] = await first_token(host)
    finally:
        await host.close()
    host = ModelHost(make())
    try:
        started = time.perf_counter()
        await host.start()
        figures["cold start"] = time.perf_counter() - started
        figures["first turn warm"] = await first_token(host)
        figures["next turn"] = await first_token(host, 1)
        if managed:
            (server,) = host.status().managed
            assert server.pid is not None
            os.kill(server.pid, signal.SIGKILL)
            figures["turn after kill"] = await first_token(host, 2)
            (restarted,) = host.status().managed
            assert restarted.restarts == 1 and restarted.started_seconds is not None
            figures["back after kill"] = restarted.started_seconds
    finally:
        await host.close()
    return figures


def report(name: str, runs: list[dict[str, float]]) -> None:
    print(name)
    for key in runs[0]:
        values = [run[key] for run in runs]
        print(f"  {key:<18} median {statistics.median(values):7.3f} s   "
              f"min {min(values):7.3f}   max {max(values):7.3f}   (n={len(values)})")


async def main(runs: int) -> None:
    print(f"cores: {os.cpu_count()}, load average at start: "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results: dict[str, Any] = {}
    for name, make, managed in (("embedded (llama.cpp in-process, bundled SmolLM2)",
                                 embedded_config, False),
                                ("managed llama_cpp.server (same GGUF, 1 thread)",
                                 managed_config, True)):
        results[name] = [await one_run(make, managed) for _ in range(runs)]
        report(name, results[name])
    print("'back after kill': the restarted server's start, spawn to a healthy answer")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3))
