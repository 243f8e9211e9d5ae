"""The owner's dashboard: status, the binding table, pairing codes and the tool audit."""

from __future__ import annotations

import os
import resource
import sys
from datetime import datetime
from pathlib import Path

from aiohttp import web

from bot.config import BindingSpec, binding_problem
from bot.errors import ConfigBinding
from bot.pairing import CODE_LIFETIME, create_code, display
from bot.store.audit import read_audit
from bot.store.bindings import Binding, add_binding, list_bindings, remove_binding
from bot.store.web import inbox_depth, recent_turns
from bot.web.http import problem, state


def _when(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") + "Z" if moment else None


def _memory() -> dict[str, float | None]:
    """This process's resident memory and the machine's, in MB."""
    rss: float | None = None
    available: float | None = None
    total: float | None = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key == "MemAvailable":
                available = int(value.split()[0]) / 1024
            elif key == "MemTotal":
                total = int(value.split()[0]) / 1024
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rss = peak / (1024 * 1024 if sys.platform == "darwin" else 1024)
    if total is None and hasattr(os, "sysconf"):
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024 / 1024
        except (OSError, ValueError):
            total = None
    return {"process_mb": rss, "available_mb": available, "total_mb": total}


async def _status(request: web.Request) -> web.StreamResponse:
    st = state(request)
    residency = st.models.state
    turns = await recent_turns(st.store)
    platforms = {"web": True, **st.platforms()}
    return web.json_response({
        "model": {"active": residency.active,
                  "resident": residency.resident == residency.active,
                  "state": residency.state,
                  "cold_start_seconds": residency.cold_start_seconds},
        "turns": [{"at": _when(t.at), "persona": t.persona, "model": t.model,
                   "status": t.status, "first_token_seconds": t.first_token_seconds,
                   "total_seconds": t.total_seconds, "tokens": t.completion_tokens,
                   "tokens_per_second": t.tokens_per_second} for t in turns],
        "platforms": platforms,
        "inbox_depth": await inbox_depth(st.store),
        "memory": _memory(),
        "voice": st.gateway.speech is not None,
    })


def _binding(binding: Binding) -> dict[str, object]:
    return {"id": binding.id, "platform": binding.platform, "persona": binding.persona,
            "chat_kind": binding.chat_kind, "peer": binding.peer_id, "group": binding.group_id,
            "account": binding.account, "note": binding.note, "source": binding.source,
            "created_at": _when(binding.created_at)}


async def _bindings(request: web.Request) -> web.StreamResponse:
    st = state(request)
    rows = await list_bindings(st.store)
    return web.json_response({"bindings": [_binding(b) for b in rows],
                              "personas": sorted(st.config.agents.instances)})


def _text(body: dict[str, object], key: str) -> str | None:
    value = body.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise ValueError(key)
    return value.strip()


async def _add_binding(request: web.Request) -> web.StreamResponse:
    try:
        body = await request.json()
        if not isinstance(body, dict):
            raise ValueError("body")
        chat_kind = _text(body, "chat_kind")
        if chat_kind not in (None, "dm", "group"):
            return problem(400, "The chat kind is dm, group, or empty for any chat.")
        spec = BindingSpec(persona=_text(body, "persona") or "",
                           platform=_text(body, "platform") or "",
                           chat_kind=chat_kind,  # type: ignore[arg-type]
                           peer=_text(body, "peer"), group=_text(body, "group"),
                           account=_text(body, "account"), note=_text(body, "note") or "")
    except ValueError:
        return problem(400, "Send the binding as JSON strings: platform, persona, chat_kind, "
                            "peer, group, account, note.")
    st = state(request)
    refused = binding_problem(st.config, spec)
    if refused is not None:
        return problem(400, refused[0].upper() + refused[1:] + ".")
    binding = await add_binding(st.store, spec, source="web")
    return web.json_response({"binding": _binding(binding)}, status=201)


async def _remove_binding(request: web.Request) -> web.StreamResponse:
    try:
        binding_id = int(request.match_info["id"])
    except ValueError:
        return problem(404, "There is no such binding.")
    try:
        removed = await remove_binding(state(request).store, binding_id)
    except ConfigBinding as exc:
        return problem(409, exc.user_message)
    if removed is None:
        return problem(404, f"There is no binding {binding_id}.")
    return web.json_response({"removed": binding_id})


async def _pairing(request: web.Request) -> web.StreamResponse:
    code = await create_code(state(request).store)
    return web.json_response({"code": code, "display": display(code),
                              "minutes": int(CODE_LIFETIME.total_seconds() // 60)})


async def _audit(request: web.Request) -> web.StreamResponse:
    try:
        limit = max(1, min(int(request.query.get("limit", "100")), 500))
    except ValueError:
        limit = 100
    calls = await read_audit(state(request).store, limit=limit)
    return web.json_response({"calls": [
        {"id": c.id, "at": _when(c.at), "persona": c.persona, "platform": c.platform,
         "chat_id": c.chat_id, "tool": c.tool, "arguments": c.arguments, "outcome": c.outcome,
         "error": c.error, "duration_ms": c.duration_ms} for c in reversed(calls)]})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/status", _status)
    app.router.add_get("/api/bindings", _bindings)
    app.router.add_post("/api/bindings", _add_binding)
    app.router.add_delete("/api/bindings/{id}", _remove_binding)
    app.router.add_post("/api/pairing", _pairing)
    app.router.add_get("/api/audit", _audit)
