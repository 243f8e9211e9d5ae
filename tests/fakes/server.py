"""Start and stop for every fake server: one aiohttp app on 127.0.0.1, on a free port."""

from __future__ import annotations

from types import TracebackType
from typing import Any, ClassVar, Self

from aiohttp import web


class FakeServer:
    """Subclasses add their routes in `build_app` and may release long requests in `closing`."""

    # Passed to aiohttp's AppRunner. handler_cancellation stops a handler as soon as its client
    # hangs up; a short grace period bounds stop() for a handler that outlives cancellation.
    runner_options: ClassVar[dict[str, Any]] = {"handler_cancellation": True,
                                                "shutdown_timeout": 0.5}

    def __init__(self) -> None:
        self.port = 0
        self._runner: web.AppRunner | None = None

    def build_app(self) -> web.Application:
        raise NotImplementedError

    async def closing(self) -> None:
        """Before the server stops: end what would hold cleanup up (parked polls, streams)."""

    @property
    def started(self) -> bool:
        return self._runner is not None

    async def start(self, port: int = 0) -> None:
        runner = web.AppRunner(self.build_app(), handle_signals=False, access_log=None,
                               **self.runner_options)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is None:
            return
        await self.closing()
        await self._runner.cleanup()
        self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()
