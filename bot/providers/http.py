"""What the HTTP backends share: one client per provider, timeouts, and error translation."""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from bot.config import ProviderSpec
from bot.errors import (
    ContextOverflow,
    ModelNotFound,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    StreamInterrupted,
)
from bot.providers.base import (
    next_within,
)


def _import_httpcore_for_asyncio() -> None:
    """httpcore imports trio whenever it is installed (other tools bring it along), which
    costs about 0.1 s; this process runs on asyncio only, so trio stays hidden meanwhile."""
    if "httpcore" in sys.modules:
        return
    hide = "trio" not in sys.modules
    if hide:
        sys.modules["trio"] = None  # type: ignore[assignment]
    try:
        import httpcore  # noqa: F401
    finally:
        if hide:
            del sys.modules["trio"]


_import_httpcore_for_asyncio()

# How servers say a prompt does not fit: llama-server and Ollama (with `truncate` off), vLLM.
_TOO_LONG = ("exceed_context_size_error", "exceeds the available context size",
             "maximum context length")


def _tls_for(base_url: str) -> ssl.SSLContext | bool:
    """Verification as usual for https. A plain-http backend (the usual local server) never
    speaks TLS, and this client follows no redirects, so it is spared loading the system's
    certificates at every start: a context that trusts no one, so TLS could only fail."""
    if base_url.lower().startswith("https:"):
        return True
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


class HttpBackend:
    """Owns the shared httpx client of one provider and turns transport failures into
    ProviderErrors whose log text says which backend failed and how."""

    def __init__(self, name: str, spec: ProviderSpec, base_url: str) -> None:
        self.name = name
        self.spec = spec
        headers = {"Authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}
        # Reads are timed per stream item by `lines()`, so httpx's own read timeout is off.
        self.client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(connect=spec.connect_timeout, read=None, write=30.0, pool=30.0),
            trust_env=False,  # no proxy may see local traffic
            verify=_tls_for(base_url),
        )

    @asynccontextmanager
    async def post_stream(
        self, path: str, body: dict[str, object]
    ) -> AsyncIterator[httpx.Response]:
        """POST and yield the streaming response once its status is known to be good."""
        request = self.client.build_request("POST", path, json=body)
        try:
            async with asyncio.timeout(self.spec.first_token_timeout):
                response = await self.client.send(request, stream=True)
        except TimeoutError:
            raise ProviderTimeout(
                f"{self.name}: no answer within {self.spec.first_token_timeout:g} s"
            ) from None
        except httpx.TransportError as exc:
            raise ProviderUnavailable(f"{self.name}: cannot reach {request.url}: {exc!r}") from exc
        try:
            if response.status_code >= 400:
                await response.aread()
                raise self.status_error(response)
            yield response
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise StreamInterrupted(f"{self.name}: connection lost mid-reply: {exc!r}") from exc
        finally:
            await response.aclose()

    async def post_json(self, path: str, body: dict[str, object], within: float) -> object:
        return await self._json("POST", path, within, body)

    async def get_json(self, path: str, within: float) -> object:
        return await self._json("GET", path, within)

    async def _json(self, method: str, path: str, within: float,
                    body: dict[str, object] | None = None) -> object:
        try:
            response = await self.client.request(method, path, json=body, timeout=within)
        except httpx.TimeoutException as exc:
            raise ProviderTimeout(f"{self.name}: {path} took longer than {within:g} s") from exc
        except httpx.TransportError as exc:
            raise ProviderUnavailable(f"{self.name}: cannot reach {self.url(path)}: {exc!r}"
                                      ) from exc
        if response.status_code >= 400:
            raise self.status_error(response)
        try:
            return response.json()
        except ValueError as exc:
            raise ProviderError(f"{self.name}: {path} answered something other than JSON: "
                                f"{response.text[:200]!r}") from exc

    def url(self, path: str) -> str:
        return str(self.client.base_url).rstrip("/") + path

    def status_error(self, response: httpx.Response) -> ProviderError:
        detail = response.text[:300]
        where = f"{self.name}: {response.request.method} {response.request.url.path}"
        if response.status_code == 404:
            return ModelNotFound(f"{where} answered 404: {detail}")
        if response.status_code == 400 and any(sign in response.text for sign in _TOO_LONG):
            return ContextOverflow(f"{where} refused the prompt as too long: {detail}")
        if response.status_code >= 500 or response.status_code == 429:
            return ProviderUnavailable(f"{where} answered {response.status_code}: {detail}")
        return ProviderError(f"{where} answered {response.status_code}: {detail}")

    async def lines(self, response: httpx.Response) -> AsyncIterator[str]:
        """Non-empty lines of a streaming body; the first may take as long as a cold model
        needs, later ones must keep coming."""
        source = response.aiter_lines()
        limit, waiting_for = self.spec.first_token_timeout, "first token"
        while True:
            try:
                line = await next_within(source, limit, f"{waiting_for} from {self.name}")
            except StopAsyncIteration:
                return
            limit, waiting_for = self.spec.read_timeout, "further output"
            if line.strip():
                yield line

    async def close(self) -> None:
        await self.client.aclose()


def parse_json_line(line: str, backend: str) -> dict[str, object]:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise StreamInterrupted(f"{backend}: unreadable stream line {line[:200]!r}") from exc
    if not isinstance(value, dict):
        raise StreamInterrupted(f"{backend}: unexpected stream line {line[:200]!r}")
    return value


def int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
