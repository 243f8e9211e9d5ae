"""Images in, end to end: Telegram photos and image files, Discord image attachments and the
terminal's /image, through the real client libraries and the fakes, to a fake model that checks
them the way its server does. Test pictures are made with Pillow, large on purpose."""

from __future__ import annotations

import dataclasses
import io
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from adapters.console import ConsoleChat
from bot.config import Config
from bot.errors import ConfigError, ImageError, ImageTooLarge, ImageUnreadable
from bot.events import MessageStatus
from bot.images import downscale
from bot.service import Service, open_service
from bot.turn import CANNOT_SEE, FIRST_IMAGES_ONLY
from tests.fakes.discord import FakeDiscord
from tests.fakes.llm_backends import FakeOllama, FakeOpenAI, ScriptedReply, sent_images
from tests.fakes.telegram import FakeTelegram
from tests.support.discord import STRANGER_ID, bot_messages, serving, settled, taken
from tests.support.helpers import Json, db_rows, make_config, until
from tests.support.telegram import GROUP, STRANGER, Running, acknowledged, start, texts

CAPTION = "What is in this picture?"
ANSWER = "Hello there."  # the fake model's reply unless scripted otherwise
GPS_IFD = 0x8825


def picture(width: int = 3000, height: int = 2000, *, fmt: str = "JPEG", noisy: bool = False,
            alpha: bool = False, gps: bool = False) -> bytes:
    """A test image. Noise compresses badly, so its sizes differ widely in bytes; `gps` puts a
    location into its EXIF, which must never reach the model."""
    mode = "RGBA" if alpha else "RGB"
    if noisy:
        rng = random.Random(width * height)
        image = Image.frombytes(mode, (width, height), rng.randbytes(width * height * len(mode)))
    else:
        image = Image.new(mode, (width, height), (200, 80, 40, 128) if alpha else (200, 80, 40))
    out = io.BytesIO()
    exif = Image.Exif()
    if gps:
        exif[0x010F] = "PhoneMaker"  # Make
        exif.get_ifd(GPS_IFD).update({1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 3.0)})
    image.save(out, format=fmt, **({"exif": exif} if gps else {}))
    return out.getvalue()


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def config(data_dir: Path, llm: FakeOllama | FakeOpenAI, *, sees: bool = True,
           tg: FakeTelegram | None = None, **images: Any) -> Config:
    kind = "ollama" if isinstance(llm, FakeOllama) else "openai-compat"
    model: Json = {"id": llm.models[0], "context_window": 8192, "max_tokens": 256,
                   "capabilities": ["text", "image"] if sees else ["text"]}
    sections: dict[str, Any] = {
        "gateway": {"providers": {"vision": {"type": kind, "base_url": llm.base_url,
                                             "first_token_timeout": 5, "models": [model]}}},
        "agents": {"default": {"active_model": f"vision/{llm.models[0]}"}},
    }
    if images:
        sections["images"] = images
    if tg is not None:
        sections["channels"] = {"telegram": {
            "token": tg.token, "api_base_url": tg.base_url, "file_base_url": tg.base_file_url,
            "poll_timeout": 2, "edit_interval": 0.2, "draft_interval": 0.05}}
    return make_config(data_dir, **sections)


def last_chat(llm: FakeOllama | FakeOpenAI) -> Json:
    bodies = llm.chat_bodies()
    assert bodies, "the model was never asked"
    return bodies[-1]


def own_message(llm: FakeOllama | FakeOpenAI) -> Json:
    message: Json = last_chat(llm)["messages"][-1]
    assert message["role"] == "user"
    return message


@pytest.fixture
async def telegram(data_dir: Path, fake_tg: FakeTelegram,
                   fake_ollama: FakeOllama) -> AsyncIterator[Running]:
    async for value in start(config(data_dir, fake_ollama, tg=fake_tg), fake_tg, fake_ollama):
        yield value


# --- the three that must be shown -------------------------------------------------------------

