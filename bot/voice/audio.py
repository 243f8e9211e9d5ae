"""Audio plumbing: decode whatever a platform sends, resample, encode voice notes.

PCM in this module is signed 16-bit little-endian mono unless a name says
otherwise. Decoding and encoding use PyAV (FFmpeg's libraries, already a
dependency of faster-whisper), so no subprocess is needed; when a PyAV build
lacks the libopus encoder, encoding falls back to pydub driving the ffmpeg
program from `assets.ffmpeg_path()`.

Every function here is CPU-bound and synchronous: call it from a worker thread.
"""

from __future__ import annotations

import base64
import io
import wave
from dataclasses import dataclass
from typing import Literal

import av
import numpy as np
import numpy.typing as npt

from bot.errors import AudioDecodeError, SynthesisError

from .assets import configure_pydub

WHISPER_RATE = 16_000
VOICE_NOTE_RATE = 48_000
VOICE_NOTE_BITRATE = 32_000
"""Opus at 32 kbit/s: what phone apps use for speech, about 4 KB per second."""

_DECODE_ERRORS = (av.FFmpegError, ValueError, OSError, EOFError)

EncodeBackend = Literal["auto", "pyav", "ffmpeg"]


@dataclass(frozen=True, slots=True)
class AudioInfo:
    """What a piece of encoded audio is, as read back from its bytes."""

    container: str
    codec: str
    sample_rate: int
    channels: int
    duration: float


def decode_to_pcm16k(data: bytes) -> npt.NDArray[np.float32]:
    """Decode any audio container FFmpeg knows (OGG/Opus, MP3, M4A, WAV, WebM…) to
    16 kHz mono float32 samples in [-1, 1], the input faster-whisper expects.

    Raises AudioDecodeError for input that is empty, corrupt or has no audio stream.
    """
    samples = _decode(data, rate=WHISPER_RATE)
    # Lossy codecs overshoot full scale by a hair; keep the promised range.
    return np.clip(samples, -1.0, 1.0, out=samples)


def probe(data: bytes) -> AudioInfo:
    """Container, codec, native rate, channels and exact duration of encoded audio.

    The duration is counted from decoded samples because OGG headers only
    carry an estimate that includes the encoder's pre-skip.
    """
    if not data:
        raise AudioDecodeError("empty audio payload")
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate
            frames = sum(frame.samples for frame in container.decode(stream))
            return AudioInfo(
                container=container.format.name,
                codec=stream.codec_context.codec.canonical_name,
                sample_rate=rate,
                channels=stream.codec_context.layout.nb_channels,
                duration=frames / rate if rate else 0.0,
            )
    except IndexError:
        raise AudioDecodeError("no audio stream in payload") from None
    except _DECODE_ERRORS as exc:
        raise AudioDecodeError(f"cannot read audio: {exc}") from exc


def resample_to_48k(pcm_int16: bytes, rate: int) -> bytes:
    """Resample mono 16-bit PCM from `rate` to 48 kHz, the rate Opus voice notes use."""
    if rate == VOICE_NOTE_RATE or not pcm_int16:
        return bytes(pcm_int16)
    frame = _s16_frame(pcm_int16, rate)
    resampler = av.AudioResampler(format="s16", layout="mono", rate=VOICE_NOTE_RATE)
    out = [*resampler.resample(frame), *resampler.resample(None)]
    return b"".join(f.to_ndarray().astype("<i2", copy=False).tobytes() for f in out)


def encode_ogg_opus(
    pcm16_48k_mono: bytes,
    *,
    bitrate: int = VOICE_NOTE_BITRATE,
    backend: EncodeBackend = "auto",
) -> bytes:
    """Encode 48 kHz mono 16-bit PCM as an OGG/Opus voice note.

    `backend="auto"` uses PyAV when its FFmpeg has libopus and the ffmpeg
    program otherwise; the other values force one path (the tests use that).
    """
    if not pcm16_48k_mono:
        raise SynthesisError("nothing to encode: empty PCM")
    if len(pcm16_48k_mono) % 2:
        raise ValueError("16-bit PCM must have an even number of bytes")
    use_pyav = backend == "pyav" or (backend == "auto" and pyav_has_libopus())
    try:
        if use_pyav:
            return _encode_opus_pyav(pcm16_48k_mono, bitrate)
        return _encode_opus_ffmpeg(pcm16_48k_mono, bitrate)
    except (av.FFmpegError, OSError) as exc:
        raise SynthesisError(f"OGG/Opus encoding failed: {exc}") from exc


def pyav_has_libopus() -> bool:
    """Whether this PyAV build can encode Opus (the PyPI wheels can)."""
    try:
        av.Codec("libopus", "w")
    except (av.FFmpegError, ValueError):
        return False
    return True


