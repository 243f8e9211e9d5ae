"""The benchmark suite: six measurements of hearthbot on this machine, in order.

    python -m tests.bench                       # all six, full sample sizes
    python -m tests.bench --quick               # all six, small samples (minutes, not figures)
    python -m tests.bench --only overhead,fidelity

Each prints a table and appends one JSON line (figures, commit, machine) to the results file.
It measures; it does not pass or fail. Figures only mean something on an otherwise idle
machine: the load average at the start is printed and kept with every line.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
import time
from pathlib import Path

from tests.bench.common import RESULTS, append, load_average, machine, render

ORDER = ("overhead", "fidelity", "throughput", "footprint", "voice", "embedded")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", default=",".join(ORDER),
                        help=f"comma-separated, from: {', '.join(ORDER)}")
    parser.add_argument("--quick", action="store_true",
                        help="small samples: proves each benchmark runs; not for figures")
    parser.add_argument("--results", type=Path, default=RESULTS / "results.jsonl",
                        help="the JSON-lines file each benchmark appends to")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in ORDER]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    load = load_average()
    box = machine()
    print(f"hearthbot benchmarks on {box['cpu']} ({box['cores']} cores, {box['ram_gb']} GB), "
          f"Python {box['python']}")
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          "(figures are comparable only on an otherwise idle machine)"
          + ("; --quick: small samples" if args.quick else ""))
    started = time.monotonic()
    for name in (n for n in ORDER if n in chosen):
        began = time.monotonic()
        module = importlib.import_module(f"tests.bench.{name}")
        result = asyncio.run(module.run(args.quick))
        if result.chart is not None:
            drawn = result.chart(args.results.parent).resolve()
            shown = drawn.relative_to(Path.cwd()) if drawn.is_relative_to(Path.cwd()) else drawn
            result.notes.append(f"chart: {shown}")
        print()
        print(render(result))
        print(f"  ({time.monotonic() - began:.0f} s)", flush=True)
        append(result, args.results, quick=args.quick, load_at_start=load)
    print(f"\nall done in {time.monotonic() - started:.0f} s; appended to {args.results}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
