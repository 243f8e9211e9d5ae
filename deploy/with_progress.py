"""Run a long install step and say, every 30 s it is silent, that it is still working.

    python deploy/with_progress.py [--every SECONDS] COMMAND [ARG...]

The Makefile runs pip through this. The command's output is passed through line by line; when
it has printed nothing for SECONDS (default 30) one line says how long it has been running and
what it is busy with, taken from pip's last "Building wheel for ..." or "Collecting ..." line.
Plain lines only, no progress bars or carriage returns, so a CI log reads as well as a terminal.
The exit status is the command's. Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from typing import IO

_BUSY = re.compile(r"^\s*(?:Building wheel for|Collecting|Downloading|Installing|"
                   r"Preparing metadata|Getting requirements|Obtaining)\b.*")
_BUILDING = re.compile(r"Building wheel for (\S+)")
_SLOW_BUILDS = {"llama-cpp-python": "compiling llama.cpp, about 5-10 minutes on 2 cores"}


def main(argv: list[str]) -> int:
    every = 30.0
    if len(argv) >= 2 and argv[0] == "--every":
        every, argv = float(argv[1]), argv[2:]
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    started = time.monotonic()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, env={**os.environ,
                                                              "PYTHONUNBUFFERED": "1"})
    assert process.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True).start()
    busy = ""
    try:
        while True:
            try:
                line = lines.get(timeout=every)
            except queue.Empty:
                _say(f"... {_elapsed(started)} so far, still {_doing(busy)}")
                continue
            if line is None:
                break
            _say(line)
            if "finished with status" in line:
                busy = ""
            elif _BUSY.match(line):
                busy = line.strip()[:100]
        status = process.wait()
    except KeyboardInterrupt:
        # The terminal sent the interrupt to the command too; let it stop, then stop.
        process.wait()
        return 130
    outcome = "done" if status == 0 else f"failed (exit status {status})"
    _say(f"... {outcome} after {_elapsed(started)}")
    return status


def _pump(stream: IO[bytes], lines: queue.Queue[str | None]) -> None:
    for raw in stream:
        lines.put(raw.decode(errors="replace").rstrip("\r\n").rsplit("\r", 1)[-1])
    lines.put(None)


def _doing(busy: str) -> str:
    building = _BUILDING.search(busy)
    if building is None:
        return f"working ({busy})" if busy else "working"
    name = building.group(1)
    hint = _SLOW_BUILDS.get(name.lower().replace("_", "-"))
    return f"building {name}" + (f" ({hint})" if hint else "")


def _elapsed(started: float) -> str:
    minutes, seconds = divmod(round(time.monotonic() - started), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def _say(line: str) -> None:
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
