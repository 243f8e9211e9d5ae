"""What the code sandbox costs per call: median of RUNS runs of an empty program.

    python -m tests.bench.bench_sandbox [RUNS]

Prints three medians: the same interpreter started plainly (`python -I -S -B -u -c pass`),
a full sandboxed call through `Sandbox.run_python("pass")` (namespaces, mounts, the
self-check prelude, rlimits), and the difference, which is what the confinement adds.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time

from bot.tools.sandbox import Sandbox


def _plain(runs: int) -> list[float]:
    interpreter = os.path.realpath(sys.executable)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([interpreter, "-I", "-S", "-B", "-u", "-c", "pass"], check=True, env={})
        times.append(time.perf_counter() - started)
    return times


async def _sandboxed(runs: int) -> list[float]:
    sandbox = Sandbox()
    await sandbox.probe()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        result = await sandbox.run_python("pass")
        times.append(time.perf_counter() - started)
        assert result.exit_code == 0, result
    return times


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    plain = statistics.median(_plain(runs)) * 1000
    boxed = statistics.median(asyncio.run(_sandboxed(runs))) * 1000
    print(f"plain interpreter start   median of {runs}: {plain:6.1f} ms")
    print(f"sandboxed call (pass)     median of {runs}: {boxed:6.1f} ms")
    print(f"added by the sandbox                     : {boxed - plain:6.1f} ms")


if __name__ == "__main__":
    main()
