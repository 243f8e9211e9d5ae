"""Telegram end to end: the real python-telegram-bot client against a fake Bot API server,
the real gateway and SQLite store, and a scriptable fake model on 127.0.0.1."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import signal
import sys
import time
from pathlib import Path

import pytest

from adapters.telegram import TelegramAdapter
from bot.errors import AdapterStartError
from bot.logs import setup_logging
from bot.pairing import create_code
from bot.service import open_service
from bot.store import inbox
from persona.personas import ADMIN_PROMPT, GUEST_PROMPT
from tests.fakes.llm_backends import FakeOllama, ScriptedReply
from tests.fakes.telegram import FakeTelegram
from tests.support.helpers import FENCE, system_prompt, until
from tests.support.telegram import (
    EDIT_INTERVAL,
    GROUP,
    OWNER,
    STRANGER,
    Running,
    acknowledged,
    start,
    telegram_config,
    texts,
)


async def test_owner_dm_gets_admin_and_streams_through_drafts(running: Running) -> None:
    running.llm.script(ScriptedReply(chunks=("Good", " morning", ", owner."), token_delay=0.1))
    running.tg.push_text(chat_id=OWNER, from_id=OWNER, text="Hello")
    await until(lambda: texts(running.tg, OWNER))
    assert system_prompt(running.llm) == ADMIN_PROMPT
    assert texts(running.tg, OWNER) == ["Good morning, owner."]
    drafts = running.tg.drafts(OWNER)
    assert drafts, "a DM streams through drafts"
    assert all("Good morning, owner.".startswith(d) for d in drafts)
    assert drafts == sorted(drafts, key=len)


async def test_stranger_dm_gets_guest(running: Running) -> None:
    running.tg.push_text(chat_id=STRANGER, from_id=STRANGER, text="Hi, who are you?")
    await until(lambda: texts(running.tg, STRANGER))
    assert system_prompt(running.llm) == GUEST_PROMPT


async def test_owner_in_a_group_gets_guest(running: Running) -> None:
    running.tg.push_text(chat_id=GROUP, chat_type="supergroup", chat_title="Friends",
                         from_id=OWNER, text="@hearth_test_bot hello")
    await until(lambda: texts(running.tg, GROUP))
    assert system_prompt(running.llm) == GUEST_PROMPT
    body = running.llm.requests_to("/api/chat")[-1].body
    assert body is not None and body["messages"][-1]["content"] == "hello"  # type: ignore[index]


async def test_group_without_mention_is_not_answered(running: Running) -> None:
    update = running.tg.push_text(chat_id=GROUP, chat_type="group", from_id=STRANGER,
                                  text="just chatting among ourselves")
    message_id = str(update["message"]["message_id"])
    await until(lambda: running.adapter.last_seen == message_id, "the message taken in")
    # Not addressed to the bot: dropped after the mention check, never stored.
    assert await inbox.state_of(running.service.store, "telegram", str(GROUP),
                                message_id) is None
    assert running.llm.requests_to("/api/chat") == []
    assert running.tg.sent_messages(GROUP) == []
    assert running.tg.calls_to("sendChatAction") == []


async def test_group_mention_is_answered_by_editing_in_place(running: Running) -> None:
    words = tuple(f"word{n} " for n in range(12))
    running.llm.script(ScriptedReply(chunks=words, token_delay=0.08))
    update = running.tg.push_text(chat_id=GROUP, chat_type="group", from_id=STRANGER,
                                  text="@hearth_test_bot count for me")
    reply = "".join(words).strip()
    await until(lambda: texts(running.tg, GROUP) == [reply])
    (message,) = running.tg.sent_messages(GROUP)
    assert message["reply_to_message"]["message_id"] == update["message"]["message_id"]
    sends = [c for c in running.tg.calls_to("sendMessage") if c.params["chat_id"] == GROUP]
    edits = [c for c in running.tg.calls_to("editMessageText") if c.params["chat_id"] == GROUP]
    assert len(sends) == 1 and edits, "a placeholder, then edits"
    shown = [sends[0].params["text"], *(e.params["text"] for e in edits)]
    assert all(reply.startswith(t.strip()) for t in shown)
    assert [len(t) for t in shown] == sorted(len(t) for t in shown)
    stamps = [sends[0].at, *(e.at for e in edits)]
    assert all(b - a >= EDIT_INTERVAL * 0.95 for a, b in itertools.pairwise(stamps))


async def test_reply_to_the_bot_counts_as_addressed(running: Running) -> None:
    running.tg.push_text(chat_id=GROUP, chat_type="group", from_id=STRANGER,
                         text="@hearth_test_bot first")
    await until(lambda: texts(running.tg, GROUP))
    bot_message = running.tg.sent_messages(GROUP)[0]["message_id"]
    running.tg.push_text(chat_id=GROUP, chat_type="group", from_id=STRANGER, text="and then?",
                         reply_to_message_id=bot_message)
    await until(lambda: len(running.llm.requests_to("/api/chat")) == 2)


async def test_long_reply_is_split_with_fences_intact(running: Running) -> None:
    code = "\n".join(f"value_{n} = compute({n})  # step {n} of the long example" for n in
                     range(120))
    reply = f"Here is the program:\n\n{FENCE}python\n{code}\n{FENCE}\n\nRun it with care."
    assert 5500 < len(reply) < 7000
    running.llm.script(ScriptedReply(chunks=tuple(reply[i:i + 40]
                                                  for i in range(0, len(reply), 40))))
    running.tg.push_text(chat_id=OWNER, from_id=OWNER, text="Write a long program")
    await until(lambda: len(texts(running.tg, OWNER)) == 2 and "Run it with care." in
                texts(running.tg, OWNER)[-1])
    first, second = texts(running.tg, OWNER)
    assert len(first) <= 4096 and len(second) <= 4096
    # Sent as HTML: each message carries its own complete code block.
    html = [c.params["text"] for c in running.tg.calls_to("sendMessage")]
    assert [h.count("<pre>") for h in html] == [1, 1]
    assert [h.count("</pre>") for h in html] == [1, 1]
    lines = [line for t in (first, second) for line in t.splitlines()]
    assert [line for line in lines if line.startswith("value_")] == code.splitlines()


async def test_rate_limit_mid_stream_is_honoured_and_reply_completes(running: Running) -> None:
    words = tuple(f"w{n} " for n in range(30))
    running.llm.script(ScriptedReply(chunks=words, token_delay=0.05))
    running.tg.fail_next("editMessageText", retry_after=1)
    running.tg.push_text(chat_id=GROUP, chat_type="group", from_id=STRANGER,
                         text="@hearth_test_bot go")
    reply = "".join(words).strip()
    await until(lambda: texts(running.tg, GROUP) == [reply])
    calls = [c for c in running.tg.calls if c.params.get("chat_id") == GROUP
             and c.method in ("sendMessage", "editMessageText", "sendChatAction")]
    limited = next(c for c in calls if c.status == 429)
    during = [c for c in calls if limited.at < c.at < limited.at + 1.0]
    assert during == [], "no calls to the chat while Telegram asked us to wait"


async def test_same_update_twice_is_answered_once(running: Running) -> None:
    update = running.tg.push_text(chat_id=STRANGER, from_id=STRANGER, text="once please")
    running.tg.push_update(update)
    await until(lambda: texts(running.tg, STRANGER))
    # Both deliveries were taken in (acknowledged) and the first was answered; the lane has
    # nothing left to run.
    await until(lambda: acknowledged(running.tg, update["update_id"]))
    await running.adapter.idle()
    assert len(running.llm.requests_to("/api/chat")) == 1
    assert texts(running.tg, STRANGER) == ["Hello there."]


async def test_pairing_over_telegram(running: Running) -> None:
    code = await create_code(running.service.store)
    running.tg.push_text(chat_id=STRANGER, from_id=STRANGER, text="/pair WRONG123")
    await until(lambda: texts(running.tg, STRANGER))
    assert texts(running.tg, STRANGER) == ["That pairing code isn't valid or has expired."]
    running.tg.push_text(chat_id=STRANGER, from_id=STRANGER, text=f"/pair {code}")
    await until(lambda: len(texts(running.tg, STRANGER)) == 2)
    assert texts(running.tg, STRANGER)[-1].startswith("Paired.")
    running.tg.push_text(chat_id=STRANGER, from_id=STRANGER, text="/whoami")
    await until(lambda: len(texts(running.tg, STRANGER)) == 3)
    assert texts(running.tg, STRANGER)[-1] == "You are talking to the admin persona (admin)."


async def test_formatting_refused_falls_back_to_plain_text(running: Running) -> None:
    running.llm.script(ScriptedReply(chunks=("**Bold** claim.",)))
    running.tg.fail_next("sendMessage", status=400,
                         description="Bad Request: can't parse entities: unsupported tag")
    running.tg.push_text(chat_id=OWNER, from_id=OWNER, text="format me")
    await until(lambda: texts(running.tg, OWNER))
    assert texts(running.tg, OWNER) == ["**Bold** claim."]
    first, second = running.tg.calls_to("sendMessage")
    assert first.params.get("parse_mode") == "HTML" and "parse_mode" not in second.params


async def test_stickers_and_edits_never_crash_the_handler(running: Running) -> None:
    running.tg.push_update({"edited_message": {
        "message_id": 5, "date": int(time.time()), "chat": {"id": OWNER, "type": "private"},
        "from": {"id": OWNER, "is_bot": False, "first_name": "O"}, "text": "edited"}})
    running.tg.push_update({"message": {
        "message_id": 6, "date": int(time.time()), "chat": {"id": OWNER, "type": "private"},
        "from": {"id": OWNER, "is_bot": False, "first_name": "O"},
        "sticker": {"file_id": "s1", "file_unique_id": "u1", "type": "regular",
                    "width": 512, "height": 512, "is_animated": False, "is_video": False}}})
    await until(lambda: texts(running.tg, OWNER))
    assert texts(running.tg, OWNER) == [
        "I can read text, voice messages and images, but not that kind of message yet."]
    running.tg.push_text(chat_id=OWNER, from_id=OWNER, text="still there?")
    await until(lambda: len(texts(running.tg, OWNER)) == 2)


async def test_typing_is_shown_while_the_model_thinks(running: Running) -> None:
    running.llm.script(ScriptedReply(chunks=("Done.",), first_token_delay=0.6))
    running.tg.push_text(chat_id=STRANGER, from_id=STRANGER, text="think hard")
    await until(lambda: texts(running.tg, STRANGER))
    actions = running.tg.calls_to("sendChatAction")
    first_draft = next(c for c in running.tg.calls_to("sendMessageDraft"))
    assert actions and actions[0].params["action"] == "typing"
    assert actions[0].at < first_draft.at


async def test_network_error_on_the_final_message_is_retried(running: Running) -> None:
    running.tg.drop_next("sendMessage")
    running.tg.push_text(chat_id=STRANGER, from_id=STRANGER, text="are you there")
    await until(lambda: texts(running.tg, STRANGER), within=15)
    assert texts(running.tg, STRANGER) == ["Hello there."]


async def test_bad_token_is_one_clear_sentence(data_dir: Path, fake_tg: FakeTelegram,
                                               fake_ollama: FakeOllama) -> None:
    config = telegram_config(data_dir, fake_tg, fake_ollama, token="999:wrong")
    async with open_service(config, voice=False) as service:
        assert config.channels.telegram is not None
        adapter = TelegramAdapter(config.channels.telegram, service.gateway)
        with pytest.raises(AdapterStartError, match="Telegram rejected the bot token"):
            await adapter.serve()


async def test_unanswered_messages_are_answered_after_a_restart(
        data_dir: Path, fake_tg: FakeTelegram, fake_ollama: FakeOllama) -> None:
    config = telegram_config(data_dir, fake_tg, fake_ollama)
    fake_ollama.script(ScriptedReply(chunks=("late",), first_token_delay=30))
    async for _ in start(config, fake_tg, fake_ollama):
        fake_tg.push_text(chat_id=STRANGER, from_id=STRANGER, text="answer me eventually")
        await until(lambda: fake_ollama.requests_to("/api/chat"))
    # The service stopped mid-turn. At the next start the message is answered, once.
    async for running in start(config, fake_tg, fake_ollama):
        await until(lambda: texts(fake_tg, STRANGER))
        await running.adapter.idle()
        assert texts(fake_tg, STRANGER) == ["Hello there."]
        assert len(fake_ollama.requests_to("/api/chat")) == 2


async def test_token_appears_in_no_log_line_and_no_row(data_dir: Path, fake_tg: FakeTelegram,
                                                      fake_ollama: FakeOllama) -> None:
    config = telegram_config(data_dir, fake_tg, fake_ollama)
    setup_logging("debug", config.secrets(), data_dir / "logs", to_stderr=False)
    try:
        async for _ in start(config, fake_tg, fake_ollama):
            fake_tg.push_text(chat_id=OWNER, from_id=OWNER, text="hello")
            await until(lambda: texts(fake_tg, OWNER))
    finally:
        logging.getLogger().handlers.clear()
    log_text, stored = _written(data_dir)
    assert "telegram: polling as @hearth_test_bot" in log_text  # the session was logged
    # At debug level the HTTP client logs every URL, and Telegram's URLs contain the token.
    assert "/bot[redacted]/getUpdates" in log_text
    assert fake_tg.token.split(":")[1] not in log_text
    assert stored and fake_tg.token.split(":")[1].encode() not in stored


def _written(data_dir: Path) -> tuple[str, bytes]:
    log_text = (data_dir / "logs" / "hearthbot.log").read_text()
    stored = b"".join(path.read_bytes() for path in data_dir.glob("hearthbot.db*"))
    return log_text, stored


async def _run_service(config_path: Path, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "--config", str(config_path), "run", env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)


def _config_file(tmp_path: Path, fake_tg: FakeTelegram, fake_llm: FakeOllama,
                 token: str) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({
        "gateway": {"port": 0, "providers": {"ollama": {
            "type": "ollama", "base_url": fake_llm.base_url,
            "models": [{"id": fake_llm.models[0]}]}}},
        "agents": {"default": {"active_model": f"ollama/{fake_llm.models[0]}"}},
        "channels": {"telegram": {"api_base_url": fake_tg.base_url,
                                  "file_base_url": fake_tg.base_file_url, "poll_timeout": 1}},
    }))
    return path


async def test_hearthbot_run_serves_telegram_and_stops_on_sigterm(
        tmp_path: Path, fake_tg: FakeTelegram, fake_ollama: FakeOllama,
        cli_env: dict[str, str]) -> None:
    env = {**cli_env, "TELEGRAM_BOT_TOKEN": fake_tg.token}
    process = await _run_service(_config_file(tmp_path, fake_tg, fake_ollama, fake_tg.token),
                                 env)
    try:
        await until(lambda: fake_tg.calls_to("getUpdates"), within=30)
        fake_tg.push_text(chat_id=STRANGER, from_id=STRANGER, text="hello service")
        await until(lambda: texts(fake_tg, STRANGER), within=30)
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    assert texts(fake_tg, STRANGER) == ["Hello there."]
    # The model was warmed before traffic, with keep_alive.
    assert fake_ollama.requests_to("/api/generate")[0].body == {
        "model": fake_ollama.models[0], "prompt": "", "stream": False, "keep_alive": "24h"}


async def test_hearthbot_run_with_a_bad_token_exits_with_one_sentence(
        tmp_path: Path, fake_tg: FakeTelegram, fake_ollama: FakeOllama,
        cli_env: dict[str, str]) -> None:
    env = {**cli_env, "TELEGRAM_BOT_TOKEN": "42:not-the-token"}
    process = await _run_service(_config_file(tmp_path, fake_tg, fake_ollama, "x"), env)
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1
    lines = err.decode().strip().splitlines()
    assert lines[-1] == ("hearthbot: Telegram rejected the bot token; check "
                         "channels.telegram.token or TELEGRAM_BOT_TOKEN.")
    assert "Traceback" not in err.decode()


async def test_sigterm_mid_reply_lets_it_finish_and_the_next_start_answers_nothing_again(
        tmp_path: Path, fake_tg: FakeTelegram, fake_ollama: FakeOllama,
        cli_env: dict[str, str]) -> None:
    words = tuple(f"w{n} " for n in range(30))
    fake_ollama.script(ScriptedReply(chunks=words, token_delay=0.05))
    env = {**cli_env, "TELEGRAM_BOT_TOKEN": fake_tg.token}
    config = _config_file(tmp_path, fake_tg, fake_ollama, fake_tg.token)
    process = await _run_service(config, env)
    try:
        await until(lambda: fake_tg.calls_to("getUpdates"), within=30)
        fake_tg.push_text(chat_id=STRANGER, from_id=STRANGER, text="a long answer please")
        await until(lambda: fake_tg.drafts(STRANGER), "the reply under way", within=30)
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    assert texts(fake_tg, STRANGER) == ["".join(words).strip()], "finished, not cut off"
    # A second run finds nothing left to answer.
    again = await _run_service(config, env)
    try:
        polls = len(fake_tg.calls_to("getUpdates"))
        await until(lambda: len(fake_tg.calls_to("getUpdates")) > polls + 1, "polling again",
                    within=30)
    finally:
        again.send_signal(signal.SIGTERM)
        await asyncio.wait_for(again.communicate(), 60)
    assert texts(fake_tg, STRANGER) == ["".join(words).strip()]
    assert len(fake_ollama.requests_to("/api/chat")) == 1
