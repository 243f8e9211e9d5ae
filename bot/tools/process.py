"""Run a child process with a time limit and capped output, without ever waiting on a pipe.

asyncio's own subprocess waits for every pipe to close before `wait()` returns, so a
grandchild that keeps stdout open would hold a tool call hostage. Here the exit is watched
directly (a pidfd on Linux, a waiting thread elsewhere), the pipes are read only while the
child lives plus a final drain, and on timeout, output overflow or cancellation the child's
whole process group is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Finished:
    returncode: int | None  # None when it was killed here (time limit or output cap)
    stdout: bytes
    stderr: bytes
    timed_out: bool
    truncated: bool  # more output than the cap: the child was stopped


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def run_process(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    seconds: float,
    output_bytes: int,
    stdin: bytes = b"",
    cwd: Path | None = None,
    pass_fds: Sequence[int] = (),
    settle_seconds: float = 0.0,
) -> Finished:
    """Run `argv` to the end or to `seconds`, whichever comes first.

    With `settle_seconds`, wait that long at most after the exit for every other holder of the
    output pipes to let go too: for a sandbox, whose processes all die with it, that is the
    moment everything it started is gone.
    """
    loop = asyncio.get_running_loop()
    # Popen only forks and execs here; the waiting is done below without blocking the loop.
    proc = subprocess.Popen(  # noqa: ASYNC220
        list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=dict(env), cwd=cwd, start_new_session=True, pass_fds=tuple(pass_fds),
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    outputs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    closed = {fd: loop.create_future() for fd in outputs}
    room = [output_bytes]
    overflow = loop.create_future()
    exited = _exit_future(loop, proc)
    pending_input = memoryview(stdin)
    stdin_fd = proc.stdin.fileno()

    def read(fd: int) -> None:
        for _ in range(16):  # then let the loop breathe; the reader stays registered
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                loop.remove_reader(fd)
                if not closed[fd].done():
                    closed[fd].set_result(None)
                return
            kept = chunk[: room[0]]
            outputs[fd] += kept
            room[0] -= len(kept)
            if len(kept) < len(chunk) and not overflow.done():
                overflow.set_result(None)

    def write() -> None:
        nonlocal pending_input
        try:
            sent = os.write(stdin_fd, pending_input[:65536])
        except BlockingIOError:
            return
        except OSError:  # the child closed its stdin: it did not want the rest
            sent = len(pending_input)
        pending_input = pending_input[sent:]
        if not pending_input:
            stop_writing()

    def stop_writing() -> None:
        if writing:
            writing.clear()
            loop.remove_writer(stdin_fd)
        proc.stdin.close()  # type: ignore[union-attr]

    for fd in outputs:
        os.set_blocking(fd, False)
        loop.add_reader(fd, read, fd)
    writing: list[bool] = []
    if pending_input:
        os.set_blocking(stdin_fd, False)
        loop.add_writer(stdin_fd, write)
        writing.append(True)
    else:
        proc.stdin.close()

    timed_out = killed = False
    try:
        done, _ = await asyncio.wait({exited, overflow}, timeout=seconds,
                                     return_when=asyncio.FIRST_COMPLETED)
        if exited not in done:
            timed_out = not done
            killed = True
            kill_group(proc.pid)
            await exited
        if settle_seconds > 0:
            await asyncio.wait(closed.values(), timeout=settle_seconds)
        for fd in outputs:  # whatever the child wrote just before it ended
            if not closed[fd].done():
                read(fd)
    finally:
        if proc.poll() is None:  # cancelled: nothing may outlive the call
            kill_group(proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        for fd in outputs:
            loop.remove_reader(fd)
        stop_writing()
        proc.stdout.close()
        proc.stderr.close()
        if not exited.done():
            exited.cancel()
        for future in closed.values():
            future.cancel()
    stdout, stderr = (bytes(buffer) for buffer in outputs.values())
    return Finished(returncode=None if killed else proc.returncode, stdout=stdout,
                    stderr=stderr, timed_out=timed_out, truncated=overflow.done())


def _exit_future(loop: asyncio.AbstractEventLoop,
                 proc: subprocess.Popen[bytes]) -> asyncio.Future[int]:
    """Resolves with the exit status once the child has ended (and has been reaped)."""
    future: asyncio.Future[int] = loop.create_future()
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is not None:
        try:
            pidfd: int = pidfd_open(proc.pid)
        except OSError:
            pidfd = -1
        if pidfd >= 0:
            def ended() -> None:
                loop.remove_reader(pidfd)
                os.close(pidfd)
                if not future.done():
                    future.set_result(proc.wait())

            loop.add_reader(pidfd, ended)

            def forget(_: asyncio.Future[int]) -> None:
                if future.cancelled():
                    loop.remove_reader(pidfd)
                    with contextlib.suppress(OSError):
                        os.close(pidfd)

            future.add_done_callback(forget)
            return future
    waiting = loop.run_in_executor(None, proc.wait)

    def relay(waited: asyncio.Future[int]) -> None:
        if not future.done():
            future.set_result(waited.result())

    waiting.add_done_callback(relay)
    return future