async def test_telegram_photo_with_a_caption_reaches_ollama_as_base64_images(
        telegram: Running) -> None:
    update = telegram.tg.push_photo(chat_id=STRANGER, from_id=STRANGER, data=picture(),
                                    caption=CAPTION)
    await until(lambda: texts(telegram.tg, STRANGER), "the answer")
    await telegram.adapter.idle()
    assert texts(telegram.tg, STRANGER) == [ANSWER]
    message = own_message(telegram.llm)
    assert message["content"] == CAPTION
    (image,) = message["images"]
    assert isinstance(image, str) and not image.startswith("data:"), "Ollama takes bare base64"
    (sent,) = sent_images(last_chat(telegram.llm))
    shown = decoded(sent)
    assert (shown.format, shown.size) == ("JPEG", (1024, 683))
    # Of the sizes Telegram offered, the largest (none is over the default cap) was fetched.
    largest = max(update["message"]["photo"], key=lambda s: s["width"])
    assert largest["width"] == 2560
    assert len(telegram.tg.downloads) == 1 and telegram.tg.downloads[0].startswith("photos/")
    # The history keeps that an image was shown, never its bytes.
    rows = db_rows(telegram.service)
    assert ("[image] " + CAPTION) in {v for row in rows for v in row}
    assert not any(isinstance(v, str | bytes) and image[:64] in str(v) for r in rows for v in r)


async def test_a_text_only_model_says_so_in_one_sentence_and_still_answers_the_caption(
        data_dir: Path, fake_tg: FakeTelegram, fake_ollama: FakeOllama) -> None:
    async for running in start(config(data_dir, fake_ollama, sees=False, tg=fake_tg), fake_tg,
                               fake_ollama):
        running.tg.push_photo(chat_id=STRANGER, from_id=STRANGER, data=picture(),
                              caption=CAPTION)
        await until(lambda: texts(fake_tg, STRANGER), "the answer")
        await running.adapter.idle()
        assert texts(fake_tg, STRANGER) == [f"{CANNOT_SEE}\n\n{ANSWER}"]
        message = own_message(fake_ollama)
        assert message["content"] == CAPTION and "images" not in message
        assert fake_tg.downloads == [], "an image no model will see is not even downloaded"
        # A photo alone: the sentence is the whole answer, and the model is not asked.
        running.tg.push_photo(chat_id=STRANGER, from_id=STRANGER, data=picture(600, 400))
        await until(lambda: len(texts(fake_tg, STRANGER)) == 2, "the second answer")
        await running.adapter.idle()
        assert texts(fake_tg, STRANGER)[1] == CANNOT_SEE
        assert len(fake_ollama.chat_bodies()) == 1


