"""Speech for the gateway: resident models loaded in the background, and a speaker that turns
a streaming reply into one voice note, synthesizing each sentence as soon as it is complete.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Awaitable, Iterable
from difflib import SequenceMatcher
from pathlib import Path
from typing import TYPE_CHECKING

from bot.config import VoiceSpec
from bot.voice.assets import whisper_base_dir
from bot.voice.queue import AudioQueue

# The speech libraries (NumPy, PyAV: some 30 MB) are imported at the first voice note or
# spoken reply, not when the service starts: many services never hear one.
if TYPE_CHECKING:
    from bot.voice.stt import Transcriber, Transcript
    from bot.voice.tts import SentenceSplitter, SpokenClip, Synthesizer

log = logging.getLogger(__name__)


def _model_dir(name: str) -> Path | None:
    if name == "tiny.en":
        return None  # the transcriber's own default
    if name == "base":
        return whisper_base_dir()
    return Path(name).expanduser()


class Speech:
    """The process's one transcriber, one synthesizer and one audio queue."""

    def __init__(self, spec: VoiceSpec) -> None:
        self.spec = spec
        self.queue = AudioQueue(maxsize=spec.queue_size)
        self._loading: list[asyncio.Task[None]] = []

    @functools.cached_property
    def transcriber(self) -> Transcriber | None:
        if not self.spec.stt.enabled:
            return None
        from bot.voice.stt import Transcriber

        stt = self.spec.stt
        return Transcriber(_model_dir(stt.model), compute_type=stt.compute_type,
                           cpu_threads=stt.threads, language=stt.language,
                           vad_filter=stt.vad_filter)

    @functools.cached_property
    def synthesizer(self) -> Synthesizer | None:
        if not self.spec.tts.enabled:
            return None
        from bot.voice.tts import Synthesizer

        voice = Path(self.spec.tts.voice).expanduser() if self.spec.tts.voice else None
        return Synthesizer(voice)

    def preload(self) -> None:
        """Start loading the models in the background: the first voice note should not wait."""
        for model in (self.transcriber, self.synthesizer):
            if model is not None:
                task = asyncio.create_task(model.load())
                task.add_done_callback(_log_load_failure)
                self._loading.append(task)

    async def transcribe(self, data: bytes) -> Transcript | None:
        """None when speech to text is switched off in the config."""
        if self.transcriber is None:
            return None
        return await self.transcriber.transcribe(data)

    def speaker(self) -> Speaker | None:
        return Speaker(self.synthesizer, self.queue) if self.synthesizer is not None else None

    def names_the_bot(self, transcript: str, extra_names: Iterable[str]) -> bool:
        spoken = _squash(transcript)
        names = [name for name in map(_squash, (*self.spec.wake_words, *extra_names)) if name]
        return any(_sounds_like(name, spoken) for name in names)

    async def close(self) -> None:
        for task in self._loading:
            task.cancel()
        await asyncio.gather(*self._loading, return_exceptions=True)
        await self.queue.close()


def _squash(text: str) -> str:
    # "Hearth test bot", "hearth_test_bot" and "@HearthTestBot" all become "hearthtestbot".
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _sounds_like(name: str, spoken: str) -> bool:
    """Whether `spoken` contains `name` or a near miss of it.

    Speech to text spells invented names as it hears them ("Heartbot", "hearth, but" for
    "Hearthbot"), so a name matches when some stretch of the transcript is within about one
    letter of it.
    """
    if name in spoken:
        return True
    if len(name) < 5:
        return False
    for size in (len(name) - 1, len(name), len(name) + 1):
        for start in range(len(spoken) - size + 1):
            if SequenceMatcher(None, name, spoken[start:start + size]).ratio() >= 0.88:
                return True
    return False


def _log_load_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("a voice model did not load: %s", task.exception())


class Speaker:
    """Collects a streaming reply and speaks it.

    Each sentence goes to the shared audio queue the moment it is complete, so by the time the
    text has finished streaming most of the speech is already made; `finish` joins the pieces
    and encodes one voice note.
    """

    def __init__(self, synthesizer: Synthesizer, queue: AudioQueue) -> None:
        from bot.voice.tts import SentenceSplitter

        self._synthesizer = synthesizer
        self._queue = queue
        self._splitter: SentenceSplitter = SentenceSplitter()
        self._pieces: list[Awaitable[bytes]] = []

    async def feed(self, text: str) -> None:
        for sentence in self._splitter.feed(text):
            await self._say(sentence)

    async def _say(self, sentence: str) -> None:
        from bot.voice.tts import speakable

        words = speakable(sentence)
        if words:
            self._pieces.append(await self._queue.submit(
                lambda: self._synthesizer.synthesize_pcm48k(words)))

    async def finish(self) -> SpokenClip | None:
        """The whole reply as one voice note; None when nothing in it could be spoken."""
        from bot.voice.tts import encode_clip

        rest = self._splitter.flush()
        if rest:
            await self._say(rest)
        pcm = b"".join([await piece for piece in self._pieces])
        return await encode_clip(pcm) if pcm else None

    def abandon(self) -> None:
        """The reply failed: nothing will be spoken, and queued sentences need not be made."""
        for piece in self._pieces:
            if isinstance(piece, asyncio.Future):
                piece.cancel()
