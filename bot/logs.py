"""Logging set-up: readable lines, rotated files, and no secret ever written out."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from collections.abc import Iterable
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class RedactingFormatter(logging.Formatter):
    """Replaces every known secret in the finished line, tracebacks included.

    Redacting the formatted text rather than the message catches secrets that arrive through
    arguments, exceptions and third-party loggers (HTTP clients log URLs with bot tokens).
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__(FORMAT)
        self._secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return text


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
