"""How many threads the embedded engine should use: decode speed by thread count, on an idle
machine and on one where other processes keep cores busy.

    python -m tests.bench.bench_threads [RUNS] [TOKENS]

llama.cpp's worker threads spin while they wait for each other, so a thread that shares its
core with another busy process stalls every token. The runs for each thread count are
interleaved (1, 2, ..., 1, 2, ...) so that a change in the machine's load during the bench
falls on every count alike. Printed: median decode tokens/s and time to first token per
thread count, for each load condition, and the load average when the bench started.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bot.providers.bundled import bundled_model_path

PROMPT = [{"role": "system", "content": "You are a helpful assistant."},
          {"role": "user", "content": "Tell me a short story about a lighthouse keeper."}]


def _spin() -> None:
    while True:
        pass


@contextmanager
def busy(processes: int) -> Iterator[None]:
    """`processes` other programs each keeping one core fully busy."""
    spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(processes)]
    for spinner in spinners:
        spinner.start()
    try:
        time.sleep(0.5)  # let the scheduler spread them out
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.join()


def one_run(llm: Any, tokens: int) -> tuple[float, float]:
    """(seconds to the first token, decode tokens/s after it)."""
    llm.reset()
    started = time.perf_counter()
    first: float | None = None
    produced = 0
    for chunk in llm.create_chat_completion(messages=PROMPT, stream=True, max_tokens=tokens,
                                            temperature=0.2, top_p=0.9, repeat_penalty=1.1,
                                            seed=7):
        if chunk["choices"][0]["delta"].get("content"):
            produced += 1
            if first is None:
                first = time.perf_counter()
    ended = time.perf_counter()
    assert first is not None and produced > 1
    return first - started, (produced - 1) / (ended - first)


def measure(counts: list[int], runs: int, tokens: int) -> dict[int, tuple[float, float]]:
    from llama_cpp import Llama

    models = {n: Llama(model_path=str(bundled_model_path()), n_ctx=2048, n_threads=n,
                       n_threads_batch=n, verbose=False) for n in counts}
    for llm in models.values():
        one_run(llm, 8)  # warm-up
    firsts: dict[int, list[float]] = {n: [] for n in counts}
    speeds: dict[int, list[float]] = {n: [] for n in counts}
    for _ in range(runs):
        for n in counts:
            first, speed = one_run(models[n], tokens)
            firsts[n].append(first)
            speeds[n].append(speed)
    for llm in models.values():
        llm.close()
    return {n: (statistics.median(firsts[n]), statistics.median(speeds[n])) for n in counts}


def main(argv: list[str]) -> int:
    runs = int(argv[0]) if argv else 5
    tokens = int(argv[1]) if len(argv) > 1 else 64
    cores = os.cpu_count() or 1
    counts = list(range(1, cores + 1))
    print(f"cores: {cores}, load average at start: "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"{runs} runs of {tokens} tokens per figure, medians")
    for others in sorted({0, 1, cores}):
        with busy(others):
            load = os.getloadavg()[0]
            results = measure(counts, runs, tokens)
        label = ("no extra load" if others == 0
                 else f"+{others} busy process{'es' if others > 1 else ''}")
        print(f"  {label} (1-minute load average {load:.1f} when it began):")
        for n, (first, speed) in results.items():
            print(f"    n_threads={n}: first token {first * 1000:6.0f} ms, "
                  f"decode {speed:6.1f} tokens/s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
