"""hearthbot's core: events, config, store, router, providers, sessions and wiring."""

import os

# onnxruntime (piper, faster-whisper's VAD) reports telemetry unless this is set before it loads.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"
