"""Helpers every kind of test uses: configs as a user writes them, waiting on state, reading
what the fake model was sent and what the database holds, and replies of a known shape."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection

from bot.config import Config, parse_config
from bot.events import ChatKind, InboundEvent, MessageStatus
from bot.service import Service
from bot.store import Store, inbox
from bot.store.history import TurnRecord, open_conversation, save_turn
from bot.store.tables import utcnow
from tests.fakes.llm_backends import FakeOllama

Json = dict[str, Any]
FENCE = "`" * 3
# How long a test waits for something that normally takes milliseconds: generous, so that a
# busy machine slows a test down instead of failing it.
WAIT_LIMIT = 15.0


def make_config(data_dir: Path, **sections: Any) -> Config:
    """A config from plain dicts, as a user would write it, with the data dir set."""
    raw: dict[str, Any] = {"data_dir": str(data_dir), **sections}
    return parse_config(json.loads(json.dumps(raw)))


def ollama_config(data_dir: Path, fake: FakeOllama, **extra: Any) -> Config:
    provider = {"type": "ollama", "base_url": fake.base_url, "first_token_timeout": 5,
                "read_timeout": 5,
                "models": [{"id": fake.models[0], "context_window": 8192, "max_tokens": 256}]}
    return make_config(
        data_dir,
        gateway={"providers": {"ollama": provider}},
        agents={"default": {"active_model": f"ollama/{fake.models[0]}"}, **extra},
    )


async def until(condition: Callable[[], object], what: str = "the condition", *,
                within: float = WAIT_LIMIT) -> None:
    """Wait until `condition()` holds: a final state, never a fixed time."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {within:g} s for {what}")
        await asyncio.sleep(0.01)


async def converse(store: Store, platform: str, chat_id: str, *texts: str,
                   persona: str = "guest") -> int:
    """Store an answered exchange for each text, as the gateway would; returns the session id."""
    session_id = 0
    for text in texts:
        event = InboundEvent(platform=platform, chat_id=chat_id, chat_kind=ChatKind.DM,
                             sender_id=chat_id, sender_name="someone",
                             message_id=f"{persona}-{text}", text=text)
        inbox_id = await inbox.record(store, event)
        session_id = (await open_conversation(store, platform, chat_id, persona)).session_id
        now = utcnow()
        await save_turn(store, TurnRecord(
            inbox_id=inbox_id, session_id=session_id, persona=persona, model="m",
            received_at=now, first_token_at=now, done_at=now, prompt_tokens=1,
            completion_tokens=1, status=MessageStatus.ANSWERED, user_text=text,
            reply_text=f"re: {text}"))
    return session_id


def sent_messages(fake: FakeOllama, index: int = -1) -> list[Json]:
    """The chat messages of one request the fake model received (the newest by default)."""
    body = fake.requests_to("/api/chat")[index].body
    assert body is not None
    messages: list[Json] = body["messages"]  # type: ignore[assignment]
    return messages


def system_prompt(fake: FakeOllama, index: int = -1) -> str:
    first = sent_messages(fake, index)[0]
    assert first["role"] == "system"
    return str(first["content"])


def user_text(fake: FakeOllama, index: int = -1) -> str:
    return str(sent_messages(fake, index)[-1]["content"])


def chat_requests(fake: FakeOllama) -> int:
    return len(fake.requests_to("/api/chat"))


def db_rows(service: Service, query: str | None = None) -> list[tuple[object, ...]]:
    """Rows of one query, or every row of every table (to search for what must not be kept)."""
    path = service.config.store_url().split("///", 1)[1]
    with sqlite3.connect(path) as db:
        if query is not None:
            return db.execute(query).fetchall()
        tables = [t for (t,) in db.execute("select name from sqlite_master where type='table'")]
        return [row for table in tables for row in db.execute(f'select * from "{table}"')]


def code_reply(lines: int) -> str:
    """A reply with a fenced code block of `lines` lines between two sentences."""
    body = "\n".join(f"print({n})  # line {n}" for n in range(lines))
    return f"Here you go:\n\n{FENCE}python\n{body}\n{FENCE}\n\nThat's all."


def code_reply_of_length(length: int) -> str:
    """A reply of exactly `length` characters, nearly all of it one fenced code block."""
    head, tail = "Here is the script:\n\n" + FENCE + "python\n", "\n" + FENCE + "\n\nRun it."
    lines: list[str] = []
    while len(head) + len("\n".join(lines)) + len(tail) < length - 40:
        lines.append(f"print({len(lines)})  # step {len(lines)} of the listing")
    text = head + "\n".join(lines) + tail
    return text + "!" * (length - len(text))


async def upgrade_to(store: Store, revision: str) -> None:
    """Bring the store's schema to `revision` only, as a database an earlier release made."""
    from alembic import command
    from alembic.config import Config as AlembicConfig

    from bot.store.db import MIGRATIONS_DIR

    def run(connection: Connection) -> None:
        config = AlembicConfig()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    async with store.engine.begin() as connection:
        await connection.run_sync(run)
