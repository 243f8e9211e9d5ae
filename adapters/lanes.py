"""One lane per chat: messages in a chat are answered in order, different chats at once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Job = Callable[[], Awaitable[object]]


class ChatLanes:
    """Runs jobs one after another per chat key, concurrently across keys.

    A lane's worker exits when its queue runs dry, so idle chats cost nothing.
    """

    def __init__(self) -> None:
        self._queues: dict[str, asyncio.Queue[Job]] = {}
        self._workers: set[asyncio.Task[None]] = set()

    def submit(self, key: str, job: Job) -> None:
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = asyncio.Queue()
            worker = asyncio.create_task(self._drain(key, queue), name=f"lane {key}")
            self._workers.add(worker)
            worker.add_done_callback(self._workers.discard)
        queue.put_nowait(job)

    async def _drain(self, key: str, queue: asyncio.Queue[Job]) -> None:
        while True:
            try:
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                del self._queues[key]
                return
            try:
                await job()
            except Exception:
                # One failed answer must not stop the chat's later messages.
                log.exception("a job in chat %s failed", key)

    async def idle(self) -> None:
        """Wait until every submitted job has finished."""
        while self._workers:
            await asyncio.gather(*list(self._workers), return_exceptions=True)

    async def close(self) -> None:
        """Stop all lanes; unfinished messages stay in the inbox and are resumed at next start."""
        for worker in list(self._workers):
            worker.cancel()
        for worker in list(self._workers):
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        self._queues.clear()
