"""The process-wide audio queue: one synthesis at a time.

* `await queue.submit(job)` puts a synthesis job (a no-argument coroutine
  function) on one bounded FIFO and returns a future for its result. A
  single worker task runs the jobs one after another, so the CPU-heavy voice
  never runs twice at once. When the queue is full, `submit` waits: that is
  the back-pressure that keeps a chatty model from piling up audio.
  Submit every sentence of a reply as it completes, then await the futures
  in order.

Turn order within a chat is the chat lane's job (adapters/lanes.py), not the queue's.

Create one `AudioQueue` per process (inside the running event loop), share
it, and `await queue.close()` on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from bot.errors import AudioQueueClosed

T = TypeVar("T")

Job = Callable[[], Awaitable[T]]


@dataclass(slots=True)
class _Entry:
    job: Callable[[], Awaitable[Any]]
    result: asyncio.Future[Any]


class AudioQueue:
    """Serialises audio jobs process-wide, with back-pressure."""

    def __init__(self, maxsize: int = 16) -> None:
        if maxsize < 1:
            raise ValueError("the audio queue must be bounded: maxsize >= 1")
        self._jobs: asyncio.Queue[_Entry] = asyncio.Queue(maxsize)
        self._worker: asyncio.Task[None] | None = None
        self._closed = False

    async def submit(self, job: Job[T]) -> asyncio.Future[T]:
        """Queue `job` (waiting while the queue is full); the future resolves to its result.

        Cancelling the returned future before the job starts skips the job.
        """
        if self._closed:
            raise AudioQueueClosed("the audio queue is closed")
        self._ensure_worker()
        result: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._jobs.put(_Entry(job, result))
        return result

    @property
    def pending(self) -> int:
        """Jobs waiting to start (the running one excluded)."""
        return self._jobs.qsize()

    async def close(self) -> None:
        """Stop the worker; jobs that have not finished get their futures cancelled."""
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        while not self._jobs.empty():
            self._jobs.get_nowait().result.cancel()

    async def __aenter__(self) -> AudioQueue:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _ensure_worker(self) -> None:
        # Started lazily so the queue can be built before the loop runs.
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(
                self._work(), name="voice-audio-queue"
            )

    async def _work(self) -> None:
        while True:
            entry = await self._jobs.get()
            try:
                await self._run_one(entry)
            finally:
                self._jobs.task_done()

    @staticmethod
    async def _run_one(entry: _Entry) -> None:
        if entry.result.done():
            return  # the caller gave up before the job started
        try:
            value = await entry.job()
        except asyncio.CancelledError:
            entry.result.cancel()
            raise
        except Exception as exc:
            if not entry.result.done():
                entry.result.set_exception(exc)
            return
        if not entry.result.done():
            entry.result.set_result(value)
