"""Real-time factor of the bundled voice models on this machine.

    python tests/bench/bench_voice.py [--runs 5]

Real-time factor (RTF) = processing time / audio length; below 1 is faster
than real time. Each figure is the median of `--runs` timed runs after one
warm-up run. TTS is timed twice: piper plus resampling to 48 kHz, and the
whole voice note (plus OGG/Opus encoding, duration and waveform). STT is timed
on that OGG/Opus voice note, decoding included.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

try:
    import bot.voice  # noqa: F401
except ImportError:
    # Run from a checkout without installing it: make the repository importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bot.voice.assets import whisper_base_available, whisper_base_dir
from bot.voice.stt import Transcriber
from bot.voice.tts import SpokenClip, Synthesizer

TEXT = "Good morning. You have three new messages, and it will rain after lunch today."


async def timed(call: Callable[[], Awaitable[object]], runs: int) -> list[float]:
    await call()  # warm-up: first calls pay for lazy setup inside the libraries
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        await call()
        seconds.append(time.perf_counter() - started)
    return seconds


def report(label: str, seconds: list[float], audio_seconds: float) -> None:
    rtfs = [s / audio_seconds for s in seconds]
    print(
        f"{label:<38} RTF median {statistics.median(rtfs):.3f} "
        f"(min {min(rtfs):.3f}, max {max(rtfs):.3f}); "
        f"median {statistics.median(seconds) * 1000:.0f} ms for {audio_seconds:.2f} s of audio"
    )


async def load_timed(label: str, load: Callable[[], Awaitable[None]]) -> None:
    started = time.perf_counter()
    await load()
    print(f"{label:<38} loaded in {time.perf_counter() - started:.2f} s")


async def main(runs: int) -> None:
    print(f"cpu cores: {os.cpu_count()}, runs per figure: {runs} (after 1 warm-up)")
    synthesizer, tiny = Synthesizer(), Transcriber()
    await load_timed("piper en_US-joe-medium", synthesizer.load)
    await load_timed("whisper tiny.en (int8)", tiny.load)

    clip: SpokenClip = await synthesizer.synthesize(TEXT)
    print(f"clip: {clip.duration:.2f} s, {len(clip.ogg_opus)} bytes OGG/Opus")

    piper = await timed(lambda: synthesizer.synthesize_pcm48k(TEXT), runs)
    report("TTS piper + resample to 48 kHz", piper, clip.duration)
    note = await timed(lambda: synthesizer.synthesize(TEXT), runs)
    report("TTS full voice note (OGG/Opus)", note, clip.duration)

    stt = await timed(lambda: tiny.transcribe(clip.ogg_opus), runs)
    report("STT tiny.en, beam 5", stt, clip.duration)
    print(f"  heard: {(await tiny.transcribe(clip.ogg_opus)).text!r}")

    if whisper_base_available():
        base = Transcriber(model_dir=await asyncio.to_thread(whisper_base_dir))
        await load_timed("whisper base multilingual (int8)", base.load)
        report(
            "STT base, beam 5",
            await timed(lambda: base.transcribe(clip.ogg_opus), runs),
            clip.duration,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5)
    asyncio.run(main(parser.parse_args().runs))