def duration_seconds(pcm: bytes | npt.NDArray[np.generic], rate: int) -> float:
    """Length of mono PCM: 16-bit bytes, or an array with one sample per element."""
    count = len(pcm) // 2 if isinstance(pcm, bytes | bytearray) else int(pcm.size)
    return count / rate


def waveform(pcm_int16: bytes, samples: int = 256) -> bytes:
    """At most `samples` one-byte peak amplitudes (0-255) for a voice-message preview.

    Discord draws its voice-message bar from such a byte string (base64 in
    the attachment's `waveform`; see `waveform_base64`). Levels are scaled
    to the loudest bucket so quiet speech still shows a shape.
    """
    levels = np.abs(np.frombuffer(pcm_int16, dtype="<i2").astype(np.float32))
    if levels.size == 0 or samples <= 0:
        return b""
    buckets = np.array_split(levels, min(samples, levels.size))
    peaks = np.array([np.max(bucket) for bucket in buckets], dtype=np.float32)
    loudest = float(np.max(peaks))
    if loudest == 0.0:
        return bytes(len(peaks))
    return np.round(peaks * (255.0 / loudest)).astype(np.uint8).tobytes()


def waveform_base64(waveform_bytes: bytes) -> str:
    """The waveform as Discord's attachment field wants it."""
    return base64.b64encode(waveform_bytes).decode("ascii")


def to_wav(pcm_int16: bytes, rate: int) -> bytes:
    """Wrap mono 16-bit PCM in a WAV header (for local playback and tests)."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm_int16)
    return buffer.getvalue()


def _decode(data: bytes, *, rate: int) -> npt.NDArray[np.float32]:
    if not data:
        raise AudioDecodeError("empty audio payload")
    try:
        chunks = _decode_chunks(data, rate=rate)
    except IndexError:
        raise AudioDecodeError("no audio stream in payload") from None
    except _DECODE_ERRORS as exc:
        raise AudioDecodeError(f"cannot decode audio: {exc}") from exc
    if not chunks:
        raise AudioDecodeError("audio stream decoded to no samples")
    return np.concatenate(chunks).astype(np.float32, copy=False)


def _decode_chunks(data: bytes, *, rate: int) -> list[npt.NDArray[np.float32]]:
    # Channels are averaged here rather than by FFmpeg's downmix, which adds
    # 3 dB to a stereo file and can push speech past full scale. Reading from
    # memory matters too: FFmpeg then refuses playlist formats (HLS, concat)
    # that would open files or URLs named inside a hostile "voice note".
    resampler = av.AudioResampler(format="fltp", rate=rate)
    chunks: list[npt.NDArray[np.float32]] = []
    damaged = 0
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.audio[0]
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.InvalidDataError:
                # A damaged packet in an otherwise good note costs a few
                # milliseconds of audio, not the whole message.
                damaged += 1
                continue
            for frame in frames:
                chunks.extend(_mono(f) for f in resampler.resample(frame))
        chunks.extend(_mono(f) for f in resampler.resample(None))
    if damaged and not chunks:
        raise AudioDecodeError(f"all {damaged} audio packets were damaged")
    return [chunk for chunk in chunks if chunk.size]


def _mono(frame: av.AudioFrame) -> npt.NDArray[np.float32]:
    planes = np.asarray(frame.to_ndarray(), dtype=np.float32)
    if planes.shape[0] == 1:
        return planes.reshape(-1)
    return np.asarray(planes.mean(axis=0), dtype=np.float32)


def _s16_frame(pcm_int16: bytes, rate: int) -> av.AudioFrame:
    if len(pcm_int16) % 2:
        raise ValueError("16-bit PCM must have an even number of bytes")
    samples = np.frombuffer(pcm_int16, dtype="<i2").reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
    frame.sample_rate = rate
    return frame


def _encode_opus_pyav(pcm: bytes, bitrate: int) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="ogg") as container:
        stream = container.add_stream(
            "libopus", rate=VOICE_NOTE_RATE, layout="mono", options={"application": "voip"}
        )
        stream.bit_rate = bitrate
        for packet in stream.encode(_s16_frame(pcm, VOICE_NOTE_RATE)):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def _encode_opus_ffmpeg(pcm: bytes, bitrate: int) -> bytes:
    configure_pydub()
    from pydub import AudioSegment  # type: ignore[import-untyped]
    from pydub.exceptions import CouldntEncodeError  # type: ignore[import-untyped]

    segment = AudioSegment(data=pcm, sample_width=2, frame_rate=VOICE_NOTE_RATE, channels=1)
    buffer = io.BytesIO()
    try:
        segment.export(
            buffer,
            format="ogg",
            codec="libopus",
            bitrate=f"{bitrate // 1000}k",
            parameters=["-application", "voip"],
        )
    except CouldntEncodeError as exc:
        raise SynthesisError(f"ffmpeg could not encode OGG/Opus: {exc}") from exc
    return buffer.getvalue()