async def test_discord_image_attachments_reach_openai_as_downscaled_image_parts(
        data_dir: Path, fake_discord: FakeDiscord, fake_openai: FakeOpenAI) -> None:
    holiday = picture(gps=True)
    assert decoded(holiday).getexif().get_ifd(GPS_IFD), "the photo says where it was taken"
    photo = fake_discord.add_attachment(holiday, "holiday.jpg", "image/jpeg")
    sticker = fake_discord.add_attachment(picture(1600, 400, fmt="PNG", alpha=True),
                                          "logo.png", "image/png")
    assert photo["width"] == 3000 and sticker["height"] == 400
    async with open_service(config(data_dir, fake_openai), voice=False) as service, \
            serving(service):
        msg = fake_discord.dm(author_id=STRANGER_ID, author_name="stranger", content=CAPTION,
                              attachments=[photo, sticker])
        assert await settled(service, msg) is MessageStatus.ANSWERED
    channel = int(msg["channel_id"])
    assert [m["content"] for m in bot_messages(fake_discord, channel)] == [ANSWER]
    text, first, second = own_message(fake_openai)["content"]
    assert text == {"type": "text", "text": CAPTION}
    assert first["type"] == second["type"] == "image_url"
    assert first["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert second["image_url"]["url"].startswith("data:image/png;base64,")
    jpeg, png = (decoded(data) for data in sent_images(last_chat(fake_openai)))
    assert jpeg.size == (1024, 683)
    # EXIF, and the location in it, is gone; transparency is kept, so the logo stays PNG.
    assert not jpeg.getexif() and "exif" not in jpeg.info
    assert png.size == (1024, 256) and png.mode == "RGBA"


async def test_images_beyond_the_limit_per_message_are_said_and_not_fetched(
        data_dir: Path, fake_discord: FakeDiscord, fake_openai: FakeOpenAI) -> None:
    shots = [fake_discord.add_attachment(picture(400 + n, 300), f"shot{n}.png", "image/png")
             for n in range(3)]
    async with open_service(config(data_dir, fake_openai, max_per_message=2),
                            voice=False) as service, serving(service):
        msg = fake_discord.dm(author_id=STRANGER_ID, author_name="stranger", content=CAPTION,
                              attachments=shots)
        assert await settled(service, msg) is MessageStatus.ANSWERED
    replies = [m["content"] for m in bot_messages(fake_discord, int(msg["channel_id"]))]
    assert replies == [f"{FIRST_IMAGES_ONLY.format(count=2)}\n\n{ANSWER}"]
    assert [decoded(d).width for d in sent_images(last_chat(fake_openai))] == [400, 401]
    fetched = [c.path for c in fake_discord.calls if c.path.startswith("/attachments/")]
    assert len(fetched) == 2


# --- what goes wrong gets a sentence, and the caption an answer -------------------------------

async def test_the_largest_photo_size_under_the_cap_is_fetched_and_a_larger_file_is_not(
        data_dir: Path, fake_tg: FakeTelegram, fake_ollama: FakeOllama) -> None:
    cap = 300_000
    async for running in start(config(data_dir, fake_ollama, tg=fake_tg, max_bytes=cap),
                               fake_tg, fake_ollama):
        update = fake_tg.push_photo(chat_id=STRANGER, from_id=STRANGER,
                                    data=picture(2000, 1500, noisy=True), caption=CAPTION)
        await until(lambda: len(texts(fake_tg, STRANGER)) == 1, "the first answer")
        sizes = update["message"]["photo"]
        fitting = [s for s in sizes if s["file_size"] <= cap]
        assert fitting and len(fitting) < len(sizes), "the test needs sizes on both sides"
        best = max(fitting, key=lambda s: s["width"])
        (sent,) = sent_images(last_chat(fake_ollama))
        assert decoded(sent).width == min(best["width"], 1024)
        assert len(fake_tg.downloads) == 1

        fake_tg.push_document(chat_id=STRANGER, from_id=STRANGER, file_name="scan.png",
                              mime_type="image/png", data=picture(1800, 1800, fmt="PNG",
                                                                  noisy=True),
                              caption="And this one?")
        await until(lambda: len(texts(fake_tg, STRANGER)) == 2, "the second answer")
        await running.adapter.idle()
        assert texts(fake_tg, STRANGER)[1] == f"{ImageTooLarge.user_message}\n\n{ANSWER}"
        assert own_message(fake_ollama)["content"] == "And this one?"
        assert "images" not in own_message(fake_ollama)
        assert len(fake_tg.downloads) == 1, "a file over the cap is refused before download"


async def test_a_corrupt_image_gets_a_sentence_the_caption_an_answer_and_nothing_crashes(
        telegram: Running) -> None:
    broken = picture()[:2000]  # a JPEG cut short
    telegram.tg.push_document(chat_id=STRANGER, from_id=STRANGER, data=broken,
                              mime_type="image/jpeg", file_name="cut.jpg", caption=CAPTION)
    await until(lambda: texts(telegram.tg, STRANGER), "the answer")
    await telegram.adapter.idle()
    assert texts(telegram.tg, STRANGER) == [f"{ImageUnreadable.user_message}\n\n{ANSWER}"]
    assert own_message(telegram.llm)["content"] == CAPTION
    asked = len(telegram.llm.chat_bodies())
    # Without a caption there is nothing else to answer: the sentence alone, no model call.
    telegram.tg.push_document(chat_id=STRANGER, from_id=STRANGER, data=b"not an image at all",
                              mime_type="image/png", file_name="fake.png")
    await until(lambda: len(texts(telegram.tg, STRANGER)) == 2, "the second answer")
    await telegram.adapter.idle()
    assert texts(telegram.tg, STRANGER)[1] == ImageUnreadable.user_message
    assert len(telegram.llm.chat_bodies()) == asked
    # And the chat goes on.
    telegram.tg.push_text(chat_id=STRANGER, from_id=STRANGER, text="still there?")
    await until(lambda: len(texts(telegram.tg, STRANGER)) == 3, "the third answer")


async def test_a_photo_telegram_will_not_hand_over_is_said_and_the_caption_answered(
        telegram: Running, caplog: pytest.LogCaptureFixture) -> None:
    telegram.tg.push_update({"message": {
        "message_id": 900, "date": int(time.time()), "caption": CAPTION,
        "chat": {"id": STRANGER, "type": "private", "first_name": "Alice"},
        "from": {"id": STRANGER, "is_bot": False, "first_name": "Alice"},
        "photo": [{"file_id": "gone", "file_unique_id": "gone", "width": 90, "height": 90,
                   "file_size": 900}]}})
    await until(lambda: texts(telegram.tg, STRANGER), "the answer")
    await telegram.adapter.idle()
    assert texts(telegram.tg, STRANGER) == [f"{ImageError.user_message}\n\n{ANSWER}"]
    refused = [r for r in caplog.records if "could not fetch image" in r.getMessage()]
    assert refused and all(r.levelname == "WARNING" and r.exc_info is None for r in refused)


async def test_a_photo_whose_caption_mentions_the_bot_is_answered_in_a_group(
        telegram: Running) -> None:
    quiet = telegram.tg.push_photo(chat_id=GROUP, from_id=STRANGER, data=picture(600, 400),
                                   chat_type="supergroup", caption="look at my cat")
    await until(lambda: acknowledged(telegram.tg, quiet["update_id"]), "the quiet photo taken")
    mention = f"@{telegram.tg.bot_user['username']} what breed is this?"
    telegram.tg.push_photo(chat_id=GROUP, from_id=STRANGER, data=picture(600, 400),
                           chat_type="supergroup", caption=mention)
    await until(lambda: texts(telegram.tg, GROUP), "the answer")
    await telegram.adapter.idle()
    assert texts(telegram.tg, GROUP) == [ANSWER]
    assert len(telegram.llm.chat_bodies()) == 1, "the photo without a mention is not answered"
    message = own_message(telegram.llm)
    assert message["content"] == "what breed is this?" and len(message["images"]) == 1


async def test_a_discord_image_whose_message_mentions_the_bot_is_answered_in_a_guild(
        data_dir: Path, fake_discord: FakeDiscord, fake_openai: FakeOpenAI) -> None:
    async with open_service(config(data_dir, fake_openai), voice=False) as service, \
            serving(service, message_content_intent=True) as adapter:
        quiet = fake_discord.guild_message(
            author_id=STRANGER_ID, author_name="stranger", content="my cat",
            attachments=[fake_discord.add_attachment(picture(500, 400), "a.png", "image/png")])
        await taken(adapter, quiet)
        asked = fake_discord.guild_message(
            author_id=STRANGER_ID, author_name="stranger", content="what breed is this?",
            mention_bot=True,
            attachments=[fake_discord.add_attachment(picture(500, 400), "b.png", "image/png")])
        assert await settled(service, asked) is MessageStatus.ANSWERED
    assert [m["content"] for m in bot_messages(fake_discord, fake_discord.channel_id)] == [ANSWER]
    assert len(fake_openai.chat_bodies()) == 1, "the image without a mention is not answered"
    text, image = own_message(fake_openai)["content"]
    assert text["text"] == "what breed is this?" and image["type"] == "image_url"


async def test_a_photo_left_unanswered_is_fetched_again_and_answered_after_a_restart(
        data_dir: Path, fake_tg: FakeTelegram, fake_ollama: FakeOllama) -> None:
    settings = config(data_dir, fake_ollama, tg=fake_tg)
    fake_ollama.script(ScriptedReply(chunks=("late",), first_token_delay=30))
    async for _ in start(settings, fake_tg, fake_ollama):
        fake_tg.push_photo(chat_id=STRANGER, from_id=STRANGER, data=picture(), caption=CAPTION)
        await until(lambda: fake_ollama.chat_bodies(), "the first attempt")
    # The service stopped mid-turn; the stored event kept the photo's file id, not its bytes.
    async for running in start(settings, fake_tg, fake_ollama):
        await until(lambda: texts(fake_tg, STRANGER), "the answer")
        await running.adapter.idle()
        assert texts(fake_tg, STRANGER) == [ANSWER]
        assert len(fake_ollama.chat_bodies()) == 2
        assert fake_tg.downloads[0] == fake_tg.downloads[1], "fetched again by its file id"
        (sent,) = sent_images(last_chat(fake_ollama))
        assert decoded(sent).size == (1024, 683)


def test_a_photo_is_turned_upright_before_its_exif_goes() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera was held sideways; shown turned 90° clockwise
    out = io.BytesIO()
    Image.new("RGB", (3000, 2000), (10, 20, 30)).save(out, format="JPEG", exif=exif)
    prepared = downscale(out.getvalue(), 1024)
    shown = decoded(prepared.data)
    assert prepared.mime_type == "image/jpeg" and shown.size == (683, 1024)
    assert not shown.getexif()


def test_an_image_declaring_too_many_pixels_is_refused_undecoded() -> None:
    out = io.BytesIO()
    Image.new("1", (9000, 9000)).save(out, format="PNG")  # a small file, 81 megapixels
    assert len(out.getvalue()) < 100_000
    with pytest.raises(ImageTooLarge):
        downscale(out.getvalue(), 1024)


# --- the terminal -----------------------------------------------------------------------------

@pytest.fixture
async def vision_service(data_dir: Path, fake_ollama: FakeOllama) -> AsyncIterator[Service]:
    async with open_service(config(data_dir, fake_ollama), voice=False) as service:
        yield service


async def test_console_image_sends_a_file_from_disk_with_its_caption(
        vision_service: Service, fake_ollama: FakeOllama, tmp_path: Path) -> None:
    path = tmp_path / "my photos" / "tall.png"
    path.parent.mkdir()
    path.write_bytes(picture(1000, 3000, fmt="PNG"))
    lines = [f'/image "{path}" how tall is it?', "/image", f"/image {tmp_path / 'gone.png'}"]
    out, err = io.StringIO(), io.StringIO()

    def read_line(prompt: str) -> str:
        if not lines:
            raise EOFError
        return lines.pop(0)

    chat = ConsoleChat(vision_service.gateway, out=out, err=err, read_line=read_line)
    await chat.repl()
    assert out.getvalue().strip() == ANSWER
    assert err.getvalue().splitlines() == [
        "Usage: /image PATH [caption] (quote a path that has spaces)",
        f"There is no file at {tmp_path / 'gone.png'}."]
    assert len(fake_ollama.chat_bodies()) == 1
    assert own_message(fake_ollama)["content"] == "how tall is it?"
    (sent,) = sent_images(last_chat(fake_ollama))
    assert decoded(sent).size == (341, 1024)


async def test_an_image_the_window_cannot_hold_is_said_not_sent(
        data_dir: Path, fake_ollama: FakeOllama, tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    path.write_bytes(picture())
    small = config(data_dir, fake_ollama)
    provider = small.gateway.providers["vision"]
    narrow = dataclasses.replace(provider.models[0], context_window=1024, max_tokens=128)
    small = dataclasses.replace(small, gateway=dataclasses.replace(
        small.gateway, providers={"vision": dataclasses.replace(provider, models=(narrow,))}))
    out, err = io.StringIO(), io.StringIO()
    async with open_service(small, voice=False) as service:
        chat = ConsoleChat(service.gateway, out=out, err=err)
        result = await chat.ask_with_image(f"{path} what is it?")
    assert result.status is MessageStatus.FAILED
    assert "does not fit in the model's context window" in err.getvalue()
    assert fake_ollama.chat_bodies() == []


# --- config -----------------------------------------------------------------------------------

def test_an_unknown_capability_is_a_config_error_at_its_key_path(data_dir: Path) -> None:
    provider = {"type": "ollama", "base_url": "http://127.0.0.1:1",
                "models": [{"id": "m"}, {"id": "llava", "capabilities": ["text", "vision"]}]}
    with pytest.raises(ConfigError) as raised:
        make_config(data_dir, gateway={"providers": {"o": provider}},
                    agents={"default": {"active_model": "o/m"}})
    assert raised.value.path == "gateway.providers.o.models[1].capabilities[1]"
    assert "'vision'" in raised.value.problem and "image" in raised.value.problem
    with pytest.raises(ConfigError) as raised:
        make_config(data_dir, images={"max_side": 10})
    assert raised.value.path == "images.max_side"
    embedded = {"type": "embedded", "models": [{"id": "m", "capabilities": ["image"]}]}
    with pytest.raises(ConfigError) as raised:
        make_config(data_dir, gateway={"providers": {"local": embedded}},
                    agents={"default": {"active_model": "local/m"}})
    assert raised.value.path == "gateway.providers.local.models[0].capabilities[0]"


async def test_the_bundled_model_says_it_cannot_see_and_answers_the_caption(
        data_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    path.write_bytes(picture(800, 600))
    out, err = io.StringIO(), io.StringIO()
    async with open_service(make_config(data_dir), voice=False) as service:
        chat = ConsoleChat(service.gateway, out=out, err=err)
        result = await chat.ask_with_image(f"{path} Say hello.")
    assert result.status is MessageStatus.ANSWERED
    said = out.getvalue()
    assert said.startswith(f"{CANNOT_SEE}\n\n") and said[len(CANNOT_SEE):].strip(), said


async def test_the_model_fakes_refuse_images_their_servers_would_refuse(
        fake_ollama: FakeOllama, fake_openai: FakeOpenAI) -> None:
    async with httpx.AsyncClient() as client:
        refused = await client.post(f"{fake_ollama.base_url}/api/chat", json={
            "model": fake_ollama.models[0],
            "messages": [{"role": "user", "content": "hi", "images": ["not base64!"]}]})
        assert refused.status_code == 400 and "base64" in refused.json()["error"]
        for part in ({"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}},
                     {"type": "image_url", "image_url": "data:image/png;base64,AAAA"},
                     {"type": "picture", "data": "AAAA"}):
            refused = await client.post(f"{fake_openai.base_url}/chat/completions", json={
                "model": fake_openai.models[0], "stream": True,
                "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"},
                                                          part]}]})
            assert refused.status_code == 400, part
