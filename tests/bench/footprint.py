"""(4) Footprint: the resident memory of a real `hearthbot run` process, serving Telegram.

Three services, each in its own process with a throw-away data directory, against the fake
Bot API and (for the external model) a fake Ollama on 127.0.0.1:

  external model, speech not loaded   the service alone: what hearthbot itself costs (voice
                                      is on, as by default, but its models load with the
                                      first voice note)
  external model, speech loaded       after one voice note in and one spoken reply out, so
                                      the Whisper and piper models are resident and used
  embedded bundled model              SmolLM2-135M in-process (llama.cpp), speech not loaded

Memory is VmRSS from /proc/PID/status once the service is ready (it polls the Bot API and its
control socket is there), and again after one text turn; VmHWM is the peak.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from bot import control
from tests.bench.common import REPO, Result, progress, wait_for
from tests.fakes.llm_backends import FakeOllama
from tests.fakes.telegram import FakeTelegram

CHAT = 8_000_001


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM in kB."""
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            figures[key] = int(value.split()[0])
    return figures


def _config(tg: FakeTelegram, llm: FakeOllama | None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "gateway": {"port": 0},
        "channels": {"telegram": {"token": tg.token, "api_base_url": tg.base_url,
                                  "file_base_url": tg.base_file_url, "poll_timeout": 2}}}
    if llm is not None:
        config["gateway"]["providers"] = {"ollama": {
            "type": "ollama", "base_url": llm.base_url,
            "models": [{"id": llm.models[0]}]}}
        config["agents"] = {"default": {"active_model": f"ollama/{llm.models[0]}"}}
    return config


async def _measure(tg: FakeTelegram, config: dict[str, Any], voice_note: bytes | None
                   ) -> dict[str, float]:
    home = Path(tempfile.mkdtemp(prefix="hearthbot-bench-"))
    path = home / "config.json"
    path.write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HEARTHBOT_", "TELEGRAM_", "DISCORD_"))}
    env.update(PYTHONPATH=str(REPO), HEARTHBOT_HOME=str(home),
               XDG_CONFIG_HOME=str(home / "xdg-config"), ORT_DISABLE_TELEMETRY="1")
    polls = len(tg.calls_to("getUpdates"))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "--config", str(path), "run", env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
    sock = control.socket_path(home)
    try:
        await wait_for(lambda: (process.returncode is None
                                and len(tg.calls_to("getUpdates")) > polls and sock.exists())
                       or process.returncode is not None, "the service serving")
        assert process.returncode is None, "the service exited before it was ready"
        ready = _status(process.pid)
        seen = len(tg.calls)
        tg.push_text(chat_id=CHAT, from_id=CHAT, text="hello")
        await wait_for(lambda: any(c.method == "sendMessage" and c.status == 200
                                   for c in tg.calls[seen:]), "the reply")
        after_turn = _status(process.pid)
        figures = {"ready_mb": ready["VmRSS"] / 1024, "after_turn_mb": after_turn["VmRSS"] / 1024,
                   "peak_mb": after_turn["VmHWM"] / 1024}
        if voice_note is not None:
            seen = len(tg.calls)
            tg.push_voice(chat_id=CHAT, from_id=CHAT, data=voice_note, duration=3)
            await wait_for(lambda: any(c.method == "sendVoice" and c.status == 200
                                       for c in tg.calls[seen:]), "the spoken reply")
            spoken = _status(process.pid)
            figures.update(after_voice_mb=spoken["VmRSS"] / 1024,
                           peak_mb=spoken["VmHWM"] / 1024)
        return figures
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 60)
            except TimeoutError:
                process.kill()
                await process.wait()


async def run(quick: bool) -> Result:
    from bot.voice.tts import Synthesizer

    question = await Synthesizer().synthesize("What is the weather like in Paris today?")
    figures: dict[str, dict[str, float]] = {}
    async with FakeTelegram() as tg, FakeOllama() as llm:
        for name, config, note in (
                # Every service runs the default voice settings: speech on, its models loaded
                # with the first voice note (voice.preload false), so until then they are not.
                ("external model, speech not loaded", _config(tg, llm), None),
                ("external model, speech loaded", _config(tg, llm), question.ogg_opus),
                ("embedded bundled model, speech not loaded", _config(tg, None), None)):
            progress(f"footprint: {name}")
            figures[name] = await _measure(tg, config, note)
    result = Result("footprint", "(4) footprint: resident memory of `hearthbot run`, MB",
                    ("service", "ready", "after a turn", "after voice in+out", "peak"),
                    figures={"rss": figures})
    for name, f in figures.items():
        result.rows.append((name, f["ready_mb"], f["after_turn_mb"], f.get("after_voice_mb"),
                            f["peak_mb"]))
    result.notes.append("VmRSS from /proc/PID/status; the fakes live in the benchmark's own "
                        "process, not the service's")
    return result
