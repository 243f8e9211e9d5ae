"""The web chat's routes: send text or a recording, stream the reply, show the history."""

from __future__ import annotations

import math

from aiohttp import web

from adapters.web import OWNER, Failed, Finished, Spoken, Status, Text, WebChannel
from bot.events import InboundEvent
from bot.store.web import open_messages
from bot.web.http import WebState, problem, send_event, start_events, state

MAX_TEXT = 32_000
AUDIO_TYPES = ("audio/webm", "audio/ogg", "audio/mp4", "audio/mpeg", "audio/wav",
               "audio/x-wav", "audio/mp3")


async def _persona(st: WebState) -> str:
    return (await st.gateway.resolve(st.chat.event(""))).persona


async def _history(request: web.Request) -> web.StreamResponse:
    st = state(request)
    persona = await _persona(st)
    messages = await open_messages(st.store, st.chat.platform, OWNER, persona)
    return web.json_response({
        "persona": persona, "role": st.gateway.personas[persona].role,
        "voice": st.gateway.speech is not None,
        "messages": [{"role": m.role, "content": m.content, "transcribed": m.transcribed}
                     for m in messages],
    })


async def _send(request: web.Request) -> web.StreamResponse:
    try:
        body = await request.json()
    except ValueError:
        return problem(400, "Send JSON: {\"text\": \"...\"}.")
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str) or not text.strip():
        return problem(400, "There is no text to send.")
    if len(text) > MAX_TEXT:
        return problem(413, f"Keep a message under {MAX_TEXT} characters.")
    st = state(request)
    return await _stream(request, st.chat, st.chat.event(text.strip()))


async def _voice(request: web.Request) -> web.StreamResponse:
    mime = request.content_type.split(";")[0].strip().lower()
    if mime not in AUDIO_TYPES:
        return problem(415, "Send the recording as audio (webm, ogg, mp4, mpeg or wav).")
    audio = await request.read()
    if not audio:
        return problem(400, "The recording is empty.")
    try:
        duration = float(request.headers.get("X-Duration", "0"))
    except ValueError:
        duration = 0.0
    if not math.isfinite(duration) or duration < 0:
        duration = 0.0
    st = state(request)
    return await _stream(request, st.chat, st.chat.voice_event(audio, mime, duration))


async def _stream(request: web.Request, channel: WebChannel,
                  event: InboundEvent) -> web.StreamResponse:
    """The reply as server-sent events: text pieces, status lines, a failure sentence, the
    spoken clip, what was heard in a recording, and the end."""
    response = await start_events(request)
    async for part in channel.send(event):
        if isinstance(part, Text):
            await send_event(response, {"type": "text", "text": part.text})
        elif isinstance(part, Status):
            await send_event(response, {"type": "status", "text": part.text})
        elif isinstance(part, Failed):
            await send_event(response, {"type": "failed", "text": part.message})
        elif isinstance(part, Spoken):
            await send_event(response, {"type": "voice", "url": f"/api/chat/voice/{part.clip_id}",
                                        "duration": part.duration})
        elif isinstance(part, Finished):
            if event.voice is not None and part.result and part.result.answered:
                await _send_heard(request, response)
            await send_event(response, {"type": "done",
                                        "status": part.result.status if part.result else
                                        "duplicate"})
    return response


async def _send_heard(request: web.Request, response: web.StreamResponse) -> None:
    """What the recording was heard to say, as the history keeps it."""
    st = state(request)
    messages = await open_messages(st.store, st.chat.platform, OWNER, await _persona(st),
                                   limit=2)
    heard = next((m.content for m in reversed(messages) if m.role == "user"), None)
    if heard is not None:
        await send_event(response, {"type": "heard", "text": heard})


async def _clip(request: web.Request) -> web.StreamResponse:
    clip = state(request).chat.clip(request.match_info["clip"])
    if clip is None:
        return problem(404, "That spoken reply is no longer kept.")
    return web.Response(body=clip, content_type="audio/ogg")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/chat/history", _history)
    app.router.add_post("/api/chat/messages", _send)
    app.router.add_post("/api/chat/voice", _voice)
    app.router.add_get("/api/chat/voice/{clip}", _clip)
