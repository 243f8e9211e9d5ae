"""A protocol-faithful fake Discord: REST API v10, gateway and CDN on one local aiohttp server.

The real discord.py client talks to it over real sockets. Every HTTP request is recorded as a
`Call`; failures (429, 5xx, dropped connections, gateway closes) can be injected; gateway
dispatches are kept per session so that a RESUME replays exactly what the client missed.

Compression: when the client asks for `compress=zlib-stream` (discord.py does unless zstandard
is importable) frames are zlib-compressed with one compressor per connection and a
Z_SYNC_FLUSH per frame, as Discord does. Anything else (e.g. `zstd-stream`) gets plain text
frames, which discord.py accepts as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
import json
import mimetypes
import re
import secrets
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

import discord.gateway
import discord.http
import yarl
from aiohttp import BodyPartReader, WSMsgType, web
from PIL import Image

from tests.fakes.server import FakeServer

Json = dict[str, Any]

API_PREFIX = "/api/v10"
DISCORD_EPOCH_MS = 1_420_070_400_000
FLAG_VOICE_MESSAGE = 1 << 13  # 8192
MAX_CONTENT = 2000
THREAD_TYPE = 11  # a public thread: a channel of its own, listed under "threads" in GUILD_CREATE

INTENT_GUILD_MEMBERS = 1 << 1
INTENT_GUILD_PRESENCES = 1 << 8
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_DIRECT_MESSAGES = 1 << 12
INTENT_MESSAGE_CONTENT = 1 << 15

# VIEW_CHANNEL, SEND_MESSAGES, EMBED_LINKS, ATTACH_FILES, READ_MESSAGE_HISTORY, SEND_VOICE_MESSAGES
BOT_PERMISSIONS = (1 << 10) | (1 << 11) | (1 << 14) | (1 << 15) | (1 << 16) | (1 << 46)
USER_MENTION = re.compile(r"<@!?([0-9]{15,20})>")
MESSAGE_PATH = re.compile(r"/channels/[0-9]+/messages/([0-9]+)")


@dataclass
class Call:
    """One HTTP request as received (API paths relative to /api/v10, CDN paths as served)."""

    method: str
    path: str
    json: Any  # the JSON body, or the parsed payload_json of a multipart body
    files: dict[str, bytes]  # keyed by multipart field name, e.g. "files[0]"
    headers: dict[str, str]
    at: float  # time.monotonic()
    status: int = 0  # what the fake answered; stays 0 when the connection was dropped


@dataclass
class _Failure:
    method: str
    path_suffix: str
    status: int
    retry_after: float
    times: int


class _Conn:
    """One gateway socket; a single writer task keeps frame order and the zlib stream intact."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request, zlib_stream: bool) -> None:
        self.ws = ws
        self.request = request
        self.queue: asyncio.Queue[Json | None] = asyncio.Queue()
        self._zlib = zlib.compressobj() if zlib_stream else None
        self.writer = asyncio.create_task(self._write())

    def send(self, frame: Json) -> None:
        self.queue.put_nowait(frame)

    async def _write(self) -> None:
        while (frame := await self.queue.get()) is not None:
            text = json.dumps(frame)
            try:
                if self._zlib is None:
                    await self.ws.send_str(text)
                else:
                    data = self._zlib.compress(text.encode()) + self._zlib.flush(zlib.Z_SYNC_FLUSH)
                    await self.ws.send_bytes(data)
            except (ConnectionError, RuntimeError):
                return  # the socket is gone; the session backlog still holds the frame

    async def stop_writer(self) -> None:
        self.queue.put_nowait(None)
        await self.writer


@dataclass
class _Session:
    id: str
    intents: int
    conn: _Conn | None
    seq: int = 0
    backlog: list[Json] = field(default_factory=list)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def _voice_flag(attachments: list[Json] | None) -> int:
    """Inbound audio with a duration and a waveform is what a user's voice message looks like."""
    voice = any("waveform" in a and "duration_secs" in a for a in attachments or [])
    return FLAG_VOICE_MESSAGE if voice else 0


def _error(status: int, code: int, message: str) -> tuple[int, Json]:
    return status, {"message": message, "code": code}


