"""Scriptable fake model servers speaking the Ollama-native and OpenAI-compatible wire formats,
so the gateway's providers (and its own overhead) can be measured without any model.

Each chat request takes the next scripted reply (a default greeting once the script runs out),
so a conversation with tools is scripted step by step, and every request body is recorded:

    fake.script(
        ScriptedReply.calling(ToolCall("file_read", {"path": "a.txt"})),  # step 1: a call
        ScriptedReply(chunks=("It says hi.",)),                            # step 2: the answer
    )
    ...
    first, second = fake.chat_bodies()  # assert the `tools` sent and the results returned

A reply can also be chosen per request with `fake.respond_with(choose)`, where `choose(body)`
returns the ScriptedReply (or None for the script's next one). With `count_tokens=True` the fake
counts every chat request's prompt with a small deterministic tokenizer (`fake_tokens`),
reports that count back as real servers do, refuses a prompt larger than the window with the
server's own error (or, where the server would, shortens it and says nothing), and keeps each
measurement in `fake.measured`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import functools
import hashlib
import json
import re
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from tests.fakes.server import FakeServer

Json = dict[str, Any]


@dataclass(frozen=True)
class ToolCall:
    """One scripted call. `raw_arguments` is sent verbatim instead of `arguments` (use it for
    malformed JSON; Ollama then gets it as a string). `pieces` splits the argument text into
    that many streamed fragments (OpenAI). `id`: None for the fake's own, "" to send none."""

    name: str
    arguments: dict[str, object] = field(default_factory=dict)
    raw_arguments: str | None = None
    pieces: int = 1
    id: str | None = None

    def argument_text(self) -> str:
        return self.raw_arguments if self.raw_arguments is not None else json.dumps(
            self.arguments)

    def fragments(self) -> list[str]:
        text = self.argument_text()
        if not text:
            return [""]
        size = -(-len(text) // max(1, min(self.pieces, len(text))))
        return [text[i:i + size] for i in range(0, len(text), size)]


@dataclass(frozen=True)
class ScriptedReply:
    """One reply: text chunks, then tool calls.

    `batch_tool_calls`: Ollama sends all calls in one line (empty content) instead of one line
    each; OpenAI puts every call's header, then every call's next fragment, in one delta.
    `interleave_arguments` (OpenAI): all headers first, then fragments round-robin across calls,
    one delta each, so a client must merge by index.
    """

    chunks: tuple[str, ...] = ("Hello", " there", ".")
    tool_calls: tuple[ToolCall, ...] = ()
    batch_tool_calls: bool = False
    interleave_arguments: bool = False
    first_token_delay: float = 0.0
    token_delay: float = 0.0
    status: int = 200
    disconnect_after: int | None = None  # counts streamed lines/events: text, then tool calls
    prompt_tokens: int = 12
    # Of the prompt tokens, those served from the server's prompt cache (OpenAI reports them
    # in usage.prompt_tokens_details; Ollama says nothing about its cache).
    cached_tokens: int = 0
    # Tokens the reply took; None: one per chunk.
    completion_tokens: int | None = None
    finish_reason: str = "stop"
    # The stream stops after its first piece until this is set: a test can act while a reply
    # is under way.
    pause_after_first: asyncio.Event | None = field(default=None, compare=False)
    # Nothing is sent until this event is set: a reply the test holds back.
    hold: asyncio.Event | None = field(default=None, compare=False)
    # The chain of thought, streamed before the answer (`chunks`) in the form real servers
    # use: "separate" is Ollama's `message.thinking` and the OpenAI `reasoning_content` field,
    # "reasoning" the OpenAI `reasoning` field (vLLM, LM Studio), "tag" `<think>…</think>` in
    # the text, cut into TAG_PIECE-character chunks so the tags straddle chunk boundaries.
    # A request that turns thinking off (Ollama `think: false`, OpenAI
    # `chat_template_kwargs.enable_thinking: false`) gets no thoughts, as from a real model.
    thinking: tuple[str, ...] = ()
    thinking_form: Literal["separate", "reasoning", "tag"] = "separate"
    thinking_closed: bool = True  # "tag" only: False leaves the thought open at the end

    @classmethod
    def calling(cls, *calls: ToolCall, **options: Any) -> ScriptedReply:
        """A step that only calls tools, as models usually do."""
        return cls(chunks=(), tool_calls=calls, **options)

    def thoughts_and_text(self, thinking_on: bool) -> tuple[list[str], list[str]]:
        """(thoughts sent apart, text chunks) as the stream carries them."""
        if not thinking_on or not self.thinking:
            return [], list(self.chunks)
        if self.thinking_form != "tag":
            return list(self.thinking), list(self.chunks)
        tagged = "<think>" + "".join(self.thinking) + (
            "</think>\n\n" if self.thinking_closed else "")
        pieces = [tagged[i:i + TAG_PIECE] for i in range(0, len(tagged), TAG_PIECE)]
        return [], pieces + list(self.chunks)


TAG_PIECE = 5  # "<think>" and "</think>" never fit one piece whole



@dataclass
class RecordedRequest:
    method: str
    path: str
    body: dict[str, object] | None
    headers: dict[str, str]  # keys lower-cased so tests need not guess the client's casing
    at: float  # time.monotonic()
    # The backend's own time, for benchmarks that subtract it: when the first streamed piece
    # was written, and when the response was finished (last byte written).
    first_byte_at: float | None = None
    done_at: float | None = None


@dataclass(frozen=True)
class Measured:
    """One chat request as a counting fake measured it."""

    prompt: int  # prompt tokens, tools included
    output: int  # the most the request let the model write
    window: int
    outcome: str  # "ok", "refused" (too long, with the server's error) or "truncated"

    @property
    def total(self) -> int:
        return self.prompt + self.output


_FAKE_TOKEN = re.compile(r"\d|[^\W\d_]{1,3}|\S")
MESSAGE_TOKENS = 4  # what the fake's chat template adds around each message
REPLY_TOKENS = 3  # the assistant header that ends every prompt
IMAGE_TOKENS = 256  # what one image costs, as a small vision encoder would make it


def fake_tokens(text: str) -> int:
    """The fake's tokenizer: each digit, each other symbol, and each run of up to three letters
    is one token: denser than real tokenizers on English, so an estimate must learn it."""
    return len(_FAKE_TOKEN.findall(text))


def prompt_tokens_of(body: Json) -> int:
    """A chat request's prompt in the fake's tokens: messages, their calls and images, and the
    tools."""
    total = REPLY_TOKENS
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            text, images = _text_and_images(message)
            total += MESSAGE_TOKENS + fake_tokens(text) + IMAGE_TOKENS * len(images)
            if message.get("tool_calls"):
                total += fake_tokens(json.dumps(message["tool_calls"]))
    if body.get("tools"):
        total += fake_tokens(json.dumps(body["tools"]))
    return total


def _text_and_images(message: Json) -> tuple[str, list[str]]:
    """A message's text and its images' base64, in either server's format: Ollama's `images`
    beside the content, or OpenAI's list of content parts with data URLs."""
    content = message.get("content")
    images = [str(i) for i in message.get("images") or []]
    if not isinstance(content, list):
        return str(content or ""), images
    texts = [str(p.get("text") or "") for p in content
             if isinstance(p, dict) and p.get("type") == "text"]
    for part in content:
        image_url = part.get("image_url") if isinstance(part, dict) else None
        if isinstance(image_url, dict):
            url = str(image_url.get("url") or "")
            images.append(url.partition(";base64,")[2])
    return "".join(texts), images


def sent_images(body: Json) -> list[bytes]:
    """The images of a chat request's messages, decoded, in order (either server's format)."""
    return [base64.b64decode(data, validate=True) for message in body.get("messages") or []
            if isinstance(message, dict) for data in _text_and_images(message)[1]]


def _ollama_images_problem(messages: list[Any]) -> str | None:
    """What Ollama answers 400 to: `images` that are not a list of base64 strings."""
    for message in messages:
        images = message.get("images") if isinstance(message, dict) else None
        if images is None:
            continue
        if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
            return "json: cannot unmarshal images into Go struct field Message.messages.images"
        for data in images:
            try:
                base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                return "illegal base64 data at input byte 0"
    return None


def _openai_content_problem(messages: list[Any]) -> str | None:
    """What an OpenAI-compatible server answers 400 to: content that is neither a string nor a
    list of well-formed text and image_url parts (images as data URLs or http URLs)."""
    for index, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if content is None or isinstance(content, str):
            continue
        if not isinstance(content, list) or (message.get("role") != "user" and any(
                isinstance(p, dict) and p.get("type") != "text" for p in content)):
            return f"messages[{index}].content: image parts are only allowed in user messages"
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                continue
            image_url = part.get("image_url") if kind == "image_url" else None
            url = image_url.get("url") if isinstance(image_url, dict) else None
            if not isinstance(url, str):
                return f"messages[{index}].content: invalid content part {part!r:.80}"
            if url.startswith("data:"):
                head, _, data = url.partition(",")
                try:
                    base64.b64decode(data, validate=True)
                except (binascii.Error, ValueError):
                    return f"messages[{index}].content: invalid base64 image data"
                if not head.endswith(";base64") or not head[5:].startswith("image/"):
                    return f"messages[{index}].content: invalid image data URL"
            elif not url.startswith(("http://", "https://")):
                return f"messages[{index}].content: invalid image URL"
    return None


_RECORDED = web.RequestKey("recorded", RecordedRequest)


def _dumps(payload: object) -> str:
    # Compact like the real servers (Go's encoder, pydantic): clients must not rely on spacing.
    return json.dumps(payload, separators=(",", ":"))


class _FakeBackend(FakeServer):
    """Lifecycle, request recording, the reply queue and the paced writer shared by both."""

    _url_suffix = ""
    _chat_path = ""

    def __init__(self, models: Sequence[str], count_tokens: bool = False) -> None:
        self.models: list[str] = list(models)
        self.requests: list[RecordedRequest] = []
        self.counting = count_tokens
        self.measured: list[Measured] = []
        super().__init__()
        self._queue: deque[ScriptedReply] = deque()
        self._inflight: set[asyncio.Task[Any]] = set()
        self._choose: Callable[[Json], ScriptedReply | None] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self._url_suffix}"

    def script(self, *replies: ScriptedReply) -> None:
        self._queue.extend(replies)

    def respond_with(self, choose: Callable[[Json], ScriptedReply | None] | None) -> None:
        """Choose each chat reply from the request body (None: the script's next reply)."""
        self._choose = choose

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path]

    def chat_bodies(self) -> list[Json]:
        """The body of every chat request so far, in order (warm-ups left out: see `_chat`)."""
        return [r.body for r in self.requests_to(self._chat_path)
                if r.body is not None and not _is_warm_up(r.body)]

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._recorder()])
        self._add_routes(app)
        return app

    async def closing(self) -> None:
        for task in list(self._inflight):  # open streams would otherwise hold cleanup up
            task.cancel()

    def _recorder(self) -> Middleware:
        @web.middleware
        async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
            raw = await request.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            body = body if isinstance(body, dict) else None
            headers = {k.lower(): v for k, v in request.headers.items()}
            recorded = RecordedRequest(request.method, request.path, body, headers,
                                       time.monotonic())
            self.requests.append(recorded)
            request[_RECORDED] = recorded
            if raw and body is None:
                return self._error(400, "invalid JSON body")
            denied = self._guard(request)
            if denied is not None:
                return denied
            task = asyncio.current_task()
            assert task is not None
            self._inflight.add(task)
            try:
                return await handler(request)
            finally:
                recorded.done_at = time.monotonic()
                self._inflight.discard(task)
        return record

    def _add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def _error(self, status: int, message: str) -> web.Response:
        raise NotImplementedError

    def _guard(self, request: web.Request) -> web.Response | None:
        return None

    def _next_reply(self, body: Json | None = None) -> ScriptedReply:
        if self._choose is not None and body is not None:
            chosen = self._choose(body)
            if chosen is not None:
                return chosen
        return self._queue.popleft() if self._queue else ScriptedReply()

    def _measure(self, body: Json, window: int, output: int,
                 truncates: bool) -> tuple[Measured, web.Response | None]:
        """Count a chat request; the error response to send when the server would refuse it."""
        prompt = prompt_tokens_of(body)
        outcome = "ok" if prompt <= window else "truncated" if truncates else "refused"
        measured = Measured(prompt, output, window, outcome)
        self.measured.append(measured)
        if outcome != "refused":
            return measured, None
        return measured, self._too_long(prompt, window)

    def _too_long(self, prompt: int, window: int) -> web.Response:
        raise NotImplementedError

    async def _pump(self, request: web.Request, resp: web.StreamResponse,
                    reply: ScriptedReply, pieces: Sequence[bytes]) -> int | None:
        """Write pieces at the scripted pace: monotonic ns of the first write, None if cut."""
        cut = reply.disconnect_after
        first_ns: int | None = None
        if reply.hold is not None:
            await reply.hold.wait()
        if not pieces or cut == 0:
            await asyncio.sleep(reply.first_token_delay)
        for i, piece in enumerate(pieces):
            if cut is not None and i >= cut:
                break
            await asyncio.sleep(reply.first_token_delay if i == 0 else reply.token_delay)
            if i == 1 and reply.pause_after_first is not None:
                await reply.pause_after_first.wait()
            if first_ns is None:
                first_ns = time.monotonic_ns()
                request[_RECORDED].first_byte_at = first_ns / 1e9
            await resp.write(piece)
        if cut is not None:
            _cut(request)
            return None
        return first_ns or time.monotonic_ns()

    async def _wait_whole(self, request: web.Request, reply: ScriptedReply) -> bool:
        """Non-streamed replies take as long as the stream would; False if cut instead."""
        if reply.hold is not None:
            await reply.hold.wait()
        pieces = len(reply.chunks) + len(reply.tool_calls)
        await asyncio.sleep(reply.first_token_delay + reply.token_delay * max(pieces - 1, 0))
        if reply.disconnect_after is not None:
            _cut(request)
            return False
        return True


