"""The running service's control socket: `hearthbot status`, `model use` and `warm` ask it.

A unix socket in a private folder of the data directory (0700, the socket itself 0600), so
only the user who runs the service can reach it; on Linux the peer's uid is checked as well.
One JSON object per line each way: the request names an `op`, the answer carries `ok` and
either the result or an `error` sentence.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
import struct
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Json = dict[str, Any]
Handler = Callable[[Json], Awaitable[Json]]

SOCKET_NAME = "control.sock"
# sun_path holds 108 bytes on Linux and 104 on macOS, the terminating NUL included.
MAX_SOCKET_PATH = 100
REQUEST_LIMIT = 64 * 1024


class ServiceNotRunning(Exception):
    """Nothing answers on the control socket."""


def socket_path(data_dir: Path) -> Path:
    """Where the service listens: `<data dir>/run/control.sock`, or, when that path is too
    long for a unix socket, a private folder in the temporary directory named after it."""
    folder = data_dir.expanduser().absolute() / "run"
    if len(str(folder / SOCKET_NAME)) <= MAX_SOCKET_PATH:
        return folder / SOCKET_NAME
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"hearthbot-{os.getuid()}" / f"{digest}.sock"


def _private_folder(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = folder.stat()
    if info.st_uid != os.getuid():
        raise PermissionError(f"{folder} belongs to another user; refusing to listen there")
    if info.st_mode & 0o077:
        folder.chmod(0o700)


async def serve(path: Path, handlers: Mapping[str, Handler]) -> asyncio.Server | None:
    """Listen on `path`; None (and a log line) when another service already answers there."""
    _private_folder(path.parent)
    if _present(path):
        try:
            await request(path, {"op": "ping"}, within=2.0)
        except ServiceNotRunning:
            remove(path)  # left behind by a service that did not stop cleanly
        else:
            log.error("another hearthbot answers on %s (same data directory); this one "
                      "serves no control socket", path)
            return None

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if not _same_user(writer):
                log.warning("control socket: refused a connection from another user")
                return
            line = await reader.readline()
            if len(line) > REQUEST_LIMIT:
                return
            answer = await _dispatch(line, handlers)
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_unix_server(on_client, path=str(path), limit=REQUEST_LIMIT)
    os.chmod(path, 0o600)  # the folder is private already; this says so on the socket too
    log.info("control socket at %s", path)
    return server


def _present(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


async def _dispatch(line: bytes, handlers: Mapping[str, Handler]) -> Json:
    try:
        body = json.loads(line)
    except ValueError:
        return {"ok": False, "error": "the request was not JSON"}
    op = body.get("op") if isinstance(body, dict) else None
    if op == "ping":
        return {"ok": True}
    handler = handlers.get(op) if isinstance(op, str) else None
    if handler is None:
        return {"ok": False, "error": f"unknown request {op!r}"}
    try:
        return {"ok": True, **await handler(body)}
    except Exception as exc:  # the caller gets one sentence; the log has the rest
        log.exception("control request %s failed", op)
        message = getattr(exc, "user_message", None) or "the request failed; see the log"
        return {"ok": False, "error": message}


def _same_user(writer: asyncio.StreamWriter) -> bool:
    sock = writer.get_extra_info("socket")
    option = getattr(socket, "SO_PEERCRED", None)
    if sock is None or option is None:
        return True  # the socket's 0600 mode is the guard there
    raw = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", raw)
    return bool(uid == os.getuid())


async def request(path: Path, body: Json, within: float = 30.0) -> Json:
    """Send one request to the running service and return its answer."""
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_unix_connection(str(path), limit=REQUEST_LIMIT)
            try:
                writer.write(json.dumps(body).encode() + b"\n")
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise ServiceNotRunning(f"nothing answers on {path}") from exc
    except TimeoutError as exc:
        raise ServiceNotRunning(f"{path} did not answer within {within:g} s") from exc
    if not line:
        raise ServiceNotRunning(f"{path} closed without answering")
    answer = json.loads(line)
    if not isinstance(answer, dict):
        raise ServiceNotRunning(f"{path} answered {line[:100]!r}")
    return answer
