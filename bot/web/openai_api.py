"""An OpenAI-compatible endpoint, so local apps and scripts can use the assistant.

Each request is a DM on the `api` platform from the token's peer (`token-<id>`), in a chat of
its own: the request's earlier messages become that chat's history, its last user message is
the event. So it passes the same inbox, binding table, model residency and records as any
chat message, and the token's binding alone decides the persona: the request's `model` field
changes nothing.
"""

from __future__ import annotations

import time
import uuid

from aiohttp import web

from adapters.web import Failed, Finished, Text
from bot.events import InboundEvent
from bot.store.web import API_PLATFORM, seed_conversation
from bot.web.http import api_token_of, send_event, start_events, state

ROLES = {"system": "user", "developer": "user", "user": "user", "assistant": "assistant"}


def error(status: int, message: str, kind: str | None = None) -> web.Response:
    kinds = {400: "invalid_request_error", 401: "authentication_error",
             403: "permission_error", 404: "not_found_error"}
    return web.json_response({"error": {"message": message,
                                         "type": kind or kinds.get(status, "server_error"),
                                         "param": None, "code": None}}, status=status)


def _text_of(content: object) -> str | None:
    """A message's text: a string, or a list of text parts. None for anything else: an image
    part is refused rather than dropped, so that no answer pretends to have seen it."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            for p in content):
        return "\n".join(str(p["text"]) for p in content)
    return None


def _conversation(body: object) -> list[tuple[str, str]] | str:
    """(role, text) pairs as history keeps them, or the sentence that says what is wrong."""
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not messages:
        return "`messages` must be a non-empty list."
    pairs: list[tuple[str, str]] = []
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        text = _text_of(message.get("content")) if isinstance(message, dict) else None
        if role not in ROLES or text is None:
            return (f"messages[{index}] must have a role (system, user or assistant) and text "
                    "content; tools and images are not supported here.")
        if role in ("system", "developer"):
            text = f"[instructions from the app calling the API]\n{text}"
        pairs.append((ROLES[str(role)], text))
    if messages[-1].get("role") != "user" or not pairs[-1][1].strip():
        return "The last message must be the user's, with text."
    return pairs


async def _persona(request: web.Request) -> str:
    st = state(request)
    token = api_token_of(request)
    return (await st.gateway.resolve(st.api.event("", sender=token.peer))).persona


async def _models(request: web.Request) -> web.StreamResponse:
    token = api_token_of(request)
    return web.json_response({"object": "list", "data": [{
        "id": await _persona(request), "object": "model",
        "created": int(token.created_at.timestamp()), "owned_by": "hearthbot"}]})


async def _completions(request: web.Request) -> web.StreamResponse:
    try:
        body = await request.json()
    except ValueError:
        return error(400, "The body must be JSON.")
    conversation = _conversation(body)
    if isinstance(conversation, str):
        return error(400, conversation)
    st = state(request)
    token = api_token_of(request)
    *earlier, (_, text) = conversation
    event = st.api.event(text, sender=token.peer, chat_id=f"{token.peer}-{uuid.uuid4().hex}")
    persona = (await st.gateway.resolve(event)).persona
    if earlier:
        await seed_conversation(st.store, API_PLATFORM, event.chat_id, persona, earlier)
    reply_id = f"chatcmpl-{event.message_id}"
    created = int(time.time())
    if body.get("stream"):
        return await _stream(request, event, reply_id, created, persona)
    pieces: list[str] = []
    async for part in st.api.send(event):
        if isinstance(part, Text):
            pieces.append(part.text)
        elif isinstance(part, Failed):
            return error(502, part.message)
    return web.json_response({
        "id": reply_id, "object": "chat.completion", "created": created, "model": persona,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(pieces)},
                     "finish_reason": "stop"}]})


async def _stream(request: web.Request, event: InboundEvent, reply_id: str, created: int,
                  persona: str) -> web.StreamResponse:
    st = state(request)

    def chunk(delta: dict[str, str], finish: str | None = None) -> dict[str, object]:
        return {"id": reply_id, "object": "chat.completion.chunk", "created": created,
                "model": persona,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    response = await start_events(request)
    await send_event(response, chunk({"role": "assistant", "content": ""}))
    async for part in st.api.send(event):
        if isinstance(part, Text):
            await send_event(response, chunk({"content": part.text}))
        elif isinstance(part, Failed):
            await send_event(response, {"error": {"message": part.message,
                                                  "type": "server_error"}})
            return response
        elif isinstance(part, Finished):
            await send_event(response, chunk({}, "stop"))
    await send_event(response, "[DONE]")
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/models", _models)
    app.router.add_post("/v1/chat/completions", _completions)
