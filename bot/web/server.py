"""The gateway port's server: who may enter, the pages, and its life inside the service.

Everything is refused unless the request proves who sent it:

- `/login?token=…` spends a one-time link (`hearthbot web`, `hearthbot pair`) on a session:
  an HttpOnly, SameSite=Strict cookie whose hash the store keeps, valid `session_hours`.
- Every other page and `/api/…` route needs that session; every request that changes
  something also needs the session's CSRF token in `X-CSRF-Token`, and a browser must not
  mark it cross-site.
- `/v1/…` (the OpenAI-compatible endpoint) needs a bearer token from `hearthbot token create`;
  a session does not open it, and a token opens nothing else.

On a loopback address the Host header must name this machine, so a web page elsewhere cannot
reach the port through a DNS name that resolves to 127.0.0.1. Binding to any other address is
refused unless the config allows it, and then only with TLS or behind a named reverse proxy.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import ipaddress
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from importlib import resources
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from aiohttp import web

from adapters.web import WebChannel
from bot.config import Config
from bot.errors import AdapterStartError, WebRefused
from bot.store import Store
from bot.store.web import API_PLATFORM, api_token_for, create_link, end_session, redeem_link
from bot.store.web import session_for as stored_session
from bot.web import chat, dashboard, openai_api
from bot.web.http import API_TOKEN, SESSION, STATE, WebState, problem, session_of, state

if TYPE_CHECKING:
    from bot.service import Service

log = logging.getLogger(__name__)

COOKIE = "hearthbot_session"
CSRF_HEADER = "X-CSRF-Token"
MAX_BODY = 16 * 1024 * 1024  # a five-minute voice recording fits with room to spare
PAGES = ("chat.html", "dashboard.html")
ASSETS = {"app.css": "text/css", "chat.js": "text/javascript",
          "dashboard.js": "text/javascript"}
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; media-src 'self' blob:; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")
SIGN_IN = ("<!doctype html><meta charset=utf-8><title>hearthbot</title>"
           "<p>Sign in with the one-time link that <code>hearthbot web</code> prints.</p>")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(config: Config) -> None:
    """Refuse, in one sentence, to serve on an address beyond this machine without TLS or a
    named reverse proxy and an explicit allowance."""
    web_spec, bind = config.gateway.web, config.gateway.bind
    if not web_spec.enabled or _is_loopback(bind):
        return
    if not web_spec.allow_remote:
        raise WebRefused(f"Refusing to serve the web pages on {bind}, which is not a loopback "
                         "address: set gateway.bind to 127.0.0.1, or set "
                         "gateway.web.allow_remote with TLS or a trusted proxy.")
    if not (web_spec.tls_cert and web_spec.tls_key) and not web_spec.trusted_proxy:
        raise WebRefused(f"Refusing to serve the web pages on {bind} without encryption: "
                         "set gateway.web.tls_cert and tls_key, or name the reverse proxy in "
                         "gateway.web.trusted_proxy.")


def base_url(config: Config, port: int | None = None) -> str:
    """Where a person points the browser."""
    if config.gateway.web.public_url:
        return config.gateway.web.public_url.rstrip("/")
    scheme = "https" if config.gateway.web.tls_cert else "http"
    host = config.gateway.bind
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port if port is not None else config.gateway.port}"


async def sign_in_link(config: Config, store: Store, port: int | None = None) -> str:
    """A fresh one-time sign-in link, valid `gateway.web.link_minutes`."""
    token = await create_link(store, timedelta(minutes=config.gateway.web.link_minutes))
    return f"{base_url(config, port)}/login?token={token}"


# --- the guard ------------------------------------------------------------------------------

def _allowed_hosts(config: Config) -> set[str]:
    hosts = {"127.0.0.1", "localhost", "[::1]", "::1", config.gateway.bind}
    if config.gateway.web.public_url:
        hosts.add(urlsplit(config.gateway.web.public_url).hostname or "")
    return hosts


def _host_name(host: str) -> str:
    if host.startswith("["):
        return host[:host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _refuse(request: web.Request, status: int, message: str) -> web.StreamResponse:
    if request.path.startswith(("/api/", "/v1/")) or request.method not in SAFE_METHODS:
        if request.path.startswith("/v1/"):
            return openai_api.error(status, message)
        return problem(status, message)
    return web.Response(status=status, text=SIGN_IN, content_type="text/html")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    st = state(request)
    web_spec = st.config.gateway.web
    if web_spec.trusted_proxy and request.remote != web_spec.trusted_proxy:
        return _refuse(request, 403, "Only the configured reverse proxy may connect.")
    if (_is_loopback(st.config.gateway.bind)
            and _host_name(request.host) not in _allowed_hosts(st.config)):
        return _refuse(request, 403, "This address is not one this server answers to.")
    if request.path == "/login":
        return await handler(request)
    if request.path.startswith("/v1/"):
        secret = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        token = await api_token_for(st.store, secret) if secret else None
        if token is None:
            return _refuse(request, 401, "A valid API token is required "
                                         "(hearthbot token create --persona NAME).")
        API_TOKEN.set(token)
        return await handler(request)
    cookie = request.cookies.get(COOKIE)
    session = await stored_session(st.store, cookie) if cookie else None
    if session is None:
        return _refuse(request, 401, "Sign in first, with the link hearthbot web prints.")
    if request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if (request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none")
                or not hmac.compare_digest(sent.encode(), session.csrf_token.encode())):
            return _refuse(request, 403, "This request did not come from hearthbot's own page.")
    SESSION.set(session)
    return await handler(request)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    response.headers["Cross-Origin-Resource-Policy"] = "same-origin"


# --- signing in and out, pages --------------------------------------------------------------

async def _login(request: web.Request) -> web.StreamResponse:
    st = state(request)
    token = request.query.get("token", "")
    opened = await redeem_link(st.store, token, timedelta(
        hours=st.config.gateway.web.session_hours)) if token else None
    if opened is None:
        log.warning("a sign-in link was refused (unknown, used or expired)")
        return web.Response(status=401, content_type="text/html", text=(
            "<!doctype html><meta charset=utf-8><title>hearthbot</title><p>That sign-in link "
            "is not valid: it was used already or has expired. Run <code>hearthbot web</code> "
            "for a new one.</p>"))
    log.info("the owner signed in to the web pages (session %d)", opened.session.id)
    response = web.Response(status=303, headers={"Location": "/chat"})
    response.set_cookie(COOKIE, opened.token, httponly=True, samesite="Strict", path="/",
                        secure=_secure(st.config),
                        max_age=int(st.config.gateway.web.session_hours * 3600))
    return response


def _secure(config: Config) -> bool:
    return bool(config.gateway.web.tls_cert or config.gateway.web.trusted_proxy)


async def _logout(request: web.Request) -> web.StreamResponse:
    session = session_of(request)
    await end_session(state(request).store, session.id)
    log.info("the owner signed out of the web pages (session %d)", session.id)
    response = web.json_response({"signed_out": True})
    response.del_cookie(COOKIE, path="/")
    return response


def _page(name: str) -> Handler:
    async def page(request: web.Request) -> web.StreamResponse:
        text = state(request).pages[name].replace(
            "{{csrf}}", html.escape(session_of(request).csrf_token, quote=True))
        return web.Response(text=text, content_type="text/html")
    return page


async def _root(request: web.Request) -> web.StreamResponse:
    return web.Response(status=303, headers={"Location": "/chat"})


def _asset(name: str, content_type: str, body: bytes) -> Handler:
    async def asset(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type=content_type,
                            headers={"Cache-Control": "private, max-age=300"})
    return asset


def _read_static() -> dict[str, bytes]:
    folder = resources.files("bot.web") / "static"
    return {name: (folder / name).read_bytes() for name in (*PAGES, *ASSETS)}


def build_app(st: WebState) -> web.Application:
    app = web.Application(middlewares=[guard], client_max_size=MAX_BODY)
    app[STATE] = st
    files = _read_static()
    st.pages = {name: files[name].decode() for name in PAGES}
    app.on_response_prepare.append(_security_headers)
    app.router.add_get("/login", _login)
    app.router.add_post("/logout", _logout)
    app.router.add_get("/", _root)
    app.router.add_get("/chat", _page("chat.html"))
    app.router.add_get("/dashboard", _page("dashboard.html"))
    for name, content_type in ASSETS.items():
        app.router.add_get(f"/static/{name}", _asset(name, content_type, files[name]))
    chat.add_routes(app)
    dashboard.add_routes(app)
    openai_api.add_routes(app)
    return app


def _tls(config: Config) -> ssl.SSLContext | None:
    web_spec = config.gateway.web
    if not (web_spec.tls_cert and web_spec.tls_key):
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(web_spec.tls_cert, web_spec.tls_key)
    return context


class WebServer:
    """The gateway port as one of the service's platforms, run under the same supervision."""

    platform = "web"

    def __init__(self, service: Service,
                 platforms: Callable[[], Mapping[str, bool]] = dict, *,
                 required: bool = True) -> None:
        self.service = service
        self.platforms = platforms
        # Whether a port that cannot be had stops the service (when nothing else would run).
        self.required = required
        self.ready = asyncio.Event()
        self.port: int | None = None
        self.url = ""
        self.app: web.Application | None = None
        self._stopping = asyncio.Event()

    async def serve(self) -> None:
        config = self.service.config
        check_exposure(config)
        self._stopping.clear()
        gateway = self.service.gateway
        st = WebState(config, self.service.store, gateway, self.service.models,
                      WebChannel(gateway), WebChannel(gateway, API_PLATFORM), self.platforms)
        self.app = build_app(st)
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                               shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, config.gateway.bind, config.gateway.port,
                               ssl_context=_tls(config), reuse_address=True)
            try:
                await site.start()
            except OSError as exc:
                sentence = (f"The web pages cannot listen on {config.gateway.bind}:"
                            f"{config.gateway.port} ({exc.strerror}): set gateway.port to a "
                            "free port, or gateway.web.enabled to false.")
                if self.required:
                    raise AdapterStartError(sentence) from exc
                # Beside chat platforms the pages are not worth stopping them for: the
                # supervisor tries again, with growing pauses, until the port is free.
                raise OSError(sentence) from exc
            self.port = int(runner.addresses[0][1])
            self.url = st.base_url = base_url(config, self.port)
            await st.chat.resume()
            await st.api.resume()
            log.info("web pages at %s", self.url)
            self.ready.set()
            await self._stopping.wait()
            await asyncio.gather(st.chat.drain(config.gateway.stop_seconds),
                                 st.api.drain(config.gateway.stop_seconds))
        finally:
            self.ready.clear()
            await runner.cleanup()

    async def stop(self) -> None:
        self._stopping.set()
