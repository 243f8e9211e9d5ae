"""(5) Voice: how fast the bundled speech models run here, and how long a spoken reply lags.

Real-time factor (RTF) = processing time / audio length; below 1 is faster than real time.
Each is the median of several timed runs after one warm-up run. TTS is timed twice: piper plus
resampling to 48 kHz, and the whole voice note (plus OGG/Opus encoding, duration and
waveform). STT is timed on that voice note, decoding included, with each bundled Whisper.

Spoken-reply lag: a piper-spoken question goes in as a Telegram voice note through the real
client; the fake model answers three sentences at about 30 tokens/s. Figures: the time from
the text reply's final message to the voice note reaching the fake Bot API (what a user waits
for the voice), and from the voice note going in to the voice coming out; with a DM's default
pacing, and (full runs) with none, to show what synthesis itself costs.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

from bot.voice.assets import whisper_base_available, whisper_base_dir
from bot.voice.stt import Transcriber
from bot.voice.tts import SpokenClip, Synthesizer
from tests.bench.common import Result, progress, telegram_rig, wait_for
from tests.fakes.llm_backends import ScriptedReply

TEXT = "Good morning. You have three new messages, and it will rain after lunch today."
QUESTION = "What is the weather like in Paris today?"
ANSWER = ("It is sunny and warm in Paris today. ", "Take your sunglasses with you. ",
          "Enjoy a long walk along the river.")
CHAT = 9_000_001


async def _timed(call: Callable[[], Awaitable[object]], runs: int) -> list[float]:
    await call()  # warm-up: first calls pay for lazy setup inside the libraries
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        await call()
        seconds.append(time.perf_counter() - started)
    return seconds


async def _loaded(load: Callable[[], Awaitable[None]]) -> float:
    started = time.perf_counter()
    await load()
    return time.perf_counter() - started


async def speeds(runs: int) -> tuple[list[tuple[str, float, float, float]], float]:
    """(name, load seconds, median RTF, median ms) per model step; and the clip's length."""
    synthesizer, tiny = Synthesizer(), Transcriber()
    rows = []
    piper_load = await _loaded(synthesizer.load)
    tiny_load = await _loaded(tiny.load)
    clip: SpokenClip = await synthesizer.synthesize(TEXT)

    def row(name: str, load: float, seconds: list[float]) -> tuple[str, float, float, float]:
        return (name, load, statistics.median(seconds) / clip.duration,
                statistics.median(seconds) * 1000)

    rows.append(row("TTS piper + resample to 48 kHz", piper_load,
                    await _timed(lambda: synthesizer.synthesize_pcm48k(TEXT), runs)))
    rows.append(row("TTS whole voice note (OGG/Opus)", piper_load,
                    await _timed(lambda: synthesizer.synthesize(TEXT), runs)))
    rows.append(row("STT whisper tiny.en int8, beam 5", tiny_load,
                    await _timed(lambda: tiny.transcribe(clip.ogg_opus), runs)))
    if whisper_base_available():
        base = Transcriber(model_dir=await asyncio.to_thread(whisper_base_dir))
        base_load = await _loaded(base.load)
        rows.append(row("STT whisper base int8, beam 5", base_load,
                        await _timed(lambda: base.transcribe(clip.ogg_opus), runs)))
    return rows, clip.duration


async def spoken_lag(runs: int, interval: float) -> tuple[list[float], list[float]]:
    question = await Synthesizer().synthesize(QUESTION)
    words = tuple(w + " " for sentence in ANSWER for w in sentence.split())
    async with telegram_rig(draft_interval=interval, voice=True) as rig:
        tg = rig.tg
        rig.llm.script(*[ScriptedReply(chunks=words, token_delay=0.033)] * (runs + 1))
        after_text, whole = [], []
        for run in range(runs + 1):
            seen = len(tg.calls)
            pushed = time.monotonic()
            update = tg.push_voice(chat_id=CHAT, from_id=CHAT, data=question.ogg_opus,
                                   duration=3)

            def sent(method: str, seen: int = seen) -> float | None:
                return next((c.at for c in tg.calls[seen:]
                             if c.method == method and c.status == 200), None)

            await wait_for(lambda: sent("sendMessage") and sent("sendVoice"), "text and voice")
            await rig.answered(update)
            text_at, voice_at = sent("sendMessage"), sent("sendVoice")
            assert text_at is not None and voice_at is not None
            if run > 0:  # the first run waits for the models to finish loading
                after_text.append(voice_at - text_at)
                whole.append(voice_at - pushed)
    return after_text, whole


async def run(quick: bool) -> Result:
    runs = 2 if quick else 5
    progress("voice: speech model speeds")
    rows, audio = await speeds(runs)
    result = Result("voice",
                    f"(5) voice: real-time factors (a {audio:.2f} s clip) and spoken-reply lag",
                    ("measure", "load s", "RTF median", "median ms", "n"))
    figures: dict[str, object] = {"clip_seconds": audio, "rtf": {}, "spoken_reply": {}}
    for name, load, rtf, ms in rows:
        result.rows.append((name, load, rtf, ms, runs))
        figures["rtf"][name] = {"load_s": load, "rtf": rtf, "median_ms": ms}  # type: ignore[index]
    lag_runs = 2 if quick else 7
    for interval in ((0.4,) if quick else (0.4, 0.0)):
        progress(f"voice: spoken reply, DM pacing {interval:g} s")
        after_text, whole = await spoken_lag(lag_runs, interval)
        for label, values in (("voice after the text", after_text),
                              ("voice note in -> voice out", whole)):
            name = f"{label}, pacing {interval:g} s"
            median = statistics.median(values)
            result.rows.append((name, None, None, median * 1000, len(values)))
            figures["spoken_reply"][name] = {  # type: ignore[index]
                "median_ms": median * 1000, "min_ms": min(values) * 1000,
                "max_ms": max(values) * 1000, "n": len(values)}
    result.figures = figures
    result.notes.append("the reply: three sentences at about 30 tokens/s from the fake model")
    return result
