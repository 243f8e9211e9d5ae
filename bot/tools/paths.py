"""Model-supplied paths, confined to a persona's workspace.

A path from the model is a request, not a location. It must be relative, must not climb
(`..`) or start at a home directory (`~`), and must still lie inside the workspace after every
symlink is followed. What it names must be a regular file of bounded size: directories,
devices, FIFOs and sockets are refused before they are opened (opening a FIFO blocks, opening
a device can have side effects).

The check and the open are two steps, so the open re-checks: `O_NOFOLLOW` refuses a final
component swapped for a symlink in between, `fstat` must show the same regular file that was
checked, and on Linux the opened descriptor's real path (`/proc/self/fd/N`) must still lie in
the workspace, which also catches a directory higher up swapped for a symlink.
"""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from bot.errors import ToolFailed, ToolRefused

_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
               | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0))


def workspace_root(workspace: Path) -> Path:
    """The workspace with its own symlinks resolved; ToolFailed when it does not exist."""
    try:
        root = workspace.resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError):
        raise ToolFailed("This workspace has no files yet.") from None
    if not root.is_dir():
        raise ToolFailed("This workspace has no files yet.")
    return root


def resolve_in_workspace(workspace: Path, requested: str) -> Path:
    """The real path `requested` names inside `workspace`, or a ToolError saying why not."""
    if not requested.strip():
        raise ToolFailed("Give a file path relative to the workspace, e.g. notes/todo.md.")
    if "\x00" in requested:
        raise ToolRefused("That path contains a NUL character and was refused.")
    if requested.startswith("~"):
        raise ToolRefused(f"Refused {requested!r}: paths starting with ~ are not allowed. "
                          "Give a path relative to the workspace.")
    pure = PurePosixPath(requested)
    if pure.is_absolute() or (sys.platform == "win32" and Path(requested).is_absolute()):
        raise ToolRefused(f"Refused {requested!r}: absolute paths are not allowed. "
                          "Give a path relative to the workspace.")
    if ".." in pure.parts:
        raise ToolRefused(f"Refused {requested!r}: '..' may not be used to leave the "
                          "workspace.")
    root = workspace_root(workspace)
    try:
        target = (root / pure).resolve(strict=True)
    except FileNotFoundError:
        raise ToolFailed(f"There is no file {requested!r} in the workspace.") from None
    except NotADirectoryError:
        raise ToolFailed(f"There is no file {requested!r} in the workspace.") from None
    except RuntimeError:  # a symlink loop
        raise ToolRefused(f"Refused {requested!r}: it is a symlink loop.") from None
    except OSError as exc:
        raise ToolFailed(f"Cannot open {requested!r}: {exc.strerror}.") from None
    if not _inside(target, root):
        raise ToolRefused(f"Refused {requested!r}: it is a link that leads outside the "
                          "workspace.")
    return target


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def _kind(mode: int) -> str | None:
    """Why a file of this mode cannot be read, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    return "not a regular file"


@dataclass(frozen=True)
class FileContent:
    path: str  # relative to the workspace, as shown to the model
    data: bytes
    size: int  # of the whole file
    truncated: bool


def read_workspace_file(workspace: Path, requested: str, *, max_bytes: int,
                        max_file_bytes: int) -> FileContent:
    """Read at most `max_bytes` of a regular file inside the workspace."""
    root = workspace_root(workspace)
    target = resolve_in_workspace(workspace, requested)
    shown = target.relative_to(root).as_posix()
    checked = os.stat(target, follow_symlinks=False)
    if (why := _kind(checked.st_mode)) is not None:
        raise ToolRefused(f"Refused {shown!r}: it is {why}, not a file that can be read.")
    if checked.st_size > max_file_bytes:
        raise ToolRefused(f"Refused {shown!r}: it is {checked.st_size} bytes, over the "
                          f"{max_file_bytes}-byte limit for reading files.")
    try:
        fd = os.open(target, _OPEN_FLAGS)
    except OSError as exc:
        raise ToolRefused(f"Refused {shown!r}: it changed while being opened "
                          f"({exc.strerror}).") from None
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (checked.st_dev, checked.st_ino) \
                or not stat.S_ISREG(opened.st_mode):
            raise ToolRefused(f"Refused {shown!r}: it changed while being opened.")
        real = _descriptor_path(fd)
        if real is not None and not _inside(real, root):
            raise ToolRefused(f"Refused {shown!r}: it leads outside the workspace.")
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        remaining = max_bytes
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        truncated = opened.st_size > len(data) or (remaining == 0 and os.read(fd, 1) != b"")
    finally:
        os.close(fd)
    return FileContent(path=shown, data=data, size=max(opened.st_size, len(data)),
                       truncated=truncated)


def _descriptor_path(fd: int) -> Path | None:
    """The path the kernel has for an open descriptor, where the platform tells it."""
    if sys.platform.startswith("linux"):
        try:
            return Path(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            return None
    return None
