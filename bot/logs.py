"""Logging set-up: readable lines, rotated files, and no secret ever written out."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote, quote_plus

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


# Characters an HTTP client leaves unescaped in a URL path (RFC 3986 sub-delimiters, ":", "@").
_PATH_SAFE = "/!$&'()*+,;=:@~"
# Shorter values are not secrets worth the garbled lines their redaction would cause.
MIN_SECRET_LENGTH = 6


def secret_forms(secret: str) -> set[str]:
    """Every form in which `secret` can reach a log line: as it is, and URL-encoded the ways
    HTTP clients encode a path or a query (they log request URLs, with tokens in them)."""
    forms = {secret, quote(secret, safe=""), quote(secret, safe=_PATH_SAFE),
             quote_plus(secret, safe="")}
    return {form for form in forms if len(form) >= MIN_SECRET_LENGTH}


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every occurrence of every secret replaced by "[redacted]".

    All occurrences are found in the original text first and overlapping or touching ones are
    merged, so a secret inside another, or two secrets sharing characters, leave no fragment
    of either behind.
    """
    spans: list[tuple[int, int]] = []
    for secret in secrets:
        start = text.find(secret)
        while start != -1:
            spans.append((start, start + len(secret)))
            start = text.find(secret, start + 1)
    if not spans:
        return text
    spans.sort()
    pieces: list[str] = []
    kept_until = 0
    span_start, span_end = spans[0]
    for start, end in spans[1:]:
        if start <= span_end:
            span_end = max(span_end, end)
            continue
        pieces += [text[kept_until:span_start], "[redacted]"]
        kept_until = span_end
        span_start, span_end = start, end
    pieces += [text[kept_until:span_start], "[redacted]", text[span_end:]]
    return "".join(pieces)


class RedactingFormatter(logging.Formatter):
    """Replaces every known secret in the finished line, tracebacks included.

    Redacting the formatted text rather than the message catches secrets that arrive through
    arguments, exceptions and third-party loggers (HTTP clients log URLs with bot tokens).
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__(FORMAT)
        self._secrets = sorted({form for s in secrets for form in secret_forms(s)},
                               key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), self._secrets)


def setup_logging(level: str, secrets: Iterable[str], log_dir: Path | None,
                  to_stderr: bool) -> None:
    formatter = RedactingFormatter(secrets)
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(level.upper())
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.handlers.RotatingFileHandler(
            log_dir / "hearthbot.log", maxBytes=10_000_000, backupCount=5, encoding="utf-8")
        file_handler.setFormatter(formatter)
        root.addHandler(file_handler)
    if to_stderr:
        stream_handler = logging.StreamHandler(sys.stderr)
        stream_handler.setFormatter(formatter)
        root.addHandler(stream_handler)
    # Request-by-request lines from HTTP clients are noise unless debugging; when they are on,
    # the redaction above keeps the bot tokens in their URLs out of the file.
    quiet = logging.DEBUG if level.lower() == "debug" else logging.WARNING
    for noisy in ("httpx", "httpcore", "aiosqlite", "alembic"):
        logging.getLogger(noisy).setLevel(quiet)
