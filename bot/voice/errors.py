"""Errors raised by the voice subpackage.

Every error carries `user_message`: one plain sentence that is safe to show the
person in the chat. `str(error)` holds the detail for the log.
"""

from __future__ import annotations


class VoiceError(Exception):
    """Base class for every voice failure."""

    default_user_message = "Something went wrong with voice on my side."

    def __init__(self, detail: str = "", *, user_message: str | None = None) -> None:
        super().__init__(detail or self.default_user_message)
        self.user_message: str = user_message or self.default_user_message


class AudioDecodeError(VoiceError):
    """The bytes could not be decoded as audio (empty, corrupt or not audio at all)."""

    default_user_message = "I couldn't make out that voice note."


class TranscriptionError(VoiceError):
    """The speech-to-text model failed on audio that decoded fine."""

    default_user_message = "I couldn't transcribe that voice note."


class SynthesisError(VoiceError):
    """Text could not be turned into a voice clip."""

    default_user_message = "I couldn't read that reply aloud, so it is in text instead."


class VoiceModelMissing(VoiceError):
    """Weights or a helper binary that voice needs are not installed."""

    default_user_message = "Voice isn't set up on this bot yet."

    def __init__(self, what: str, install_hint: str) -> None:
        super().__init__(f"{what} not found; {install_hint}")
        self.what = what
        self.install_hint = install_hint
