"""A fake Telegram Bot API server that the real python-telegram-bot client can talk to.

It listens on 127.0.0.1 on a free port and speaks the Bot API's wire format: form-encoded,
JSON or multipart requests in, ``{"ok": ...}`` envelopes out. It records every call, parks
getUpdates long polls, serves uploaded and pushed files, validates message text the way
Telegram does (length, MarkdownV2 and HTML well-formedness) and injects failures. Inline
keyboards are kept on the messages they were sent or edited with; `press` queues the callback
query a person's press on one of their buttons would bring.
"""

from __future__ import annotations

import asyncio
import copy
import io
import json
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from typing import Any

from aiohttp import web
from PIL import Image

from tests.fakes.server import FakeServer

Json = dict[str, Any]
Handler = Callable[[Json, dict[str, bytes]], Awaitable[Any]]

MAX_TEXT = 4096
MAX_CAPTION = 1024
NOT_MODIFIED = (
    "message is not modified: specified new message content and reply markup are exactly "
    "the same as a current content and reply markup of the message"
)
# PTB JSON-encodes every non-string value; these stay raw so that a text of "42" stays a str.
_STRING_FIELDS = frozenset({
    "text", "caption", "parse_mode", "action", "file_id", "title", "performer", "emoji",
    "business_connection_id", "message_effect_id", "language_code", "inline_message_id",
    "description", "short_description", "name", "url", "secret_token", "callback_query_id",
})
MAX_CALLBACK_DATA = 64  # bytes
QUERY_INVALID = "query is too old and response timeout expired or query ID is invalid"
_CHAT_ACTIONS = frozenset({
    "typing", "upload_photo", "record_video", "upload_video", "record_voice", "upload_voice",
    "upload_document", "choose_sticker", "find_location", "record_video_note",
    "upload_video_note",
})
_MDV2_RESERVED = frozenset("_*[]()~`>#+-=|{}.!")
_MDV2_OPENERS = (("__", "Underline"), ("||", "Spoiler"), ("![", "CustomEmoji"), ("_", "Italic"),
                 ("*", "Bold"), ("~", "Strikethrough"), ("[", "TextUrl"))
_MDV2_CLOSERS = {"Underline": "__", "Spoiler": "||", "CustomEmoji": "]", "Italic": "_",
                 "Bold": "*", "Strikethrough": "~", "TextUrl": "]"}
_PRE_LANGUAGE = re.compile(r"[^\s`]*")
_HTML_TAGS = frozenset({"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span",
                        "tg-spoiler", "a", "code", "pre", "blockquote", "tg-emoji"})
_HTML_TAG = re.compile(
    r"<(/?)([a-zA-Z][\w-]*)((?:\s+[\w-]+(?:\s*=\s*(?:\"[^\"]*\"|'[^']*'|[^\s>\"']+))?)*)\s*>")
_HTML_ENTITY = re.compile(r"&(lt|gt|amp|quot|#\d+|#x[0-9a-fA-F]+);")
_HTML_NAMED = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
# Telegram's servers mark commands and @mentions in incoming text; PTB's CommandHandler needs it.
_AUTO_ENTITY = re.compile(r"(?P<bot_command>(?<![\w/])/[A-Za-z0-9_]{1,32}(?:@[A-Za-z0-9_]{5,32})?)"
                          r"|(?P<mention>(?<![\w@])@[A-Za-z0-9_]{5,32})")
# The longest sides Telegram makes of a photo (the smallest thumbnails up to its "w" size); each
# is a JPEG file of its own, and none is larger than the photo sent.
PHOTO_SIDES = (90, 320, 800, 1280, 2560)
_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png",
               "audio/ogg": "oga", "audio/mpeg": "mp3", "audio/mp4": "m4a", "audio/x-m4a": "m4a",
               "audio/wav": "wav", "application/pdf": "pdf", "text/plain": "txt"}
_ERROR_DESCRIPTIONS = {400: "Bad Request", 403: "Forbidden: bot was blocked by the user",
                       409: "Conflict: terminated by other getUpdates request; make sure that "
                            "only one bot instance is running"}


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    files: dict[str, bytes]
    at: float  # time.monotonic() when the request arrived
    status: int = 0  # HTTP status answered; stays 0 while pending or when the connection dropped


@dataclass
class StoredFile:
    file_id: str
    file_unique_id: str
    file_path: str
    data: bytes


