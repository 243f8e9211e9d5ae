"""What every route of the gateway port shares: the server's state and small response helpers."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field

from aiohttp import web

from adapters.web import WebChannel
from bot.config import Config
from bot.gateway import Gateway
from bot.model_host import ModelHost
from bot.store import Store
from bot.store.web import ApiToken, WebSession


@dataclass
class WebState:
    config: Config
    store: Store
    gateway: Gateway
    models: ModelHost
    chat: WebChannel
    api: WebChannel
    # Each platform the service runs, and whether it is connected right now.
    platforms: Callable[[], Mapping[str, bool]]
    base_url: str = ""
    pages: dict[str, str] = field(default_factory=dict)


STATE = web.AppKey("state", WebState)
# Who the guard let in, for the handler it calls next (in the same task).
SESSION: ContextVar[WebSession | None] = ContextVar("web_session", default=None)
API_TOKEN: ContextVar[ApiToken | None] = ContextVar("api_token", default=None)


def state(request: web.Request) -> WebState:
    return request.app[STATE]


def session_of(request: web.Request) -> WebSession:
    """The signed-in session (the guard lets no other request reach a page's handler)."""
    found = SESSION.get()
    assert found is not None
    return found


def api_token_of(request: web.Request) -> ApiToken:
    found = API_TOKEN.get()
    assert found is not None
    return found


def problem(status: int, message: str) -> web.Response:
    """A refusal or failure as JSON: one plain sentence, nothing else."""
    return web.json_response({"error": message}, status=status)


async def start_events(request: web.Request) -> web.StreamResponse:
    """A server-sent event stream, flushed as each event is written."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    return response


async def send_event(response: web.StreamResponse, payload: object) -> None:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    await response.write(f"data: {data}\n\n".encode())
