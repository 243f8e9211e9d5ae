"""One error tree for the whole service.

Every error carries two texts: `user_message`, one plain sentence that is safe to show the
person chatting (or typing a command), and `str(error)`, the detail for the log. Each boundary
has its own branch, and each adapter or backend translates its library's errors into that
branch at its edge, so nothing above an edge ever catches a library's exception type.
"""

from __future__ import annotations


class HearthbotError(Exception):
    """Base of every error the service raises on purpose."""

    user_message = "Something went wrong on my side. Please try again."

    def __init__(self, detail: str = "", *, user_message: str | None = None) -> None:
        super().__init__(detail or self.user_message)
        if user_message is not None:
            self.user_message = user_message


# --- configuration and storage -------------------------------------------------------------

class ConfigError(HearthbotError):
    """A config problem a person can fix; the message names the key path."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        where = f" at {path}" if path else ""
        super().__init__(f"config error{where}: {problem}")
        self.user_message = str(self)


class StoreError(HearthbotError):
    """The store cannot be opened or migrated; the message says what to do."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, user_message=detail)


class ConfigBinding(HearthbotError):
    """The binding comes from the config file and can only be removed there."""

    def __init__(self, binding_id: int) -> None:
        super().__init__(f"binding {binding_id} comes from the config file",
                         user_message=f"Binding {binding_id} comes from the config file "
                                      "(agents.bindings); remove it there.")
        self.binding_id = binding_id


# --- model backends -------------------------------------------------------------------------

class ProviderError(HearthbotError):
    """A backend failure."""

    user_message = "Something went wrong while talking to the model. Please try again."


class ProviderUnavailable(ProviderError):
    user_message = "The model isn't reachable right now. Please try again in a moment."


class ProviderTimeout(ProviderError):
    user_message = "The model took too long to answer. Please try again."


class StreamInterrupted(ProviderError):
    user_message = "The model stopped in the middle of its reply. Please try again."


class ModelNotFound(ProviderError):
    user_message = "The configured model isn't available. The owner needs to check the setup."


class ContextOverflow(ProviderError):
    user_message = "That was too long for the model to read at once. Try something shorter."


class ModelDoesNotFit(ProviderError):
    """Loading the model would need more memory than the machine has free; it was not loaded.

    `str(error)` is the sentence for the owner, with both figures."""

    user_message = ("The model is too large for the memory free on this machine right now. "
                    "The owner needs to free memory or choose a smaller model.")

    def __init__(self, detail: str, needed_gb: float, available_gb: float) -> None:
        super().__init__(detail)
        self.needed_gb = needed_gb
        self.available_gb = available_gb


# --- voice ----------------------------------------------------------------------------------

class VoiceError(HearthbotError):
    """Base class for every voice failure."""

    user_message = "Something went wrong with voice on my side."


class AudioDecodeError(VoiceError):
    """The bytes could not be decoded as audio (empty, corrupt or not audio at all)."""

    user_message = "I couldn't make out that voice note."


class TranscriptionError(VoiceError):
    """The speech-to-text model failed on audio that decoded fine."""

    user_message = "I couldn't transcribe that voice note."


class SynthesisError(VoiceError):
    """Text could not be turned into a voice clip."""

    user_message = "I couldn't read that reply aloud, so it is in text instead."


class VoiceModelMissing(VoiceError):
    """Weights or a helper binary that voice needs are not installed."""

    user_message = "Voice isn't set up on this bot yet."

    def __init__(self, what: str, install_hint: str) -> None:
        super().__init__(f"{what} not found; {install_hint}")
        self.what = what
        self.install_hint = install_hint


class AudioQueueClosed(VoiceError):
    """Audio work was submitted after the queue was closed (the service is stopping)."""


# --- images ---------------------------------------------------------------------------------

class ImageError(HearthbotError):
    """An inbound image that cannot go to the model; the caption is still answered."""

    user_message = "I couldn't open that image."


class ImageTooLarge(ImageError):
    """The file is larger than images.max_bytes; refused before it is downloaded."""

    user_message = "That image is too large for me to look at."


class ImageUnreadable(ImageError):
    """The bytes are not an image Pillow can decode (corrupt, truncated or another format)."""

    user_message = "I couldn't open that image; the file may be damaged or not an image."


# --- tools ----------------------------------------------------------------------------------

class ToolError(HearthbotError):
    """A tool call that did not produce a result.

    `str(error)` is the sentence the *model* reads as the tool's result, so it says plainly what
    happened and, where it can, what to do instead. It never holds a stack trace or a secret.
    """

    user_message = "A tool I tried to use did not work."

    def __init__(self, message: str, *, user_message: str | None = None) -> None:
        super().__init__(message, user_message=user_message)


class ToolRefused(ToolError):
    """The policy, the gate or a confinement rule refused the call; nothing was run."""

    user_message = "I'm not allowed to do that here."


class ToolFailed(ToolError):
    """The call was allowed and ran, or tried to, and failed (bad arguments, missing file...)."""


class SandboxUnavailable(ToolRefused):
    """No kernel confinement is available on this machine, so code is not run at all."""

    user_message = ("Running code isn't available on this machine, because it cannot be "
                    "safely confined here.")

    def __init__(self, detail: str) -> None:
        super().__init__(
            "Code cannot be run here: this machine offers no way to confine it "
            f"({detail}). Answer without running code.",
            user_message=self.user_message,
        )
        self.detail = detail


# --- chat platforms -------------------------------------------------------------------------

class DeliveryError(HearthbotError):
    """The platform did not take a message."""


class RateLimited(DeliveryError):
    def __init__(self, retry_after: float, detail: str = "") -> None:
        super().__init__(f"rate limited for {retry_after:g} s {detail}".strip())
        self.retry_after = retry_after


class PlatformUnavailable(DeliveryError):
    """A network error or a server error: worth retrying after a pause."""


class FormattingRejected(DeliveryError):
    """The platform could not parse our formatting; the plain text will do."""


class NotModified(DeliveryError):
    """An edit that would not change the message; the message already shows that text."""


class AdapterStartError(HearthbotError):
    """The adapter cannot start (bad token, missing permission); the message says what to fix.

    The service exits on this one: a person must act before the platform can work.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(detail, user_message=detail)


# --- the gateway port -----------------------------------------------------------------------

class WebRefused(AdapterStartError):
    """The web pages cannot be served as configured (an exposed address, a port in use); the
    message is one sentence saying what to change."""