class ApiError(Exception):
    def __init__(self, status: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.retry_after = retry_after

    def payload(self) -> Json:
        body: Json = {"ok": False, "error_code": self.status, "description": self.description}
        if self.retry_after is not None:
            body["parameters"] = {"retry_after": self.retry_after}
        return body


class _ParseError(Exception):
    pass


def _bad(description: str) -> ApiError:
    return ApiError(400, f"Bad Request: {description}")


def _byte_offset(text: str, index: int) -> int:
    return len(text[:index].encode())


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


Spans = list[tuple[str, int, int]]


def parse_markdown_v2(text: str) -> tuple[str, Spans]:
    """Plain text and entity spans, or _ParseError; modelled on Telegram's own parser."""
    out: list[str] = []
    spans: Spans = []
    stack: list[tuple[str, int, int]] = []  # kind, source index, output index
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and 0 < ord(text[i + 1]) <= 126:
            out.append(text[i + 1])
            i += 2
            continue
        if c not in _MDV2_RESERVED:
            out.append(c)
            i += 1
            continue
        if stack:
            kind, _, start = stack[-1]
            closer = _MDV2_CLOSERS[kind]
            # A single "_" followed by another "_" opens underline rather than closing italic.
            if text.startswith(closer, i) and not (kind == "Italic" and text.startswith("__", i)):
                stack.pop()
                i += len(closer)
                if kind in ("TextUrl", "CustomEmoji") and text.startswith("(", i):
                    i = _skip_url(text, i)
                spans.append((kind, start, len(out)))
                continue
        if c == "`":
            i = _parse_code(text, i, out, spans)
            continue
        opener = next(((k, len(m)) for m, k in _MDV2_OPENERS if text.startswith(m, i)), None)
        if opener is not None:
            stack.append((opener[0], i, len(out)))
            i += opener[1]
        elif c == ">" and (i == 0 or text[i - 1] == "\n"):
            i += 1  # a block quote line
        else:
            raise _ParseError(
                f"Character '{c}' is reserved and must be escaped with the preceding '\\'")
    if stack:
        kind, index, _ = stack[-1]
        raise _ParseError(f"Can't find end of {kind} entity at byte offset "
                          f"{_byte_offset(text, index)}")
    return "".join(out), spans


def _skip_url(text: str, i: int) -> int:
    j = i + 1
    while j < len(text):
        if text[j] == "\\":
            j += 2
        elif text[j] == ")":
            return j + 1
        else:
            j += 1
    raise _ParseError(f"Can't find end of a URL at byte offset {_byte_offset(text, i + 1)}")


def _parse_code(text: str, i: int, out: list[str], spans: Spans) -> int:
    fence, kind = ("```", "Pre") if text.startswith("```", i) else ("`", "Code")
    j, n = i + len(fence), len(text)
    if kind == "Pre":
        language = _PRE_LANGUAGE.match(text, j)
        end = language.end() if language else j
        if end > j and end < n and text[end] != "`":
            j = end
        if text[j:j + 1] in ("\n", "\r"):
            j += 1
    start = len(out)
    while j < n:
        if text[j] == "\\" and j + 1 < n and 0 < ord(text[j + 1]) <= 126:
            out.append(text[j + 1])
            j += 2
        elif text.startswith(fence, j):
            spans.append((kind, start, len(out)))
            return j + len(fence)
        else:
            out.append(text[j])
            j += 1
    raise _ParseError(f"Can't find end of {kind} entity at byte offset {_byte_offset(text, i)}")


def parse_html(text: str) -> tuple[str, Spans]:
    out: list[str] = []
    spans: Spans = []
    stack: list[tuple[str, int]] = []  # tag, output index
    i = 0
    while i < len(text):
        c = text[i]
        entity = _HTML_ENTITY.match(text, i) if c == "&" else None
        if entity is not None:
            name = entity.group(1)
            if name.startswith("#"):
                out.append(chr(int(name[2:], 16) if name[1] == "x" else int(name[1:])))
            else:
                out.append(_HTML_NAMED[name])
            i = entity.end()
            continue
        if c != "<":
            out.append(c)
            i += 1
            continue
        tag, offset = _HTML_TAG.match(text, i), _byte_offset(text, i)
        if tag is None:
            raise _ParseError(f"Unclosed start tag at byte offset {offset}")
        name = tag.group(2).lower()
        if not tag.group(1):
            if name not in _HTML_TAGS:
                raise _ParseError(f'Unsupported start tag "{name}" at byte offset {offset}')
            stack.append((name, len(out)))
        elif not stack:
            raise _ParseError(f"Unexpected end tag at byte offset {offset}")
        elif stack[-1][0] != name:
            raise _ParseError(f'Unmatched end tag at byte offset {offset}, expected '
                              f'"</{stack[-1][0]}>", found "</{name}>"')
        else:
            opened, start = stack.pop()
            spans.append((opened, start, len(out)))
        i = tag.end()
    if stack:
        raise _ParseError(f'Can\'t find end tag corresponding to start tag "{stack[-1][0]}"')
    return "".join(out), spans


def _render(text: str, parse_mode: object, limit: int, too_long: str) -> tuple[str, Spans]:
    """Text as the chat shows it (entities parsed, ends trimmed) plus its formatting spans."""
    mode = parse_mode.lower() if isinstance(parse_mode, str) else ""
    try:
        if mode == "markdownv2":
            plain, spans = parse_markdown_v2(text)
        elif mode == "html":
            plain, spans = parse_html(text)
        else:
            plain, spans = text, []
    except _ParseError as exc:
        raise _bad(f"can't parse entities: {exc}") from None
    plain = plain.strip()
    if len(plain) > limit:
        raise _bad(too_long)
    return plain, spans


def _is_ogg_opus(data: bytes) -> bool:
    return data.startswith(b"OggS") and b"OpusHead" in data[:512]


def _ogg_seconds(data: bytes) -> int:
    # An Opus stream's last granule position counts samples at 48 kHz, whatever the input rate.
    last = data.rfind(b"OggS")
    if last < 0 or len(data) < last + 14:
        return 0
    return max(0, round(int.from_bytes(data[last + 6:last + 14], "little", signed=True) / 48000))


def _decode_field(key: str, value: str) -> Any:
    if key in _STRING_FIELDS:
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


async def _read_params(request: web.Request) -> tuple[Json, dict[str, bytes]]:
    raw: dict[str, str] = dict(request.query)
    body: Json = {}
    files: dict[str, bytes] = {}
    if request.can_read_body:
        if request.content_type == "application/json":
            decoded = await request.json()
            body = decoded if isinstance(decoded, dict) else {}
        else:
            for key, value in (await request.post()).items():
                if isinstance(value, web.FileField):
                    files[key] = value.file.read()
                else:
                    raw[key] = value if isinstance(value, str) else bytes(value).decode()
    return {**{k: _decode_field(k, v) for k, v in raw.items()}, **body}, files


def _response(body: Json, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(body), status=status, content_type="application/json")


class FakeTelegram(FakeServer):
    """Point PTB at it with ``.base_url(fake.base_url).base_file_url(fake.base_file_url)``.

    Chats are remembered from pushed updates (type, title); an unknown positive chat id is a
    private chat and a negative one a group. Message ids count up per chat, shared by both sides.
    """

    def __init__(self, token: str = "123456:TEST-token", bot_username: str = "hearth_test_bot",
                 bot_id: int = 123456) -> None:
        self.token = token
        self.bot_id = bot_id
        self.bot_user: Json = {"id": bot_id, "is_bot": True, "first_name": "Hearth",
                               "username": bot_username}
        self.calls: list[Call] = []
        self.downloads: list[str] = []  # file paths fetched from the file endpoint
        self.edit_floor: float | None = None
        super().__init__()
        self._closing = False
        self._pending: list[Json] = []
        self._next_update_id = 100_000
        self._wakeup = asyncio.Event()
        self._files: dict[str, StoredFile] = {}
        self._paths: dict[str, StoredFile] = {}
        self._chats: dict[int, Json] = {}
        self._last_message_id: dict[int, int] = {}
        self._messages: dict[tuple[int, int], Json] = {}
        self._content: dict[tuple[int, int], object] = {}  # what "not modified" compares
        self._sent: dict[int, list[Json]] = {}
        self._last_text_at: dict[int, float] = {}
        self._failures: dict[str, deque[ApiError]] = {}
        self._drops: dict[str, int] = {}
        self.delays: dict[str, float] = {}  # method → seconds each call takes, as a slow link
        self._commands: dict[str, list[Json]] = {}
        self._next_query_id = 1
        self._queries: set[str] = set()  # pressed, not answered yet
        self.callback_answers: dict[str, Json] = {}  # callback query id → the answer's params
        methods: list[tuple[str, Handler]] = [
            ("getMe", self._get_me), ("getUpdates", self._get_updates),
            ("deleteWebhook", self._delete_webhook),
            ("sendMessage", self._send_message), ("editMessageText", self._edit_message_text),
            ("sendMessageDraft", self._send_message_draft), ("sendChatAction", self._chat_action),
            ("getFile", self._get_file),
            ("sendVoice", partial(self._send_media, "voice", "audio/ogg")),
            ("sendAudio", partial(self._send_media, "audio", "audio/mpeg")),
            ("sendDocument", partial(self._send_media, "document", "application/octet-stream")),
            ("deleteMessage", self._delete_message), ("setMyCommands", self._set_commands),
            ("getMyCommands", self._get_commands),
            ("editMessageReplyMarkup", self._edit_reply_markup),
            ("answerCallbackQuery", self._answer_callback_query),
        ]
        # Bot API method names are case-insensitive; calls are recorded under the canonical name.
        self._methods = {name.lower(): (name, handler) for name, handler in methods}

    # lifecycle

    def build_app(self) -> web.Application:
        self._closing = False
        app = web.Application(client_max_size=64 * 1024 * 1024)  # voice notes go up to 50 MB
        app.router.add_route("*", "/bot{token}/{method}", self._api)
        app.router.add_get("/file/bot{token}/{path:.+}", self._download)
        return app

    async def closing(self) -> None:
        # Parked polls must return first, or aiohttp's cleanup waits them out.
        self._closing = True
        self._wake()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port()}/bot"

    @property
    def base_file_url(self) -> str:
        return f"http://127.0.0.1:{self._port()}/file/bot"

    def _port(self) -> int:
        if not self.started:
            raise RuntimeError("FakeTelegram is not started")
        return self.port

    # what the tests inspect

    def calls_to(self, method: str) -> list[Call]:
        return [call for call in self.calls if call.method == method]

    def sent_messages(self, chat_id: int) -> list[Json]:
        """The bot's messages still in the chat, as they read now (edits applied)."""
        return copy.deepcopy(self._sent.get(chat_id, []))

    def drafts(self, chat_id: int) -> list[str]:
        return [str(call.params.get("text", "")) for call in self.calls_to("sendMessageDraft")
                if call.status == 200 and call.params.get("chat_id") == chat_id]

    @property
    def voices_sent(self) -> list[Call]:
        return [call for call in self.calls_to("sendVoice") if call.status == 200]

    # what the tests inject

    def push_text(self, *, chat_id: int, text: str, from_id: int, from_name: str = "Alice",
                  chat_type: str = "private", chat_title: str | None = None,
                  reply_to_message_id: int | None = None, entities: list[Json] | None = None,
                  message_id: int | None = None) -> Json:
        message = self._inbound(chat_id, from_id, from_name, chat_type, chat_title, message_id,
                                reply_to_message_id)
        message["text"] = text
        entities = self._auto_entities(text) if entities is None else entities
        if entities:
            message["entities"] = entities
        return self._queue({"message": message})

    def push_voice(self, *, chat_id: int, from_id: int, data: bytes, duration: int,
                   mime_type: str = "audio/ogg", from_name: str = "Alice",
                   chat_type: str = "private", chat_title: str | None = None,
                   reply_to_message_id: int | None = None,
                   message_id: int | None = None) -> Json:
        message = self._inbound(chat_id, from_id, from_name, chat_type, chat_title, message_id,
                                reply_to_message_id)
        message["voice"] = self._media("voice", data, mime_type, duration=duration)
        return self._queue({"message": message})

    def push_audio(self, *, chat_id: int, from_id: int, data: bytes, duration: int,
                   mime_type: str = "audio/mpeg", file_name: str | None = None,
                   title: str | None = None, from_name: str = "Alice",
                   chat_type: str = "private", chat_title: str | None = None,
                   reply_to_message_id: int | None = None,
                   message_id: int | None = None) -> Json:
        message = self._inbound(chat_id, from_id, from_name, chat_type, chat_title, message_id,
                                reply_to_message_id)
        message["audio"] = self._media("audio", data, mime_type, duration=duration,
                                       file_name=file_name, title=title)
        return self._queue({"message": message})

    def push_photo(self, *, chat_id: int, from_id: int, data: bytes, caption: str | None = None,
                   from_name: str = "Alice", chat_type: str = "private",
                   chat_title: str | None = None, caption_entities: list[Json] | None = None,
                   message_id: int | None = None) -> Json:
        """A photo as Telegram delivers it: re-encoded as JPEG in several sizes, smallest
        first, each its own file with its `file_size`; the caption's mentions are marked."""
        message = self._inbound(chat_id, from_id, from_name, chat_type, chat_title, message_id,
                                None)
        message["photo"] = self._photo_sizes(data)
        self._caption(message, caption, caption_entities)
        return self._queue({"message": message})

    def push_document(self, *, chat_id: int, from_id: int, data: bytes, mime_type: str,
                      file_name: str, caption: str | None = None, from_name: str = "Alice",
                      chat_type: str = "private", chat_title: str | None = None,
                      message_id: int | None = None) -> Json:
        """A file sent as a document: kept byte for byte, whatever it holds."""
        message = self._inbound(chat_id, from_id, from_name, chat_type, chat_title, message_id,
                                None)
        message["document"] = self._media("document", data, mime_type, file_name=file_name)
        self._caption(message, caption, None)
        return self._queue({"message": message})

    def buttons(self, chat_id: int, message_id: int) -> list[Json]:
        """The inline buttons a message shows now, row after row; [] when it has none."""
        message = self._messages.get((chat_id, message_id), {})
        keyboard = message.get("reply_markup", {}).get("inline_keyboard", [])
        return [copy.deepcopy(button) for row in keyboard for button in row]

    def press(self, chat_id: int, message_id: int, data: str, from_id: int,
              from_name: str = "Alice", *, stale: bool = False) -> Json:
        """Queue the callback query of `from_id` pressing the button with `data` on a message.

        Telegram only brings presses on buttons the message shows; `stale=True` stands for a
        client still showing a keyboard the bot has since removed or replaced.
        """
        message = self._messages.get((chat_id, message_id))
        if message is None:
            raise ValueError(f"there is no message {message_id} in chat {chat_id}")
        if not stale and data not in {b.get("callback_data")
                                      for b in self.buttons(chat_id, message_id)}:
            raise ValueError(f"message {message_id} shows no button with data {data!r}")
        query_id = str(self._next_query_id)
        self._next_query_id += 1
        self._queries.add(query_id)
        query: Json = {"id": query_id,
                       "from": {"id": from_id, "is_bot": False, "first_name": from_name},
                       "message": copy.deepcopy(message),
                       "chat_instance": f"instance-{chat_id}", "data": data}
        return self._queue({"callback_query": query})

    def push_update(self, update: Json) -> None:
        """Queue a raw update. Without an update_id it gets the next one; an update whose id
        is below the offset the client already acknowledged is never delivered, as on Telegram."""
        if "update_id" not in update:
            update = {"update_id": self._next_update_id, **update}
        self._next_update_id = max(self._next_update_id, int(update["update_id"]) + 1)
        self._pending.append(update)
        self._wake()

    def fail_next(self, method: str, *, status: int = 429, retry_after: int | None = None,
                  description: str | None = None, times: int = 1) -> None:
        if status == 429 and retry_after is None:
            retry_after = 1  # Telegram always tells a flooded client how long to wait
        if description is None:
            description = (f"Too Many Requests: retry after {retry_after}" if status == 429
                           else _ERROR_DESCRIPTIONS.get(status) or HTTPStatus(status).phrase)
        queue = self._failures.setdefault(method, deque())
        queue.extend(ApiError(status, description, retry_after) for _ in range(times))

    def drop_next(self, method: str, times: int = 1) -> None:
        self._drops[method] = self._drops.get(method, 0) + times

    # HTTP plumbing

    async def _api(self, request: web.Request) -> web.StreamResponse:
        params, files = await _read_params(request)
        name, handler = self._methods.get(request.match_info["method"].lower(),
                                          (request.match_info["method"], None))
        call = Call(name, params, files, time.monotonic())
        self.calls.append(call)
        try:
            if request.match_info["token"] != self.token:
                raise ApiError(401, "Unauthorized")
            if handler is None:
                raise ApiError(404, "Not Found")
            if self._drops.get(name, 0) > 0:
                self._drops[name] -= 1
                if request.transport is not None:
                    request.transport.close()
                return web.Response(status=500)  # never reaches the client
            failures = self._failures.get(name)
            if failures:
                raise failures.popleft()
            if name in self.delays:
                await asyncio.sleep(self.delays[name])
            body: Json = {"ok": True, "result": await handler(params, files)}
            call.status = 200
        except ApiError as exc:
            body, call.status = exc.payload(), exc.status
        return _response(body, call.status)

    async def _download(self, request: web.Request) -> web.StreamResponse:
        stored = self._paths.get(request.match_info["path"])
        if request.match_info["token"] != self.token or stored is None:
            return _response(ApiError(404, "Not Found").payload(), 404)
        self.downloads.append(stored.file_path)
        return web.Response(body=stored.data, content_type="application/octet-stream")

    def _wake(self) -> None:
        event, self._wakeup = self._wakeup, asyncio.Event()
        event.set()

    # shared building blocks

    def _queue(self, update: Json) -> Json:
        update = {"update_id": self._next_update_id, **update}
        self.push_update(update)
        return update

    def _store(self, folder: str, data: bytes, mime_type: str) -> StoredFile:
        n = len(self._files) + 1
        path = f"{folder}/file_{n}.{_EXTENSIONS.get(mime_type, 'bin')}"
        stored = StoredFile(f"fake-{folder}-{n}-{self.bot_id}", f"uniq{n}", path, data)
        self._files[stored.file_id] = self._paths[path] = stored
        return stored

    def _media(self, kind: str, data: bytes, mime_type: str, **extra: Any) -> Json:
        folder = {"voice": "voice", "audio": "music"}.get(kind, "documents")
        stored = self._store(folder, data, mime_type)
        media = {"file_id": stored.file_id, "file_unique_id": stored.file_unique_id,
                 "mime_type": mime_type, "file_size": len(data)}
        return media | {k: v for k, v in extra.items() if v is not None}

    def _photo_sizes(self, data: bytes) -> list[Json]:
        with Image.open(io.BytesIO(data)) as original:
            original.load()
            image = original.convert("RGB")
        longest = max(image.size)
        sides = [side for side in PHOTO_SIDES if side < longest] + [min(longest, PHOTO_SIDES[-1])]
        sizes: list[Json] = []
        for side in dict.fromkeys(sides):
            copy_ = image.copy()
            copy_.thumbnail((side, side))
            out = io.BytesIO()
            copy_.save(out, format="JPEG", quality=87)
            stored = self._store("photos", out.getvalue(), "image/jpeg")
            sizes.append({"file_id": stored.file_id, "file_unique_id": stored.file_unique_id,
                          "width": copy_.width, "height": copy_.height,
                          "file_size": len(stored.data)})
        return sizes

    def _caption(self, message: Json, caption: str | None,
                 entities: list[Json] | None) -> None:
        if caption is None:
            return
        if len(caption) > MAX_CAPTION:
            raise ValueError(f"Telegram refuses captions over {MAX_CAPTION} characters")
        message["caption"] = caption
        entities = self._auto_entities(caption) if entities is None else entities
        if entities:
            message["caption_entities"] = entities

    def _chat(self, chat_id: int) -> Json:
        if chat_id in self._chats:
            return self._chats[chat_id]
        if chat_id > 0:
            return {"id": chat_id, "type": "private", "first_name": "User"}
        kind = "supergroup" if str(chat_id).startswith("-100") else "group"
        return {"id": chat_id, "type": kind, "title": "Group"}

    def _next_message_id(self, chat_id: int, wanted: int | None = None) -> int:
        last = self._last_message_id.get(chat_id, 0)
        message_id = last + 1 if wanted is None else wanted
        self._last_message_id[chat_id] = max(last, message_id)
        return message_id

    def _reply_target(self, chat_id: int, message_id: int) -> Json:
        # Telegram nests only one level of reply_to_message.
        target = self._messages.get((chat_id, message_id))
        if target is None:
            return {"message_id": message_id, "date": int(time.time()),
                    "chat": self._chat(chat_id)}
        return {k: v for k, v in target.items() if k != "reply_to_message"}

    def _inbound(self, chat_id: int, from_id: int, from_name: str, chat_type: str,
                 chat_title: str | None, message_id: int | None,
                 reply_to_message_id: int | None) -> Json:
        chat: Json = {"id": chat_id, "type": chat_type}
        if chat_type == "private":
            chat["first_name"] = from_name
        else:
            chat["title"] = chat_title or "Test group"
        self._chats[chat_id] = chat
        message_id = self._next_message_id(chat_id, message_id)
        message: Json = {"message_id": message_id, "date": int(time.time()), "chat": chat,
                         "from": {"id": from_id, "is_bot": False, "first_name": from_name}}
        if reply_to_message_id is not None:
            message["reply_to_message"] = self._reply_target(chat_id, reply_to_message_id)
        self._messages[(chat_id, message_id)] = message
        return message

    @staticmethod
    def _auto_entities(text: str) -> list[Json]:
        return [{"type": m.lastgroup, "offset": _utf16_len(text[:m.start()]),
                 "length": _utf16_len(m.group())} for m in _AUTO_ENTITY.finditer(text)]

    def _outbound(self, chat_id: int, params: Json, **content: Any) -> Json:
        message: Json = {"message_id": self._next_message_id(chat_id), "date": int(time.time()),
                         "chat": self._chat(chat_id), "from": self.bot_user, **content}
        reply = params.get("reply_parameters")
        if isinstance(reply, dict) and isinstance(reply.get("message_id"), int):
            message["reply_to_message"] = self._reply_target(chat_id, reply["message_id"])
        self._messages[(chat_id, message["message_id"])] = message
        self._sent.setdefault(chat_id, []).append(message)
        return message

    @staticmethod
    def _chat_id(params: Json) -> int:
        chat_id = params.get("chat_id")
        if chat_id is None or chat_id == "":
            raise _bad("chat_id is empty")
        if isinstance(chat_id, bool) or not isinstance(chat_id, int):
            raise _bad("chat not found")
        return chat_id

    def _message_key(self, params: Json) -> tuple[int, int]:
        message_id = params.get("message_id")
        if not isinstance(message_id, int):
            raise _bad("message identifier is not specified")
        return self._chat_id(params), message_id

    def _flood_check(self, chat_id: int) -> None:
        last = self._last_text_at.get(chat_id)
        if self.edit_floor is not None and last is not None \
                and time.monotonic() - last < self.edit_floor:
            raise ApiError(429, "Too Many Requests: retry after 1", retry_after=1)

    @staticmethod
    def _inline_markup(params: Json) -> Json:
        """{"reply_markup": ...} for an inline keyboard with buttons, checked as Telegram
        checks it; {} for none (an empty keyboard takes the buttons away)."""
        markup = params.get("reply_markup")
        if markup is None:
            return {}
        keyboard = markup.get("inline_keyboard") if isinstance(markup, dict) else None
        if keyboard is None:
            return {}  # reply keyboards and the like belong to the chat, not the message
        if not isinstance(keyboard, list) or not all(isinstance(r, list) for r in keyboard):
            raise _bad("can't parse inline keyboard button: InlineKeyboardButton must be an "
                       "Object")
        for row in keyboard:
            for button in row:
                if not isinstance(button, dict) or not button.get("text"):
                    raise _bad("can't parse inline keyboard button: Text buttons are "
                               "unallowed in the inline keyboard")
                data = button.get("callback_data")
                if data is not None and not 1 <= len(str(data).encode()) <= MAX_CALLBACK_DATA:
                    raise _bad("BUTTON_DATA_INVALID")
        if not any(keyboard):
            return {}
        return {"reply_markup": {"inline_keyboard": keyboard}}

    def _text(self, params: Json, field: str, limit: int, too_long: str) -> tuple[str, Spans]:
        return _render(str(params.get(field, "")), params.get("parse_mode"), limit, too_long)

    # Bot API methods

    async def _get_me(self, params: Json, files: dict[str, bytes]) -> Json:
        return self.bot_user | {"can_join_groups": True, "can_read_all_group_messages": False,
                                "supports_inline_queries": False}

    async def _get_updates(self, params: Json, files: dict[str, bytes]) -> list[Json]:
        offset, limit = int(params.get("offset") or 0), int(params.get("limit") or 100)
        if offset:
            # Asking with an offset confirms, and forgets, every update below it.
            self._pending = [u for u in self._pending if u["update_id"] >= offset]
        deadline = time.monotonic() + float(params.get("timeout") or 0)
        while not self._pending and not self._closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
        return [u for u in self._pending if u["update_id"] >= offset][:limit]

    async def _delete_webhook(self, params: Json, files: dict[str, bytes]) -> bool:
        if params.get("drop_pending_updates") is True:
            self._pending.clear()
        return True

    async def _send_message(self, params: Json, files: dict[str, bytes]) -> Json:
        chat_id = self._chat_id(params)
        text, spans = self._text(params, "text", MAX_TEXT, "message is too long")
        if not text:
            raise _bad("message text is empty")
        self._flood_check(chat_id)
        extra: Json = {"entities": params["entities"]} if params.get("entities") else {}
        extra |= self._inline_markup(params)
        message = self._outbound(chat_id, params, text=text, **extra)
        self._content[(chat_id, message["message_id"])] = (text, spans,
                                                           params.get("reply_markup"))
        self._last_text_at[chat_id] = time.monotonic()
        return message

    async def _edit_message_text(self, params: Json, files: dict[str, bytes]) -> Json:
        key = self._message_key(params)
        chat_id, message = key[0], self._messages.get(key)
        if message is None:
            raise _bad("message to edit not found")
        if message["from"].get("id") != self.bot_id:
            raise _bad("message can't be edited")
        if "text" not in message:
            raise _bad("there is no text in the message to edit")
        text, spans = self._text(params, "text", MAX_TEXT, "message is too long")
        if not text:
            raise _bad("message text is empty")
        content = (text, spans, params.get("reply_markup"))
        if self._content.get(key) == content:
            raise _bad(NOT_MODIFIED)
        self._flood_check(chat_id)
        message["text"] = text
        message["edit_date"] = int(time.time())
        message.pop("entities", None)
        if params.get("entities"):
            message["entities"] = params["entities"]
        # As on Telegram, an edit without a markup takes the inline keyboard away.
        message.pop("reply_markup", None)
        message.update(self._inline_markup(params))
        self._content[key] = content
        self._last_text_at[chat_id] = time.monotonic()
        return message

    async def _edit_reply_markup(self, params: Json, files: dict[str, bytes]) -> Json:
        key = self._message_key(params)
        message = self._messages.get(key)
        if message is None:
            raise _bad("message to edit not found")
        if message["from"].get("id") != self.bot_id:
            raise _bad("message can't be edited")
        markup = self._inline_markup(params)
        if message.get("reply_markup") == markup.get("reply_markup"):
            raise _bad(NOT_MODIFIED)
        message.pop("reply_markup", None)
        message.update(markup)
        message["edit_date"] = int(time.time())
        previous = self._content.get(key)
        if isinstance(previous, tuple):
            self._content[key] = (*previous[:2], params.get("reply_markup"))
        return message

    async def _answer_callback_query(self, params: Json, files: dict[str, bytes]) -> bool:
        query_id = params.get("callback_query_id")
        if not isinstance(query_id, str) or query_id not in self._queries:
            raise _bad(QUERY_INVALID)
        if len(str(params.get("text") or "")) > 200:
            raise _bad("MESSAGE_TOO_LONG")
        self._queries.discard(query_id)
        self.callback_answers[query_id] = dict(params)
        return True

    async def _send_message_draft(self, params: Json, files: dict[str, bytes]) -> bool:
        chat_id = self._chat_id(params)
        if self._chat(chat_id)["type"] != "private":
            raise _bad("message drafts can be sent only to private chats")
        draft_id = params.get("draft_id")
        if not isinstance(draft_id, int) or isinstance(draft_id, bool) or draft_id == 0:
            raise _bad("draft_id must be a non-zero integer")
        self._text(params, "text", MAX_TEXT, "message is too long")  # empty means "Thinking…"
        return True

    async def _chat_action(self, params: Json, files: dict[str, bytes]) -> bool:
        self._chat_id(params)
        if params.get("action") not in _CHAT_ACTIONS:
            raise _bad("wrong parameter action in request")
        return True

    async def _get_file(self, params: Json, files: dict[str, bytes]) -> Json:
        stored = self._files.get(str(params.get("file_id")))
        if stored is None:
            raise _bad("invalid file_id")
        return {"file_id": stored.file_id, "file_unique_id": stored.file_unique_id,
                "file_size": len(stored.data), "file_path": stored.file_path}

    async def _send_media(self, kind: str, mime_type: str, params: Json,
                          files: dict[str, bytes]) -> Json:
        chat_id = self._chat_id(params)
        data = files.get(kind)
        if data is None:
            reused = self._files.get(str(params.get(kind)))
            if reused is None:
                raise _bad(f"there is no {kind} in the request" if kind not in params
                           else "wrong file identifier/HTTP URL specified")
            data = reused.data
        caption, _ = self._text(params, "caption", MAX_CAPTION, "message caption is too long")
        extra: Json = {}
        if kind == "voice" and not _is_ogg_opus(data):
            # Telegram only draws a voice bubble for OGG/Opus; anything else becomes a file.
            kind, mime_type = "document", "application/octet-stream"
        if kind in ("voice", "audio"):
            extra["duration"] = int(params.get("duration") or _ogg_seconds(data))
        if kind == "audio":
            extra |= {"title": params.get("title"), "performer": params.get("performer")}
        media = self._media(kind, data, mime_type, **extra)
        content: Json = {kind: media} | ({"caption": caption} if caption else {})
        return self._outbound(chat_id, params, **content)

    async def _delete_message(self, params: Json, files: dict[str, bytes]) -> bool:
        chat_id, message_id = self._message_key(params)
        message = self._messages.pop((chat_id, message_id), None)
        if message is None:
            raise _bad("message to delete not found")
        self._sent[chat_id] = [m for m in self._sent.get(chat_id, []) if m is not message]
        return True

    @staticmethod
    def _commands_key(params: Json) -> str:
        return json.dumps([params.get("scope"), params.get("language_code") or ""])

    async def _set_commands(self, params: Json, files: dict[str, bytes]) -> bool:
        commands = params.get("commands")
        if not isinstance(commands, list) or not all(
            isinstance(c, dict) and re.fullmatch(r"[a-z0-9_]{1,32}", str(c.get("command")))
            and 1 <= len(str(c.get("description", ""))) <= 256 for c in commands
        ):
            raise _bad("BOT_COMMAND_INVALID")
        self._commands[self._commands_key(params)] = commands
        return True

    async def _get_commands(self, params: Json, files: dict[str, bytes]) -> list[Json]:
        return self._commands.get(self._commands_key(params), [])
