"""The service with tools switched on: a tools-capable model on either fake backend, workspaces
inside the test's data dir, the guest's console chat, and what the model was sent back.

The two fake backends speak different wire formats (Ollama's NDJSON with call arguments as
objects, OpenAI's SSE with arguments streamed as text fragments); a test that takes the
`backend` fixture runs once for each, so every attack goes through both parsers.
"""

from __future__ import annotations

import asyncio
import io
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from adapters.console import ConsoleChat
from adapters.telegram import TelegramAdapter
from bot.config import BindingSpec, Config
from bot.service import Service, open_service
from bot.store.bindings import add_binding
from bot.turn import TurnResult
from tests.fakes.llm_backends import FakeOllama, FakeOpenAI, ScriptedReply, ToolCall
from tests.fakes.server import FakeServer
from tests.fakes.telegram import FakeTelegram
from tests.support.helpers import Json, make_config
from tests.support.telegram import EDIT_INTERVAL, OWNER

Backend = FakeOllama | FakeOpenAI


def tools_config(data_dir: Path, backend: Backend, fake_tg: FakeTelegram | None = None) -> Config:
    """A config whose one model can call tools, with both personas' workspaces in `data_dir`
    (and, given `fake_tg`, the Telegram channel pointed at it)."""
    model = {"id": backend.models[0], "context_window": 8192, "max_tokens": 512,
             "capabilities": ["tools"]}
    name, kind = ("ollama", "ollama") if isinstance(backend, FakeOllama) \
        else ("openai", "openai-compat")
    provider = {"type": kind, "base_url": backend.base_url, "first_token_timeout": 10,
                "read_timeout": 10, "models": [model]}
    sections: dict[str, Any] = {
        "gateway": {"log_level": "debug", "providers": {name: provider}},
        "agents": {
            "default": {"active_model": f"{name}/{backend.models[0]}"},
            "instances": {
                "admin": {"role": "admin", "workspace": str(workspace(data_dir, "admin"))},
                "guest": {"role": "guest", "workspace": str(workspace(data_dir, "guest")),
                          "tools": {"deny": ["shell_exec", "system_process",
                                             "external_fetch"]}},
            },
        },
    }
    if fake_tg is not None:
        sections["channels"] = {"telegram": {
            "token": fake_tg.token, "api_base_url": fake_tg.base_url,
            "file_base_url": fake_tg.base_file_url, "poll_timeout": 2,
            "edit_interval": EDIT_INTERVAL, "draft_interval": 0.05}}
    return make_config(data_dir, **sections)


def workspace(data_dir: Path, persona: str) -> Path:
    return data_dir / "workspaces" / persona


def step(name: str, arguments: dict[str, object] | None = None, *,
         raw: str | None = None) -> ScriptedReply:
    """One model step that makes exactly one call."""
    return ScriptedReply.calling(ToolCall(name, arguments or {}, raw_arguments=raw))


def answer(text: str) -> ScriptedReply:
    return ScriptedReply(chunks=(text,))


@dataclass
class Chat:
    """A console conversation with the running service, its output kept for inspection."""

    console: ConsoleChat
    out: io.StringIO = field(default_factory=io.StringIO)
    err: io.StringIO = field(default_factory=io.StringIO)

    async def ask(self, text: str) -> TurnResult:
        return await self.console.ask(text)


def console_chat(service: Service, sender: str) -> Chat:
    out, err = io.StringIO(), io.StringIO()
    return Chat(ConsoleChat(service.gateway, sender=sender, out=out, err=err), out, err)


def tool_messages(backend: Backend) -> list[str]:
    """Every tool result the model was sent back, in order, over all requests (each request
    repeats the earlier ones, so they are taken from the last request that has any)."""
    found: list[str] = []
    for body in backend.chat_bodies():
        messages: list[Json] = body.get("messages") or []
        results = [str(m.get("content")) for m in messages if m.get("role") == "tool"]
        if len(results) >= len(found):
            found = results
    return found


def offered_tools(body: Json) -> list[str]:
    """The names of the tools a request offered the model."""
    return [str(t["function"]["name"]) for t in body.get("tools") or []]


@dataclass(frozen=True)
class AuditRow:
    persona: str
    platform: str
    chat_id: str
    tool: str
    arguments: str
    outcome: str
    error: str | None


def audit_rows(service: Service) -> list[AuditRow]:
    path = service.config.store_url().split("///", 1)[1]
    with sqlite3.connect(path) as db:
        rows = db.execute("select persona, platform, chat_id, tool, arguments, outcome, error "
                          "from tool_calls order by id").fetchall()
    return [AuditRow(*row) for row in rows]


@dataclass
class Served:
    service: Service
    adapter: TelegramAdapter
    tg: FakeTelegram


@asynccontextmanager
async def serve_telegram(config: Config, fake_tg: FakeTelegram) -> AsyncIterator[Served]:
    """The Telegram adapter serving `config`, with the owner's DM bound to the admin."""
    async with open_service(config, voice=False) as service:
        await add_binding(service.store, BindingSpec(
            persona="admin", platform="telegram", chat_kind="dm", peer=str(OWNER)))
        assert config.channels.telegram is not None
        adapter = TelegramAdapter(config.channels.telegram, service.gateway)
        task = asyncio.create_task(adapter.serve())
        try:
            await asyncio.wait_for(adapter.ready.wait(), 10)
            yield Served(service, adapter, fake_tg)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class PageServer(FakeServer):
    """A web page on 127.0.0.1 for external_fetch, counting who asked for it."""

    TITLE = "Hearth test page"
    TEXT = "The kettle is on at the hearth."

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[dict[str, str]] = []  # the headers of each request

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/page"

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/page", self._page)
        return app

    async def _page(self, request: web.Request) -> web.Response:
        self.requests.append(dict(request.headers))
        html = (f"<html><head><title>{self.TITLE}</title><script>var x = 1;</script></head>"
                f"<body><p>{self.TEXT}</p></body></html>")
        return web.Response(text=html, content_type="text/html")
