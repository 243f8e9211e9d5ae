"""The fake Telegram server, proven against the real python-telegram-bot client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta

import httpx
import pytest
import pytest_asyncio
from telegram import Bot, BotCommand, InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.error import BadRequest, InvalidToken, NetworkError, RetryAfter
from telegram.ext import (
    Application,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)
from telegram.request import HTTPXRequest

from tests.fakes.telegram import FakeTelegram

pytestmark = pytest.mark.asyncio

OWNER = 4242
GROUP = -1001234567890


@pytest.fixture(autouse=True)
def timedelta_periods(monkeypatch: pytest.MonkeyPatch) -> None:
    # Opt in to the timedelta durations of PTB's next major version: no deprecation warnings.
    monkeypatch.setenv("PTB_TIMEDELTA", "1")


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        yield server


@pytest_asyncio.fixture
async def bot(fake: FakeTelegram) -> AsyncIterator[Bot]:
    async with Bot(fake.token, base_url=fake.base_url, base_file_url=fake.base_file_url) as b:
        yield b


def build_app(fake: FakeTelegram) -> Application:  # type: ignore[type-arg]
    return (
        Application.builder()
        .token(fake.token)
        .base_url(fake.base_url)
        .base_file_url(fake.base_file_url)
        .build()
    )


@asynccontextmanager
async def polling(app: Application) -> AsyncIterator[None]:  # type: ignore[type-arg]
    await app.initialize()
    assert app.updater is not None
    await app.updater.start_polling(poll_interval=0, timeout=timedelta(seconds=5))
    await app.start()
    try:
        yield
    finally:
        await app.updater.stop()
        await app.stop()
        await app.shutdown()


async def eventually(check: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def retry_seconds(exc: RetryAfter) -> float:
    # An int (with a deprecation warning) in PTB 22 unless PTB_TIMEDELTA is set.
    value = exc.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def ogg_opus(seconds: int) -> bytes:
    def page(header_type: int, granule: int, sequence: int, payload: bytes) -> bytes:
        return (b"OggS" + bytes([0, header_type]) + granule.to_bytes(8, "little")
                + (7).to_bytes(4, "little") + sequence.to_bytes(4, "little") + bytes(4)
                + bytes([1, len(payload)]) + payload)

    head = b"OpusHead" + bytes([1, 1]) + (312).to_bytes(2, "little") + (48000).to_bytes(
        4, "little") + bytes(3)
    return page(2, 0, 0, head) + page(4, seconds * 48000, 1, b"\xfc" * 20)


async def test_polling_start_up_and_text_reply(fake: FakeTelegram) -> None:
    seen: list[str] = []

    async def echo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.message is not None and update.message.text is not None
        seen.append(update.message.text)
        await context.bot.send_message(update.message.chat_id, f"echo: {update.message.text}")

    app = build_app(fake)
    app.add_handler(MessageHandler(filters.TEXT, echo))
    async with polling(app):
        pushed = fake.push_text(chat_id=OWNER, text="hello", from_id=OWNER)
        await eventually(lambda: bool(fake.sent_messages(OWNER)))

    assert [c.method for c in fake.calls[:3]] == ["getMe", "deleteWebhook", "getUpdates"]
    assert seen == ["hello"]
    [reply] = fake.sent_messages(OWNER)
    assert reply["text"] == "echo: hello"
    assert reply["from"]["id"] == fake.bot_id and reply["chat"]["type"] == "private"
    send = fake.calls_to("sendMessage")[0]
    assert send.params["chat_id"] == OWNER and send.params["text"] == "echo: hello"
    # On shutdown PTB acknowledges what it processed with one last offset.
    last_poll = fake.calls_to("getUpdates")[-1]
    assert last_poll.params["offset"] == pushed["update_id"] + 1
    assert last_poll.params["timeout"] == 0


async def test_commands_and_mentions_carry_server_made_entities(fake: FakeTelegram) -> None:
    started: list[int] = []
    mentioned: list[str] = []

    async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.effective_chat is not None
        started.append(update.effective_chat.id)

    async def mention(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.message is not None
        mentioned.extend(update.message.parse_entities(["mention"]).values())

    app = build_app(fake)
    app.add_handler(CommandHandler("start", start))
    app.add_handler(MessageHandler(filters.Entity("mention"), mention))
    async with polling(app):
        fake.push_text(chat_id=OWNER, text="/start", from_id=OWNER)
        fake.push_text(chat_id=GROUP, text="hi 👋 @hearth_test_bot, ping", from_id=OWNER,
                       chat_type="supergroup", chat_title="Den")
        await eventually(lambda: bool(started and mentioned))
    assert started == [OWNER]
    assert mentioned == ["@hearth_test_bot"]


async def test_voice_is_downloaded_through_get_file(fake: FakeTelegram) -> None:
    audio = ogg_opus(2) + bytes(range(256)) * 40
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def on_voice(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.message is not None and update.message.voice is not None
        assert update.message.voice.duration == timedelta(seconds=2)
        file = await update.message.voice.get_file()
        got.set_result(bytes(await file.download_as_bytearray()))

    app = build_app(fake)
    app.add_handler(MessageHandler(filters.VOICE, on_voice))
    async with polling(app):
        fake.push_voice(chat_id=OWNER, from_id=OWNER, data=audio, duration=2)
        assert await asyncio.wait_for(got, 3) == audio

    assert fake.calls_to("getFile")[0].params["file_id"].startswith("fake-voice-")
    assert fake.downloads == ["voice/file_1.oga"]


async def test_audio_file_round_trip(fake: FakeTelegram, bot: Bot) -> None:
    update = fake.push_audio(chat_id=OWNER, from_id=OWNER, data=b"ID3fake-mp3", duration=9,
                             file_name="song.mp3")
    [received] = await bot.get_updates(timeout=1)
    assert received.update_id == update["update_id"]
    assert received.message is not None and received.message.audio is not None
    assert received.message.audio.file_name == "song.mp3"
    file = await received.message.audio.get_file()
    assert file.file_path is not None and file.file_path.endswith("music/file_1.mp3")
    assert await file.download_as_bytearray() == bytearray(b"ID3fake-mp3")


async def test_send_voice_multipart_is_recorded(fake: FakeTelegram, bot: Bot) -> None:
    clip = ogg_opus(3)
    message = await bot.send_voice(OWNER, voice=clip, caption="listen")
    assert message.voice is not None and message.voice.mime_type == "audio/ogg"
    assert message.voice.file_size == len(clip) and message.caption == "listen"
    [call] = fake.voices_sent
    assert call.files == {"voice": clip}
    assert call.params["chat_id"] == OWNER
    assert message.voice.duration == timedelta(seconds=3)  # read from the Ogg granule

    # Not OGG/Opus: Telegram shows a file, not a voice bubble.
    wav = await bot.send_voice(OWNER, voice=b"RIFF....WAVEfmt ", duration=1)
    assert wav.voice is None and wav.document is not None
    sent = await bot.send_document(OWNER, document=b"%PDF-1.4", filename="a.pdf")
    assert sent.document is not None
    assert fake.calls_to("sendDocument")[0].files == {"document": b"%PDF-1.4"}


async def test_send_message_draft_is_recorded(fake: FakeTelegram, bot: Bot) -> None:
    assert await bot.send_message_draft(chat_id=OWNER, draft_id=7, text="") is True
    assert await bot.send_message_draft(chat_id=OWNER, draft_id=7, text="Thinking about it")
    [first, second] = fake.calls_to("sendMessageDraft")
    assert first.params == {"chat_id": OWNER, "draft_id": 7, "text": ""}
    assert second.params["text"] == "Thinking about it"
    assert fake.drafts(OWNER) == ["", "Thinking about it"]
    assert fake.sent_messages(OWNER) == []  # a draft is not a message

    fake.push_text(chat_id=GROUP, text="hi", from_id=OWNER, chat_type="supergroup")
    with pytest.raises(BadRequest):
        await bot.send_message_draft(chat_id=GROUP, draft_id=7, text="no drafts in groups")


async def test_injected_429_surfaces_as_retry_after(fake: FakeTelegram, bot: Bot) -> None:
    fake.fail_next("sendMessage", retry_after=7)
    with pytest.raises(RetryAfter) as caught:
        await bot.send_message(OWNER, "first")
    assert retry_seconds(caught.value) == 7
    assert fake.calls_to("sendMessage")[0].status == 429
    assert (await bot.send_message(OWNER, "second")).text == "second"

    fake.fail_next("sendChatAction", status=502, times=2)
    for _ in range(2):
        with pytest.raises(NetworkError):
            await bot.send_chat_action(OWNER, "typing")
    assert await bot.send_chat_action(OWNER, "typing")


async def test_edit_floor_models_flood_control(fake: FakeTelegram, bot: Bot) -> None:
    fake.edit_floor = 0.3
    message = await bot.send_message(OWNER, "draft 1")
    with pytest.raises(RetryAfter) as caught:
        await bot.edit_message_text("draft 2", chat_id=OWNER, message_id=message.message_id)
    assert retry_seconds(caught.value) == 1
    await asyncio.sleep(0.3)
    edited = await bot.edit_message_text("draft 2", chat_id=OWNER, message_id=message.message_id)
    assert not isinstance(edited, bool) and edited.text == "draft 2"
    assert fake.sent_messages(OWNER)[0]["text"] == "draft 2"


async def test_dropped_connection_is_a_network_error(fake: FakeTelegram, bot: Bot) -> None:
    fake.drop_next("sendMessage")
    with pytest.raises(NetworkError):
        await bot.send_message(OWNER, "lost")
    assert fake.calls_to("sendMessage")[0].status == 0
    assert (await bot.send_message(OWNER, "kept")).text == "kept"
    assert [m["text"] for m in fake.sent_messages(OWNER)] == ["kept"]


async def test_bad_token_fails_initialize(fake: FakeTelegram) -> None:
    requests = HTTPXRequest(), HTTPXRequest()
    app = (Application.builder().token("999:wrong-token").base_url(fake.base_url)
           .base_file_url(fake.base_file_url).request(requests[0])
           .get_updates_request(requests[1]).build())
    with pytest.raises(InvalidToken):
        await app.initialize()
    assert fake.calls[-1].method == "getMe" and fake.calls[-1].status == 401
    # A failed initialize() leaves PTB's HTTP clients open and shutdown() then does nothing.
    for request in requests:
        await request.shutdown()


async def test_wire_shapes_for_errors(fake: FakeTelegram) -> None:
    async with httpx.AsyncClient() as client:
        unknown = await client.post(f"{fake.base_url}{fake.token}/noSuchMethod")
        wrong = await client.get(f"{fake.base_url}0:nope/getMe")
        json_body = await client.post(f"{fake.base_url}{fake.token}/sendMessage",
                                      json={"chat_id": OWNER, "text": "42"})
    assert unknown.status_code == 404
    assert unknown.json() == {"ok": False, "error_code": 404, "description": "Not Found"}
    assert wrong.json() == {"ok": False, "error_code": 401, "description": "Unauthorized"}
    assert json_body.json()["result"]["text"] == "42"


async def test_text_validation_like_telegram(fake: FakeTelegram, bot: Bot) -> None:
    bad_markdown = ["1.5", "*bold", "_it", "`code", "```pre", "[link](http://x", "a-b", "(x)"]
    for text in bad_markdown:
        with pytest.raises(BadRequest, match=r"(?i)can't parse entities"):
            await bot.send_message(OWNER, text, parse_mode="MarkdownV2")
    for text in ["<b>bold", "<b><i>x</b></i>", "</b>", "<blink>x</blink>"]:
        with pytest.raises(BadRequest, match=r"(?i)can't parse entities"):
            await bot.send_message(OWNER, text, parse_mode="HTML")
    with pytest.raises(BadRequest, match=r"(?i)message is too long"):
        await bot.send_message(OWNER, "x" * 4097)
    with pytest.raises(BadRequest, match=r"(?i)message text is empty"):
        await bot.send_message(OWNER, "   ")

    rich = "*Hi* _there_ \\. `a.b` [site](http://x.io/a\\)b) ||s|| ~x~ __u__ 1\\.5"
    ok = await bot.send_message(OWNER, rich, parse_mode="MarkdownV2")
    assert ok.text == "Hi there . a.b site s x u 1.5"
    html = await bot.send_message(OWNER, "<b>a</b> &lt;3 <a href='x'>y</a>", parse_mode="HTML")
    assert html.text == "a <3 y"
    fence = await bot.send_message(OWNER, "```python\nprint(1)\n```", parse_mode="MarkdownV2")
    assert fence.text == "print(1)"
    assert (await bot.send_message(OWNER, "x" * 4096)).text == "x" * 4096

    with pytest.raises(BadRequest, match=r"(?i)message is not modified"):
        await bot.edit_message_text(rich, chat_id=OWNER, message_id=ok.message_id,
                                    parse_mode="MarkdownV2")
    # Same characters, other formatting: that is a modification.
    await bot.edit_message_text(ok.text, chat_id=OWNER, message_id=ok.message_id)
    with pytest.raises(BadRequest, match=r"(?i)not found"):
        await bot.edit_message_text("x", chat_id=OWNER, message_id=9999)


async def test_edit_delete_and_reply_shapes(fake: FakeTelegram, bot: Bot) -> None:
    incoming = fake.push_text(chat_id=OWNER, text="question", from_id=OWNER)
    asked = incoming["message"]["message_id"]
    reply = await bot.send_message(OWNER, "answer…", reply_to_message_id=asked)
    assert reply.message_id == asked + 1
    assert reply.reply_to_message is not None and reply.reply_to_message.text == "question"
    edited = await bot.edit_message_text("answer", chat_id=OWNER, message_id=reply.message_id)
    assert not isinstance(edited, bool) and edited.edit_date is not None
    follow = fake.push_text(chat_id=OWNER, text="thanks", from_id=OWNER,
                            reply_to_message_id=reply.message_id)
    assert follow["message"]["reply_to_message"]["from"]["id"] == fake.bot_id
    assert await bot.delete_message(OWNER, reply.message_id)
    assert fake.sent_messages(OWNER) == []

    await bot.set_my_commands([BotCommand("start", "Start"), BotCommand("voice", "Talk")])
    assert [c.command for c in await bot.get_my_commands()] == ["start", "voice"]


async def test_inline_keyboards_presses_and_callback_answers(fake: FakeTelegram,
                                                             bot: Bot) -> None:
    keyboard = InlineKeyboardMarkup([[InlineKeyboardButton("Yes", callback_data="q:1:yes"),
                                      InlineKeyboardButton("No", callback_data="q:1:no")]])
    sent = await bot.send_message(OWNER, "Go ahead?", reply_markup=keyboard)
    assert sent.reply_markup == keyboard
    assert [b["callback_data"] for b in fake.buttons(OWNER, sent.message_id)] == [
        "q:1:yes", "q:1:no"]
    with pytest.raises(ValueError, match="no button"):
        fake.press(OWNER, sent.message_id, "q:1:maybe", from_id=OWNER)

    pushed = fake.press(OWNER, sent.message_id, "q:1:yes", from_id=OWNER)
    (update,) = await bot.get_updates(timeout=0)
    query = update.callback_query
    assert query is not None and query.data == "q:1:yes" and query.from_user.id == OWNER
    assert query.id == pushed["callback_query"]["id"]
    assert query.message is not None and query.message.message_id == sent.message_id
    assert await bot.answer_callback_query(query.id, text="Noted.")
    assert fake.callback_answers[query.id]["text"] == "Noted."
    with pytest.raises(BadRequest, match=r"(?i)query id is invalid"):
        await bot.answer_callback_query(query.id)  # once only
    with pytest.raises(BadRequest, match=r"(?i)query id is invalid"):
        await bot.answer_callback_query("no-such-query")

    # Editing the text without a markup takes the keyboard away, as on Telegram.
    await bot.edit_message_text("Go ahead? Yes.", chat_id=OWNER, message_id=sent.message_id)
    assert fake.buttons(OWNER, sent.message_id) == []
    fake.press(OWNER, sent.message_id, "q:1:yes", from_id=OWNER, stale=True)  # an old client
    # editMessageReplyMarkup puts buttons back and takes them away again.
    again = InlineKeyboardMarkup([[InlineKeyboardButton("Undo", callback_data="q:1:undo")]])
    await bot.edit_message_reply_markup(OWNER, sent.message_id, reply_markup=again)
    assert [b["text"] for b in fake.buttons(OWNER, sent.message_id)] == ["Undo"]
    with pytest.raises(BadRequest, match="not modified"):
        await bot.edit_message_reply_markup(OWNER, sent.message_id, reply_markup=again)
    await bot.edit_message_reply_markup(OWNER, sent.message_id)
    assert fake.buttons(OWNER, sent.message_id) == []
    too_long = InlineKeyboardMarkup([[InlineKeyboardButton("X", callback_data="x" * 65)]])
    with pytest.raises(BadRequest, match=r"(?i)button_data_invalid"):
        await bot.send_message(OWNER, "long data", reply_markup=too_long)


async def test_long_poll_parks_until_an_update_arrives(fake: FakeTelegram, bot: Bot) -> None:
    poll = asyncio.create_task(bot.get_updates(timeout=10))
    await asyncio.sleep(0.3)
    assert not poll.done()
    pushed_at = time.monotonic()
    fake.push_text(chat_id=OWNER, text="wake up", from_id=OWNER)
    [update] = await asyncio.wait_for(poll, 2)
    assert time.monotonic() - pushed_at < 0.5
    assert update.message is not None and update.message.text == "wake up"

    # Asking past an update acknowledges it: it is never delivered again.
    assert await bot.get_updates(offset=update.update_id + 1, timeout=0) == ()
    assert await bot.get_updates(timeout=0) == ()


async def test_raw_updates_redelivery_and_dropping(fake: FakeTelegram, bot: Bot) -> None:
    first = fake.push_text(chat_id=OWNER, text="once", from_id=OWNER)
    fake.push_update(first)  # Telegram resending an update that was never acknowledged
    edited = {"edited_message": {**first["message"], "text": "twice", "edit_date": 1}}
    fake.push_update(edited)
    updates = await bot.get_updates(timeout=0)
    assert [u.update_id for u in updates][:2] == [first["update_id"]] * 2
    assert updates[2].edited_message is not None and updates[2].edited_message.text == "twice"

    fake.push_update(first)  # acknowledged below: never delivered again
    assert await bot.get_updates(offset=updates[-1].update_id + 1, timeout=0) == ()

    fake.push_text(chat_id=OWNER, text="stale", from_id=OWNER)
    await bot.delete_webhook(drop_pending_updates=True)
    assert await bot.get_updates(timeout=0) == ()


async def test_stop_is_fast_with_a_parked_poll(fake: FakeTelegram, bot: Bot) -> None:
    poll = asyncio.create_task(bot.get_updates(timeout=30))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await fake.stop()
    assert time.monotonic() - started < 1.0
    assert await asyncio.wait_for(poll, 1) == ()


async def test_application_teardown_is_fast(fake: FakeTelegram) -> None:
    app = build_app(fake)
    polling_ctx = polling(app)
    await polling_ctx.__aenter__()
    await eventually(lambda: len(fake.calls_to("getUpdates")) >= 1)
    await asyncio.sleep(0.2)  # the poll is parked in the fake now
    started = time.monotonic()
    await polling_ctx.__aexit__(None, None, None)
    await fake.stop()
    assert time.monotonic() - started < 1.0

