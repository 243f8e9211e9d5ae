"""hearthbot's core: events, config, store, router, providers, sessions and wiring.

This file is the one place that sets the process environment. Every entry point (the console
script, the tests, `python -m`) imports `bot` before any library that reads these variables,
and `adapters/__init__.py` imports it first for the same reason.
"""

import os
import sys

# onnxruntime (piper, faster-whisper's VAD) reports telemetry unless this is set before it loads.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
# python-telegram-bot: durations as timedelta now, ahead of the library's own switch.
os.environ.setdefault("PTB_TIMEDELTA", "1")

# Hugging Face libraries (the MLX engine loads models through them) must never try the hub:
# models are local folders, and nothing leaves the machine.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# `import httpx` also imports httpx's own command-line client (click, rich, pygments) whenever
# those happen to be installed: tens of milliseconds at every start for a tool never run here.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

__version__ = "0.1.0"