async def _body(request: web.Request) -> Json:
    raw = await request.read()  # cached by aiohttp; the recorder has already vetted it
    parsed: Json = json.loads(raw) if raw else {}
    return parsed


def _cut(request: web.Request) -> None:
    # close(), not abort(): bytes already written still reach the client, then EOF arrives
    # mid-body, which is how a crashed backend looks from the other side.
    if request.transport is not None:
        request.transport.close()


def _now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


_ZERO_DURATION = re.compile(r"0+(\.0+)?(ns|us|µs|ms|s|m|h)?")


def _is_zero_keep_alive(value: object) -> bool:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value == 0
    return isinstance(value, str) and _ZERO_DURATION.fullmatch(value.strip()) is not None


class FakeOllama(_FakeBackend):
    """Ollama's native API: tags, ps, version, show, chat and generate under /api."""

    _chat_path = "/api/chat"

    def __init__(self, models: Sequence[str] = ("llama3.2:3b",), *,
                 context_length: int = 8192, sizes: Mapping[str, int] | None = None,
                 count_tokens: bool = False) -> None:
        super().__init__(models, count_tokens)
        self.context_length = context_length
        self.sizes = dict(sizes or {})  # bytes on disk per model (default: a 3B Q4 model's)
        self.loaded: list[str] = []
        self.peak_loaded = 0  # lets tests assert two models were never resident at once
        # A model named here loads only once its event is set: a test can hold a switch
        # half-way and see what happens meanwhile.
        self.load_gates: dict[str, asyncio.Event] = {}

    def evict(self, model: str) -> None:
        """Unload a model behind the client's back, as Ollama does under memory pressure."""
        self._set_loaded(model, False)

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/tags", self._tags)
        app.router.add_get("/api/ps", self._ps)
        app.router.add_get("/api/version", self._version)
        app.router.add_post("/api/show", self._show)
        app.router.add_post("/api/chat", functools.partial(self._answer, chat=True))
        app.router.add_post("/api/generate", functools.partial(self._answer, chat=False))

    def _error(self, status: int, message: str) -> web.Response:
        return web.json_response({"error": message}, status=status, dumps=_dumps)

    def _too_long(self, prompt: int, window: int) -> web.Response:
        # With `truncate: false`, Ollama passes on its runner's error as a string.
        return self._error(400, _dumps({"error": _context_error(prompt, window)}))

    def _resolve(self, name: object) -> str | None:
        if not isinstance(name, str) or not name:
            return None
        # Ollama treats a bare name as its ":latest" tag.
        return next((c for c in (name, f"{name}:latest") if c in self.models), None)

    def _set_loaded(self, model: str, resident: bool) -> None:
        if resident and model not in self.loaded:
            self.loaded.append(model)
        elif not resident and model in self.loaded:
            self.loaded.remove(model)
        self.peak_loaded = max(self.peak_loaded, len(self.loaded))

    def _describe(self, name: str) -> Json:
        details = {"parent_model": "", "format": "gguf", "family": "llama",
                   "families": ["llama"], "parameter_size": "3.2B",
                   "quantization_level": "Q4_K_M"}
        return {"name": name, "model": name, "size": self.sizes.get(name, 2_019_393_189),
                "digest": hashlib.sha256(name.encode()).hexdigest(), "details": details}

    async def _tags(self, request: web.Request) -> web.Response:
        models = [{**self._describe(m), "modified_at": _now_rfc3339()} for m in self.models]
        return web.json_response({"models": models}, dumps=_dumps)

    async def _ps(self, request: web.Request) -> web.Response:
        expires = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
        models = [{**self._describe(m), "expires_at": expires, "size_vram": 2_019_393_189,
                   "context_length": self.context_length} for m in self.loaded]
        return web.json_response({"models": models}, dumps=_dumps)

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": "0.12.6"})

    async def _show(self, request: web.Request) -> web.Response:
        body = await _body(request)
        asked = body.get("model", body.get("name"))
        name = self._resolve(asked)
        if name is None:
            return self._error(404, f"model '{asked}' not found")
        return web.json_response({
            "modelfile": f"FROM {name}\n", "parameters": "", "template": "{{ .Prompt }}",
            "details": self._describe(name)["details"], "modified_at": _now_rfc3339(),
            "model_info": {"general.architecture": "llama",
                           "llama.context_length": self.context_length},
            "capabilities": ["completion", "tools"],
        }, dumps=_dumps)

    async def _answer(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        started = time.monotonic_ns()
        body = await _body(request)
        if not body.get("model"):
            return self._error(400, "model is required")
        model = self._resolve(body["model"])
        if model is None:
            return self._error(404, f'model "{body["model"]}" not found, try pulling it first')
        unload = _is_zero_keep_alive(body.get("keep_alive"))

        def line(text: str, calls: list[Json] | None = None, thinking: str = "",
                 **extra: Any) -> Json:
            out: Json = {"model": body["model"], "created_at": _now_rfc3339()}
            if chat:
                out["message"] = {"role": "assistant", "content": text}
                if thinking:
                    out["message"]["thinking"] = thinking
                if calls:
                    out["message"]["tool_calls"] = calls
            else:
                out["response"] = text
            return {**out, **extra}

        if chat and (problem := _ollama_images_problem(body.get("messages") or [])):
            return self._error(400, problem)
        if not (body.get("messages") if chat else body.get("prompt")):
            # Ollama's load/unload idiom: no input, answered at once and never streamed.
            if not unload and model in self.load_gates:
                await self.load_gates[model].wait()
            self._set_loaded(model, not unload)
            reason = "unload" if unload else "load"
            return web.json_response(line("", done_reason=reason, done=True), dumps=_dumps)
        prompt_tokens: int | None = None
        if chat and self.counting:
            options = body.get("options") or {}
            window = int(options.get("num_ctx") or self.context_length)
            predict = int(options.get("num_predict") or -1)
            # Unless told not to, Ollama shortens a prompt that does not fit, silently.
            measured, refusal = self._measure(body, window, predict if predict >= 0 else window,
                                              truncates=body.get("truncate", True) is not False)
            if refusal is not None:
                return refusal
            prompt_tokens = min(measured.prompt, window)
        reply = self._next_reply(body if chat else None)
        if reply.status != 200:
            return self._error(reply.status, f"scripted failure ({reply.status})")
        was_loaded = model in self.loaded
        self._set_loaded(model, True)
        tools = [_ollama_call(i, t) for i, t in enumerate(reply.tool_calls)] if chat else []

        def stats(first_ns: int) -> Json:
            now = time.monotonic_ns()
            return {"done": True, "done_reason": reply.finish_reason,
                    "total_duration": now - started,
                    "load_duration": 0 if was_loaded else 1_000_000,
                    "prompt_eval_count": (reply.prompt_tokens if prompt_tokens is None
                                          else prompt_tokens),
                    "prompt_eval_duration": first_ns - started,
                    "eval_count": _completion_tokens(reply), "eval_duration": now - first_ns}

        if body.get("stream", True) is False:
            if not await self._wait_whole(request, reply):
                return web.Response()
            first_ns = started + int(reply.first_token_delay * 1e9)
            self._set_loaded(model, not unload)
            return web.json_response(
                line("".join(reply.chunks), tools, **stats(first_ns)), dumps=_dumps)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        # Thinking-capable models think unless the request says `think: false`.
        thoughts, texts = reply.thoughts_and_text(body.get("think") is not False)
        lines = [line("", thinking=t, done=False) for t in thoughts]
        # By default one line per tool call: clients must gather calls across lines.
        lines += [line(c, done=False) for c in texts]
        if reply.batch_tool_calls and tools:
            lines.append(line("", tools, done=False))
        else:
            lines += [line("", [t], done=False) for t in tools]
        first = await self._pump(request, resp, reply, [(_dumps(x) + "\n").encode() for x in lines])
        if first is None:
            return resp
        tail = line("", **stats(first)) | ({} if chat else {"context": [1, 2, 3]})
        await resp.write((_dumps(tail) + "\n").encode())
        self._set_loaded(model, not unload)
        await resp.write_eof()
        return resp


def _context_error(prompt: int, window: int) -> Json:
    """llama.cpp's refusal of a prompt larger than the window (llama-server, Ollama)."""
    return {"code": 400, "message": f"request ({prompt} tokens) exceeds the available context "
                                    f"size ({window} tokens), try increasing it",
            "type": "exceed_context_size_error", "n_prompt_tokens": prompt, "n_ctx": window}


def _id_field(call: ToolCall, default: str) -> Json:
    given = default if call.id is None else call.id
    return {"id": given} if given else {}


def _ollama_call(index: int, call: ToolCall) -> Json:
    arguments: object = call.raw_arguments if call.raw_arguments is not None else call.arguments
    return {**_id_field(call, f"call_{index}"),
            "function": {"index": index, "name": call.name, "arguments": arguments}}


def _openai_tool_deltas(reply: ScriptedReply, calls: list[Json]) -> list[Json]:
    """Real servers send a call's id and name first, then its argument text in fragments;
    clients must merge them by index, so the fake makes them do it."""
    headers = [{**c, "function": {"name": c["function"]["name"], "arguments": ""}}
               for c in calls]
    pieces = [[{"index": c["index"], "function": {"arguments": piece}} for piece in t.fragments()]
              for c, t in zip(calls, reply.tool_calls, strict=True)]
    rounds = [[p[k] for p in pieces if k < len(p)] for k in range(max(map(len, pieces),
                                                                      default=0))]
    if reply.batch_tool_calls:
        groups = [headers, *rounds] if calls else []
    elif reply.interleave_arguments:
        groups = [[h] for h in headers] + [[p] for r in rounds for p in r]
    else:
        groups = [g for h, p in zip(headers, pieces, strict=True) for g in ([h], *[[x] for x in p])]
    return [{"tool_calls": group} for group in groups]


_OPENAI_ERROR_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}


