"""Shaping message text: splitting a long reply into platform-sized messages without breaking
code fences, and tidying what is left of a message once the bot's name is taken out."""

from __future__ import annotations

import re

_FENCE = re.compile(r"^\s*(```+|~~~+)(.*)$")


def split_message(text: str, limit: int) -> list[str]:
    """Cut `text` into pieces of at most `limit` characters.

    Cuts prefer a paragraph break, then a line break, then a space. A cut inside a fenced code
    block closes the fence at the end of one piece and reopens it, with its language, at the
    start of the next, so every piece renders on its own.
    """
    if len(text) <= limit:
        return [text]
    pieces: list[str] = []
    reopen = ""
    rest = text
    while rest:
        budget = limit - len(reopen)
        if len(rest) <= budget:
            pieces.append(reopen + rest)
            break
        # Reserve room for a closing fence in case the cut lands inside a block.
        cut = _cut_point(rest, budget - 4)
        head, rest = rest[:cut], rest[cut:].lstrip("\n")
        open_fence = _open_fence(reopen + head)
        piece = reopen + head.rstrip()
        if open_fence is not None:
            piece += "\n" + open_fence[0]
            reopen = open_fence[0] + open_fence[1] + "\n"
        else:
            reopen = ""
        pieces.append(piece)
    return pieces


def without_gaps(text: str) -> str:
    """A one-line message loses the double spaces a removed mention leaves; a message of
    several lines keeps its layout (it may hold code) and is only trimmed."""
    return " ".join(text.split()) if "\n" not in text else text.strip()


def _cut_point(text: str, budget: int) -> int:
    window = text[:budget]
    for separator in ("\n\n", "\n", " "):
        position = window.rfind(separator)
        if position > budget // 2:
            return position + len(separator)
    return budget


def _open_fence(text: str) -> tuple[str, str] | None:
    """The (marker, info string) of a fence left open at the end of `text`, if any."""
    open_marker: tuple[str, str] | None = None
    for line in text.split("\n"):
        match = _FENCE.match(line)
        if match is None:
            continue
        marker, info = match.group(1), match.group(2).strip()
        if open_marker is None:
            open_marker = (marker, info)
        else:
            opener = open_marker[0]
            # Only a bare fence of the same character, at least as long, closes a block.
            if marker[0] == opener[0] and len(marker) >= len(opener) and not info:
                open_marker = None
    return open_marker
