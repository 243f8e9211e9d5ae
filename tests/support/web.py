"""The gateway port running against a fake model, and clients that sign in to it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from bot.config import Config
from bot.service import Service, open_service
from bot.web.server import WebServer, sign_in_link
from tests.fakes.llm_backends import FakeOllama
from tests.support.helpers import make_config

T = TypeVar("T")
CSRF = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


def web_config(data_dir: Path, fake: FakeOllama, *, web: dict[str, Any] | None = None,
               **gateway: Any) -> Config:
    provider = {"type": "ollama", "base_url": fake.base_url, "first_token_timeout": 5,
                "read_timeout": 5,
                "models": [{"id": fake.models[0], "context_window": 8192, "max_tokens": 256}]}
    return make_config(data_dir, gateway={"providers": {"ollama": provider}, "port": 0,
                                          "web": web or {}, **gateway},
                       agents={"default": {"active_model": f"ollama/{fake.models[0]}"}})


@dataclass
class WebRunning:
    service: Service
    server: WebServer
    fake: FakeOllama

    @property
    def url(self) -> str:
        return self.server.url

    async def link(self) -> str:
        return await sign_in_link(self.service.config, self.service.store, self.server.port)


@contextlib.asynccontextmanager
async def serving(config: Config, fake: FakeOllama, *,
                  voice: bool = False) -> AsyncIterator[WebRunning]:
    async with open_service(config, voice=voice) as service:
        server = WebServer(service)
        task = asyncio.create_task(server.serve())
        ready = asyncio.create_task(server.ready.wait())
        await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if task.done():
            task.result()
        try:
            yield WebRunning(service, server, fake)
        finally:
            await server.stop()
            await task


def client() -> aiohttp.ClientSession:
    # Cookies set by 127.0.0.1 are kept only by an "unsafe" jar (aiohttp skips IP hosts).
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def sign_in(running: WebRunning, session: aiohttp.ClientSession) -> str:
    """Spend a fresh link; returns the CSRF token the chat page carries."""
    async with session.get(await running.link(), allow_redirects=False) as response:
        assert response.status == 303, await response.text()
    async with session.get(f"{running.url}/chat") as page:
        assert page.status == 200
        found = CSRF.search(await page.text())
    assert found is not None
    return found.group(1)


async def events(response: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    """Every server-sent event of a response, in order."""
    found: list[dict[str, Any]] = []
    async for line in response.content:
        text = line.decode().strip()
        if text.startswith("data: ") and text != "data: [DONE]":
            found.append(json.loads(text[6:]))
    return found


class LoopThread:
    """An event loop in a thread of its own, for tests that block (a browser driver)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)
        self.loop.close()


@contextlib.contextmanager
def serving_in_a_thread(config_for: Any, *, voice: bool = False,
                        ) -> Iterator[tuple[LoopThread, WebRunning]]:
    """The fake model and the service in a loop of their own; `config_for(fake)` makes the
    config once the fake model's address is known."""
    thread = LoopThread()
    stack = contextlib.AsyncExitStack()

    async def start() -> WebRunning:
        fake = await stack.enter_async_context(FakeOllama())
        return await stack.enter_async_context(serving(config_for(fake), fake, voice=voice))

    try:
        running = thread.run(start(), timeout=300)
        yield thread, running
    finally:
        thread.run(stack.aclose())
        thread.close()