def _sse(payload: Json) -> bytes:
    return f"data: {_dumps(payload)}\n\n".encode()


class FakeOpenAI(_FakeBackend):
    """An OpenAI-compatible server (the surface mlx_lm.server, llama-server and vLLM share)."""

    _url_suffix = "/v1"
    _chat_path = "/v1/chat/completions"

    def __init__(self, models: Sequence[str] = ("llama3.2:3b",), *,
                 api_key: str | None = None, context_length: int = 8192,
                 count_tokens: bool = False, llama_server: bool = False) -> None:
        super().__init__(models, count_tokens)
        # llama-server's flavour: its usage has no prompt_tokens_details; the cache reuse is in
        # the `timings` object of the final chunk (cache_n, prompt_n, predicted_n, ...).
        self.llama_server = llama_server
        self.api_key = api_key
        self.context_length = context_length
        self._completions = 0

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)

    def _error(self, status: int, message: str) -> web.Response:
        kind, code = _OPENAI_ERROR_KINDS.get(status, ("server_error", None))
        error = {"message": message, "type": kind, "param": None, "code": code}
        return web.json_response({"error": error}, status=status, dumps=_dumps)

    def _too_long(self, prompt: int, window: int) -> web.Response:
        # llama-server's shape; the window is the server's, whatever the request asks.
        return web.json_response({"error": _context_error(prompt, window)}, status=400,
                                 dumps=_dumps)

    def _guard(self, request: web.Request) -> web.Response | None:
        wanted = f"Bearer {self.api_key}"
        if self.api_key is None or request.headers.get("Authorization") == wanted:
            return None
        return self._error(401, "Incorrect API key provided.")

    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "fake"}
                for m in self.models]
        return web.json_response({"object": "list", "data": data}, dumps=_dumps)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        if not isinstance(body.get("messages"), list):
            return self._error(400, "'messages' is a required property")
        if problem := _openai_content_problem(body["messages"]):
            return self._error(400, problem)
        # mlx_lm.server and llama-server fall back to their loaded model when none is named.
        model = body.get("model") or self.models[0]
        if model not in self.models:
            return self._error(404, f"The model `{model}` does not exist.")
        prompt_tokens = None
        if self.counting:
            output = int(body.get("max_tokens") or self.context_length)
            measured, refusal = self._measure(body, self.context_length, output,
                                              truncates=False)
            if refusal is not None:
                return refusal
            prompt_tokens = measured.prompt
        # A one-token, unstreamed completion is how clients warm a server up: answered at
        # once, it leaves the scripted conversation to the requests that follow it.
        reply = ScriptedReply(chunks=("Hi",)) if _is_warm_up(body) else self._next_reply(body)
        if reply.status != 200:
            return self._error(reply.status, f"scripted failure ({reply.status})")
        if prompt_tokens is not None:
            reply = dataclasses.replace(reply, prompt_tokens=prompt_tokens)
        self._completions += 1
        head: Json = {"id": f"chatcmpl-{self._completions}", "created": int(time.time()),
                      "model": model, "system_fingerprint": "fp_fake"}
        calls: list[Json] = [
            {"index": i, **_id_field(t, f"call_{self._completions}_{i}"), "type": "function",
             "function": {"name": t.name, "arguments": t.argument_text()}}
            for i, t in enumerate(reply.tool_calls)]
        finish = "tool_calls" if calls and reply.finish_reason == "stop" else reply.finish_reason
        done = _completion_tokens(reply)
        # OpenAI's shape: the cached share of the prompt inside prompt_tokens_details.
        usage = {"prompt_tokens": reply.prompt_tokens, "completion_tokens": done,
                 "total_tokens": reply.prompt_tokens + done,
                 "prompt_tokens_details": {"cached_tokens": reply.cached_tokens,
                                           "audio_tokens": 0},
                 "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}}
        timings: Json = {}
        if self.llama_server:
            usage = {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
            timings = {"cache_n": reply.cached_tokens,
                       "prompt_n": reply.prompt_tokens - reply.cached_tokens,
                       "prompt_ms": 12.5, "predicted_n": done, "predicted_ms": 40.0}

        if body.get("stream") is not True:
            if not await self._wait_whole(request, reply):
                return web.Response()
            message: Json = {"role": "assistant",
                             "content": "".join(reply.chunks) if reply.chunks else None}
            if calls:
                message["tool_calls"] = calls
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            return web.json_response({**head, "object": "chat.completion", "choices": [choice],
                                      "usage": usage}, dumps=_dumps)

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def event(delta: Json, finish_reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None,
                      "finish_reason": finish_reason}
            chunk: Json = {**head, "object": "chat.completion.chunk", "choices": [choice]}
            if include_usage and not self.llama_server:  # OpenAI: null on all but the last
                chunk["usage"] = None
            if finish_reason is not None and timings:
                chunk["timings"] = timings
            return _sse(chunk)

        asked = (body.get("chat_template_kwargs") or {}).get("enable_thinking")
        thoughts, texts = reply.thoughts_and_text(asked is not False)
        thought_key = "reasoning" if reply.thinking_form == "reasoning" else "reasoning_content"
        deltas: list[Json] = [{"content": None, thought_key: t} for t in thoughts]
        deltas += [{"content": c} for c in texts]
        deltas += _openai_tool_deltas(reply, calls)
        deltas = deltas or [{"content": ""}]
        deltas[0] = {"role": "assistant", **deltas[0]}
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        if await self._pump(request, resp, reply, [event(d) for d in deltas]) is None:
            return resp
        await resp.write(event({}, finish))
        if include_usage:
            await resp.write(
                _sse({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage}))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def _completion_tokens(reply: ScriptedReply) -> int:
    return len(reply.chunks) if reply.completion_tokens is None else reply.completion_tokens


def _is_warm_up(body: Json) -> bool:
    """A one-token, unstreamed completion: how clients warm an OpenAI-compatible server."""
    return body.get("max_tokens") == 1 and not body.get("stream")