def _form_error(field_name: str, code: str, message: str) -> tuple[int, Json]:
    errors = {field_name: {"_errors": [{"code": code, "message": message}]}}
    return 400, {"code": 50035, "message": "Invalid Form Body", "errors": errors}


def _too_long() -> tuple[int, Json]:
    message = f"Must be {MAX_CONTENT} or fewer in length."
    return _form_error("content", "BASE_TYPE_MAX_LENGTH", message)


class FakeDiscord(FakeServer):
    """One bot, one guild, one shard. Start it, patch discord.py's URLs, drive a real Client."""

    def __init__(
        self,
        token: str = "TEST.discord.token",
        bot_id: int = 1000000000000000001,
        bot_name: str = "hearth",
        allow_message_content: bool = True,
        allowed_privileged: bool = True,
        *,
        heartbeat_interval_ms: int = 1000,
    ) -> None:
        self.token = token
        self.bot_id = bot_id
        self.bot_name = bot_name
        self.allow_message_content = allow_message_content
        self.allowed_privileged = allowed_privileged
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.edit_floor: float | None = None
        self.calls: list[Call] = []
        self.gateway_frames: list[Json] = []  # every frame a client sent, in order
        self.gateway_connects: list[str] = []  # path and query of every gateway connection
        self.identifies = 0
        self.resumes = 0
        super().__init__()

        self._counter = 0
        self.guild_id = self._snowflake()
        self.everyone_role_id = self.guild_id  # Discord's @everyone role shares the guild's id
        self.owner_id = self._snowflake()
        self.category_id = self._snowflake()
        self.channel_id = self._snowflake()
        self.other_channel_id = self._snowflake()
        self.bot_role_id = self._snowflake()
        self.member_role_id = self._snowflake()

        self._users: dict[int, Json] = {}
        self._members: dict[int, Json] = {}
        self._channels: dict[int, Json] = {}
        self._dm_by_user: dict[int, int] = {}
        self._messages: dict[int, list[Json]] = {}
        self._cdn: dict[str, tuple[bytes, str]] = {}
        self._failures: list[_Failure] = []
        self._last_write: dict[int, float] = {}
        self._session: _Session | None = None
        self._conns: set[_Conn] = set()

        self._add_user(bot_id, bot_name, bot=True, roles=[self.bot_role_id])
        self._add_user(self.owner_id, "owner", roles=[self.member_role_id])
        for cid, name, kind, position in (
            (self.category_id, "Text Channels", 4, 0),
            (self.channel_id, "general", 0, 0),
            (self.other_channel_id, "random", 0, 1),
        ):
            self._channels[cid] = {
                "id": str(cid), "type": kind, "name": name, "position": position,
                "guild_id": str(self.guild_id), "permission_overwrites": [], "nsfw": False,
                "parent_id": None if kind == 4 else str(self.category_id), "flags": 0,
                "topic": None, "last_message_id": None, "rate_limit_per_user": 0,
            }

    # ---- lifecycle ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    # Gateway connections are closed by `closing`, not cancelled mid-frame.
    runner_options: ClassVar[dict[str, Any]] = {}

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/resume", self._gateway)  # READY's resume_gateway_url
        app.router.add_get("/attachments/{tail:.*}", self._cdn_get)
        app.router.add_route("*", API_PREFIX + "/{tail:.*}", self._api)
        return app

    async def closing(self) -> None:
        for conn in list(self._conns):
            await conn.stop_writer()
            await conn.ws.close(code=1001)

    @contextlib.contextmanager
    def patch_client_urls(self) -> Iterator[None]:
        """Point discord.py's REST base and default gateway here (class attributes, test-only)."""
        route, dws = discord.http.Route, discord.gateway.DiscordWebSocket
        old = route.BASE, dws.DEFAULT_GATEWAY
        route.BASE = self.base_url + API_PREFIX
        dws.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)
        try:
            yield
        finally:
            route.BASE, dws.DEFAULT_GATEWAY = old

    # ---- test-side API -----------------------------------------------------------------------

    def calls_to(self, method: str, path_suffix: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and c.path.endswith(path_suffix)]

    async def wait_for_call(self, method: str, path_suffix: str, *, count: int = 1,
                            within: float = 3.0) -> list[Call]:
        """Wait until at least `count` matching calls have been answered; returns them all."""
        deadline = time.monotonic() + within
        while len(found := [c for c in self.calls_to(method, path_suffix) if c.status]) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"wanted {count} x {method} …{path_suffix}, saw {len(found)}")
            await asyncio.sleep(0.01)
        return found

    def messages_in(self, channel_id: int) -> list[Json]:
        """Every message now in the channel (inbound and the bot's own, edits applied), in order."""
        return list(self._messages.get(channel_id, []))

    def dm_channel_id(self, user_id: int) -> int:
        """The DM channel between the bot and this user, created on first use."""
        if user_id not in self._dm_by_user:
            cid = self._dm_by_user[user_id] = self._snowflake()
            recipient = self._users.get(user_id) or self._user_json(user_id, f"user{user_id}")
            self._channels[cid] = {"id": str(cid), "type": 1, "last_message_id": None,
                                   "flags": 0, "recipients": [recipient]}
        return self._dm_by_user[user_id]

    def dm(self, *, author_id: int, author_name: str, content: str,
           message_id: int | None = None, attachments: list[Json] | None = None) -> Json:
        """A user DMs the bot: MESSAGE_CREATE in that user's DM channel (no guild_id)."""
        author = self._add_user(author_id, author_name)
        msg = self._new_message(self.dm_channel_id(author_id), author, content, guild=False,
                                message_id=message_id, attachments=attachments,
                                flags=_voice_flag(attachments))
        self.dispatch("MESSAGE_CREATE", msg)
        return msg

    def guild_message(self, *, author_id: int, author_name: str, content: str,
                      mention_bot: bool = False, mention_role: int | None = None,
                      reply_to: int | None = None, channel_id: int | None = None,
                      attachments: list[Json] | None = None, author_is_bot: bool = False) -> Json:
        """A member posts in a guild text channel; mentions go into the content and the arrays."""
        author = self._add_user(author_id, author_name, bot=author_is_bot,
                                roles=[self.member_role_id])
        if mention_bot:
            content = f"<@{self.bot_id}> {content}"
        if mention_role is not None:
            content = f"<@&{mention_role}> {content}"
        msg = self._new_message(
            channel_id or self.channel_id, author, content, guild=True, attachments=attachments,
            flags=_voice_flag(attachments),
            mention_roles=[] if mention_role is None else [mention_role],
            reference=None if reply_to is None else {"message_id": str(reply_to)})
        self.dispatch("MESSAGE_CREATE", msg)
        return msg

    def add_thread(self, name: str, parent_id: int | None = None) -> int:
        """A member opens a public thread under a text channel (THREAD_CREATE); returns its id."""
        thread_id = self._snowflake()
        self._channels[thread_id] = {
            "id": str(thread_id), "type": THREAD_TYPE, "name": name,
            "guild_id": str(self.guild_id), "parent_id": str(parent_id or self.channel_id),
            "owner_id": str(self.owner_id), "last_message_id": None, "rate_limit_per_user": 0,
            "flags": 0, "message_count": 0, "member_count": 1, "total_message_sent": 0,
            "thread_metadata": {"archived": False, "auto_archive_duration": 1440,
                                "archive_timestamp": _now_iso(), "locked": False},
        }
        self.dispatch("THREAD_CREATE", {**self._channels[thread_id], "newly_created": True})
        return thread_id

    def add_attachment(self, data: bytes, filename: str, content_type: str, *,
                       duration_secs: float | None = None, waveform: str | None = None) -> Json:
        """Put bytes on the fake CDN; returns the attachment object to put into a message."""
        att_id = self._snowflake()
        path = f"/attachments/{self.channel_id}/{att_id}/{filename}"
        self._cdn[path] = (data, content_type)
        url = self.base_url + path
        att: Json = {"id": str(att_id), "filename": filename, "size": len(data), "url": url,
                     "proxy_url": url, "content_type": content_type}
        if content_type.startswith("image/"):
            # Discord measures the images it can decode; a broken one has no dimensions.
            with (contextlib.suppress(OSError, ValueError, SyntaxError),
                  Image.open(io.BytesIO(data)) as image):
                att["width"], att["height"] = image.size
        if duration_secs is not None:
            att["duration_secs"] = duration_secs
        if waveform is not None:
            att["waveform"] = waveform
        return att

    def fail_next(self, method: str, path_suffix: str, *, status: int = 429,
                  retry_after: float = 0.5, times: int = 1) -> None:
        """Answer the next `times` matching requests with `status`; 0 drops the connection."""
        self._failures.append(_Failure(method, path_suffix, status, retry_after, times))

    def dispatch(self, event: str, data: Json) -> None:
        """Raw gateway dispatch to the current session; kept for RESUME while disconnected."""
        session = self._session
        if session is None or not self._wanted(session, event, data):
            return
        # A deep copy: later edits of the stored message must not leak into queued frames.
        self.dispatch_as_is(event, copy.deepcopy(self._visible(session, event, data)))

    def forget_history(self) -> None:
        """Drop the messages, calls and frames kept so far (long soak tests keep memory flat);
        a RESUME after this replays nothing older."""
        self._messages.clear()
        self.calls.clear()
        self.gateway_frames.clear()
        if self._session is not None:
            self._session.backlog.clear()

    def dispatch_as_is(self, event: str, data: object) -> None:
        """A dispatch exactly as given, however malformed: what a buggy or newer Discord
        might send."""
        session = self._session
        if session is None:
            return
        session.seq += 1
        frame = {"op": 0, "t": event, "s": session.seq, "d": data}
        session.backlog.append(frame)
        if session.conn is not None:
            session.conn.send(frame)

    async def close_gateway(self, code: int | None = 4000) -> None:
        """Drop the live gateway connection; `None` aborts TCP without a close frame."""
        session = self._session
        conn = session.conn if session else None
        if session is None or conn is None:
            return
        session.conn = None  # from now on dispatches wait in the backlog for the RESUME
        await conn.stop_writer()
        if code is None:
            if conn.request.transport is not None:
                conn.request.transport.abort()
        else:
            await conn.ws.close(code=code, message=b"closed by the fake")

    def request_reconnect(self) -> None:
        """Send op 7 RECONNECT: the client closes and RESUMEs."""
        if self._session is not None and self._session.conn is not None:
            self._session.conn.send({"op": 7, "d": None, "s": None, "t": None})

    def invalidate_session(self, resumable: bool = False) -> None:
        """Send op 9 INVALID_SESSION; when not resumable the client IDENTIFYs anew."""
        if self._session is not None and self._session.conn is not None:
            self._session.conn.send({"op": 9, "d": resumable, "s": None, "t": None})

    # ---- payloads -----------------------------------------------------------------------------

    def _snowflake(self) -> int:
        self._counter += 1
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        return (ms << 22) | (1 << 17) | (self._counter % 4096)

    @staticmethod
    def _user_json(user_id: int, name: str, *, bot: bool = False) -> Json:
        return {"id": str(user_id), "username": name, "discriminator": "0", "global_name": name,
                "avatar": None, "bot": bot, "public_flags": 0}

    def _add_user(self, user_id: int, name: str, *, bot: bool = False,
                  roles: list[int] | None = None) -> Json:
        user = self._users[user_id] = self._user_json(user_id, name, bot=bot)
        if roles is not None and user_id not in self._members:
            self._members[user_id] = {
                "roles": [str(r) for r in roles], "joined_at": _now_iso(), "deaf": False,
                "mute": False, "flags": 0, "pending": False, "nick": None, "avatar": None,
                "premium_since": None, "communication_disabled_until": None,
            }
        return user

    def _member_with_user(self, user_id: int) -> Json:
        return {**self._members[user_id], "user": self._users[user_id]}

    def _me(self) -> Json:
        return {**self._users[self.bot_id], "verified": True, "mfa_enabled": False, "flags": 0}

    def _application(self) -> Json:
        return {"id": str(self.bot_id), "name": self.bot_name, "icon": None, "description": "",
                "bot_public": False, "bot_require_code_grant": False, "flags": 0, "team": None,
                "owner": self._users[self.owner_id], "verify_key": "0" * 64}

    def _role(self, role_id: int, name: str, position: int, permissions: int, **extra: Any) -> Json:
        return {"id": str(role_id), "name": name, "position": position, "color": 0,
                "permissions": str(permissions), "hoist": False, "managed": False,
                "mentionable": True, "flags": 0, **extra}

    def _guild_create(self, intents: int) -> Json:
        # For a small guild, the presences intent brings every member along (no chunking).
        everyone = intents & INTENT_GUILD_PRESENCES
        members = [self._member_with_user(uid) for uid in self._members if everyone or
                   uid == self.bot_id]
        roles = [
            self._role(self.everyone_role_id, "@everyone", 0, (1 << 10) | (1 << 11) | (1 << 16)),
            self._role(self.member_role_id, "members", 1, 0),
            # Discord gives every bot a managed role tagged with its id (Guild.self_role).
            self._role(self.bot_role_id, self.bot_name, 2, BOT_PERMISSIONS, managed=True,
                       tags={"bot_id": str(self.bot_id)}),
        ]
        return {
            "id": str(self.guild_id), "name": "Hearth Test Guild", "icon": None,
            "owner_id": str(self.owner_id), "roles": roles, "emojis": [], "stickers": [],
            "features": [], "afk_timeout": 300, "verification_level": 0, "mfa_level": 0,
            "default_message_notifications": 0, "explicit_content_filter": 0, "nsfw_level": 0,
            "system_channel_id": str(self.channel_id), "premium_tier": 0, "large": False,
            "preferred_locale": "en-US", "unavailable": False, "joined_at": _now_iso(),
            "member_count": len(self._members), "voice_states": [],
            "threads": [c for c in self._channels.values() if c["type"] == THREAD_TYPE],
            "channels": [c for c in self._channels.values()
                         if "guild_id" in c and c["type"] != THREAD_TYPE],
            "members": members, "presences": [],
            "stage_instances": [], "guild_scheduled_events": [], "soundboard_sounds": [],
        }

    def _new_message(self, channel_id: int, author: Json, content: str, *, guild: bool,
                     message_id: int | None = None, attachments: list[Json] | None = None,
                     flags: int = 0, reference: Json | None = None,
                     mention_roles: list[int] | None = None, ping_replied: bool = True) -> Json:
        """Build and store a message as REST returns it; the gateway adds the member."""
        mentioned = {int(m) for m in USER_MENTION.findall(content)}
        msg: Json = {
            "id": str(message_id or self._snowflake()), "channel_id": str(channel_id),
            "type": 0, "content": content, "author": author, "timestamp": _now_iso(),
            "edited_timestamp": None, "tts": False, "mention_everyone": False,
            "mention_roles": [str(r) for r in mention_roles or []],
            "attachments": attachments or [], "embeds": [], "components": [], "pinned": False,
            "flags": flags,
        }
        if reference is not None:
            ref_id = str(reference["message_id"])
            replied = next((m for m in self.messages_in(channel_id) if m["id"] == ref_id), None)
            msg["type"] = 19  # REPLY
            msg["message_reference"] = {"type": 0, "message_id": ref_id,
                                        "channel_id": str(channel_id)}
            if guild:
                msg["message_reference"]["guild_id"] = str(self.guild_id)
            msg["referenced_message"] = replied and {
                k: v for k, v in replied.items() if k != "referenced_message"}
            if replied is not None and ping_replied:
                mentioned.add(int(replied["author"]["id"]))
        msg["mentions"] = [self._mention(uid, guild) for uid in sorted(mentioned)]
        if guild:
            msg["guild_id"] = str(self.guild_id)
        self._messages.setdefault(channel_id, []).append(msg)
        self._channels[channel_id]["last_message_id"] = msg["id"]
        return msg

    def _mention(self, user_id: int, guild: bool) -> Json:
        user = self._users.get(user_id) or self._user_json(user_id, f"user{user_id}")
        if guild and user_id in self._members:
            return {**user, "member": self._members[user_id]}
        return user

    def _wanted(self, session: _Session, event: str, data: Json) -> bool:
        if not event.startswith("MESSAGE_"):
            return True
        needed = INTENT_GUILD_MESSAGES if "guild_id" in data else INTENT_DIRECT_MESSAGES
        return bool(session.intents & needed)

    def _visible(self, session: _Session, event: str, data: Json) -> Json:
        """What a session sees: the author's member, and Discord's message-content blanking."""
        if event not in ("MESSAGE_CREATE", "MESSAGE_UPDATE") or "guild_id" not in data:
            return data
        author_id = int(data["author"]["id"])
        data = dict(data)
        if author_id in self._members:
            data["member"] = self._members[author_id]
        exempt = author_id == self.bot_id or any(
            int(m["id"]) == self.bot_id for m in data.get("mentions", []))
        if not (session.intents & INTENT_MESSAGE_CONTENT or exempt):
            data.update(content="", embeds=[], attachments=[], components=[])
        return data

    # ---- gateway ------------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        self.gateway_connects.append(request.path_qs)
        conn = _Conn(ws, request, request.query.get("compress") == "zlib-stream")
        self._conns.add(conn)
        conn.send({"op": 10, "d": {"heartbeat_interval": self.heartbeat_interval_ms},
                   "s": None, "t": None})
        try:
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    continue
                frame = json.loads(msg.data)
                self.gateway_frames.append(frame)
                close_code = self._on_frame(conn, frame)
                if close_code is not None:
                    await conn.stop_writer()
                    await ws.close(code=close_code)
                    break
        finally:
            await conn.stop_writer()
            self._conns.discard(conn)
            session = self._session
            if session is not None and session.conn is conn:
                session.conn = None
                # A client closing with 1000/1001 ends its session, as on real Discord.
                if ws.close_code in (1000, 1001):
                    self._session = None
        return ws

    def _on_frame(self, conn: _Conn, frame: Json) -> int | None:
        op, d = frame.get("op"), frame.get("d") or {}
        if op == 1:  # HEARTBEAT
            conn.send({"op": 11, "d": None, "s": None, "t": None})
        elif op == 2:  # IDENTIFY
            return self._identify(conn, d)
        elif op == 6:  # RESUME
            self._resume(conn, d)
        elif op == 8:  # REQUEST_GUILD_MEMBERS (discord.py chunks when the members intent is on)
            self.dispatch("GUILD_MEMBERS_CHUNK", {
                "guild_id": str(self.guild_id), "chunk_index": 0, "chunk_count": 1,
                "members": [self._member_with_user(uid) for uid in self._members],
                "not_found": [], "nonce": d.get("nonce")})
        return None

    def _identify(self, conn: _Conn, d: Json) -> int | None:
        if d.get("token") != self.token:
            return 4004  # Authentication failed
        intents = int(d.get("intents", 0))
        forbidden = 0 if self.allowed_privileged else INTENT_GUILD_MEMBERS | INTENT_GUILD_PRESENCES
        if not self.allow_message_content:
            forbidden |= INTENT_MESSAGE_CONTENT
        if intents & forbidden:
            return 4014  # Disallowed intent(s)
        self.identifies += 1
        # One bot, one shard: a new IDENTIFY replaces any earlier session.
        self._session = _Session(id=secrets.token_hex(16), intents=intents, conn=conn)
        self.dispatch("READY", {
            "v": 10, "user": self._me(), "session_id": self._session.id,
            "resume_gateway_url": f"ws://127.0.0.1:{self.port}/resume",
            "guilds": [{"id": str(self.guild_id), "unavailable": True}],
            "application": {"id": str(self.bot_id), "flags": 0},
            "private_channels": [], "relationships": [], "presences": []})
        self.dispatch("GUILD_CREATE", self._guild_create(intents))
        return None

    def _resume(self, conn: _Conn, d: Json) -> None:
        session = self._session
        if session is None or d.get("token") != self.token or d.get("session_id") != session.id:
            conn.send({"op": 9, "d": False, "s": None, "t": None})
            return
        last = int(d.get("seq") or 0)
        # No await from here on: no live dispatch can slip in between the replayed frames.
        for frame in session.backlog:
            if frame["s"] > last:
                conn.send(frame)
        session.conn = conn
        self.resumes += 1
        self.dispatch("RESUMED", {})

    # ---- REST ---------------------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        body, files = await self._read_body(request)
        call = Call(request.method, path, body, files, dict(request.headers), time.monotonic())
        self.calls.append(call)
        if request.headers.get("Authorization") != f"Bot {self.token}":
            return self._answer(call, *_error(401, 0, "401: Unauthorized"))
        for failure in self._failures:
            if (failure.times > 0 and failure.method == request.method
                    and path.endswith(failure.path_suffix)):
                failure.times -= 1
                return self._fail(call, request, failure.status, failure.retry_after)
        status, payload = self._route(request.method, path, body, files)
        if status == 429:
            return self._fail(call, request, 429, float(payload["retry_after"]))
        return self._answer(call, status, payload)

    def _answer(self, call: Call, status: int, payload: Any) -> web.Response:
        call.status = status
        if status == 204:
            return web.Response(status=204)
        # Exactly "application/json": discord.py compares the header verbatim.
        return web.Response(status=status, body=json.dumps(payload).encode(),
                            headers={"Content-Type": "application/json"})

    def _fail(self, call: Call, request: web.Request, status: int, retry: float) -> web.Response:
        if status == 0:
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)  # never reaches the client
        if status != 429:
            return self._answer(call, *_error(status, 0, f"{status}: injected failure"))
        response = self._answer(call, 429, {"message": "You are being rate limited.",
                                            "retry_after": retry, "global": False})
        # discord.py retries a 429 only when it came through Discord's proxy (a Via header).
        response.headers.update({"Via": "1.1 google", "X-RateLimit-Scope": "user",
                                 "Retry-After": str(max(1, round(retry)))})
        return response

    async def _read_body(self, request: web.Request) -> tuple[Any, dict[str, bytes]]:
        files: dict[str, bytes] = {}
        if not request.content_type.startswith("multipart/"):
            raw = await request.read()
            return (json.loads(raw) if raw else None), files
        body: Any = None
        async for part in await request.multipart():
            if not isinstance(part, BodyPartReader) or part.name is None:
                continue
            if part.name == "payload_json":
                body = json.loads(await part.text())
            else:
                files[part.name] = bytes(await part.read())
        return body, files

    def _route(self, method: str, path: str, body: Any, files: dict[str, bytes]
               ) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        if method == "GET" and path == "/users/@me":
            return 200, self._me()
        if method == "GET" and path == "/oauth2/applications/@me":
            return 200, self._application()
        if method == "GET" and path in ("/gateway", "/gateway/bot"):
            limit = {"total": 1000, "remaining": 999, "reset_after": 86_400_000,
                     "max_concurrency": 1}
            return 200, {"url": f"ws://127.0.0.1:{self.port}", "shards": 1,
                         "session_start_limit": limit}
        if method == "POST" and path == "/users/@me/channels":
            return 200, self._channels[self.dm_channel_id(int(body["recipient_id"]))]
        if len(parts) < 2 or parts[0] != "channels" or not parts[1].isdigit():
            return _error(404, 0, "404: Not Found")
        cid = int(parts[1])
        if cid not in self._channels:
            return _error(404, 10003, "Unknown Channel")
        if method == "GET" and len(parts) == 2:
            return 200, self._channels[cid]
        if method == "POST" and parts[2:] == ["typing"]:
            return 204, None
        if method == "POST" and parts[2:] == ["messages"]:
            return self._create_message(cid, body or {}, files)
        if (match := MESSAGE_PATH.fullmatch(path)) is None:
            return _error(404, 0, "404: Not Found")
        msg = next((m for m in self._messages.get(cid, []) if m["id"] == match.group(1)), None)
        if msg is None:
            return _error(404, 10008, "Unknown Message")
        if method == "GET":
            return 200, msg
        if method == "PATCH":
            return self._edit_message(cid, msg, body or {})
        if method == "DELETE":
            self._messages[cid].remove(msg)
            gone: Json = {k: msg[k] for k in ("id", "channel_id", "guild_id") if k in msg}
            self.dispatch("MESSAGE_DELETE", gone)
            return 204, None
        return _error(405, 0, "405: Method Not Allowed")

    def _flood_check(self, cid: int) -> tuple[int, Json] | None:
        """Optional model of the per-channel create/edit bucket: too close → 429 by itself."""
        now, last = time.monotonic(), self._last_write.get(cid)
        if self.edit_floor is not None and last is not None and now - last < self.edit_floor:
            return 429, {"retry_after": round(self.edit_floor - (now - last), 3)}
        self._last_write[cid] = now
        return None

    def _create_message(self, cid: int, body: Json, files: dict[str, bytes]) -> tuple[int, Any]:
        content = body.get("content") or ""
        flags = int(body.get("flags") or 0)
        if len(content) > MAX_CONTENT:
            return _too_long()
        attachments: list[Json] = []
        for name, data in files.items():
            meta: Json = next((a for a in body.get("attachments", [])
                               if f"files[{a.get('id')}]" == name), {})
            filename = str(meta.get("filename") or name)
            ctype = mimetypes.guess_type(filename)[0] or "application/octet-stream"
            attachments.append(self.add_attachment(data, filename, ctype,
                                                   duration_secs=meta.get("duration_secs"),
                                                   waveform=meta.get("waveform")))
        if flags & FLAG_VOICE_MESSAGE:
            if content or body.get("embeds"):
                return _error(400, 50159, "Voice messages do not support additional content.")
            if len(attachments) != 1:
                return _error(400, 50160, "Voice messages must have a single audio attachment.")
            if not {"duration_secs", "waveform"} <= attachments[0].keys():
                return _error(400, 50161, "Voice messages must have supporting metadata.")
        if not (content or attachments or body.get("embeds") or body.get("sticker_ids")):
            return _error(400, 50006, "Cannot send an empty message")
        ref = body.get("message_reference")
        if ref is not None and ref.get("fail_if_not_exists", True) and str(
                ref.get("message_id")) not in {m["id"] for m in self._messages.get(cid, [])}:
            return _form_error("message_reference", "MESSAGE_REFERENCE_UNKNOWN_MESSAGE",
                               "Unknown message")
        if (limited := self._flood_check(cid)) is not None:
            return limited
        allowed = body.get("allowed_mentions")
        msg = self._new_message(
            cid, self._users[self.bot_id], content, guild="guild_id" in self._channels[cid],
            attachments=attachments, flags=flags, reference=ref,
            ping_replied=allowed is None or bool(allowed.get("replied_user")))
        msg["embeds"] = body.get("embeds") or []
        # Real Discord echoes the bot's own message back over the gateway.
        self.dispatch("MESSAGE_CREATE", msg)
        return 200, msg

    def _edit_message(self, cid: int, msg: Json, body: Json) -> tuple[int, Any]:
        if int(msg["author"]["id"]) != self.bot_id:
            return _error(403, 50005, "Cannot edit a message authored by another user")
        if int(msg["flags"]) & FLAG_VOICE_MESSAGE:
            return _error(400, 50162, "Voice messages cannot be edited.")
        if len(body.get("content") or "") > MAX_CONTENT:
            return _too_long()
        if (limited := self._flood_check(cid)) is not None:
            return limited
        if "content" in body:
            msg["content"] = body["content"] or ""
        if "embeds" in body:
            msg["embeds"] = body["embeds"] or []
        msg["edited_timestamp"] = _now_iso()
        self.dispatch("MESSAGE_UPDATE", msg)
        return 200, msg

    async def _cdn_get(self, request: web.Request) -> web.Response:
        call = Call("GET", request.path, None, {}, dict(request.headers), time.monotonic())
        self.calls.append(call)
        stored = self._cdn.get(request.path)
        call.status = 404 if stored is None else 200
        if stored is None:
            return web.Response(status=404, text="404: Not Found")
        return web.Response(body=stored[0], headers={"Content-Type": stored[1]})
