"""Delivery errors, the same for every platform; each adapter translates its library's own."""

from __future__ import annotations


class DeliveryError(Exception):
    """The platform did not take a message."""


class RateLimited(DeliveryError):
    def __init__(self, retry_after: float, detail: str = "") -> None:
        super().__init__(f"rate limited for {retry_after:g} s {detail}".strip())
        self.retry_after = retry_after


class PlatformUnavailable(DeliveryError):
    """A network error or a server error: worth retrying after a pause."""


class FormattingRejected(DeliveryError):
    """The platform could not parse our formatting; the plain text will do."""


class AdapterStartError(Exception):
    """The adapter cannot start (bad token, missing permission); the message says what to fix."""
