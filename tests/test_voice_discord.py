"""Voice end to end over Discord: a voice message in, a spoken reply out as a real Discord
voice message (flag, waveform, duration). Real piper, faster-whisper and discord.py."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.events import MessageStatus
from bot.service import Service, open_service
from bot.voice.audio import probe
from bot.voice.stt import Transcriber
from bot.voice.tts import SpokenClip, Synthesizer
from tests.fakes.discord import FakeDiscord
from tests.fakes.llm_backends import FakeOllama, ScriptedReply
from tests.support.discord import STRANGER_ID, bot_messages, serving, settled
from tests.support.helpers import db_rows, ollama_config, until
from tests.support.voice import ANSWER, QUESTION, heard

VOICE_FLAG = 1 << 13


@pytest.fixture(scope="module")
def spoken_question() -> SpokenClip:
    return asyncio.run(Synthesizer().synthesize(QUESTION))


@pytest.fixture
async def voice_service(data_dir: Path, fake_ollama: FakeOllama) -> AsyncIterator[Service]:
    async with open_service(ollama_config(data_dir, fake_ollama)) as service:
        yield service


def voice_attachment(fake_discord: FakeDiscord, clip: SpokenClip) -> dict[str, object]:
    return fake_discord.add_attachment(clip.ogg_opus, "voice-message.ogg", "audio/ogg",
                               duration_secs=clip.duration,
                               waveform=base64.b64encode(clip.waveform).decode())


async def test_voice_message_in_gets_a_spoken_voice_message_out(
        fake_discord: FakeDiscord, fake_ollama: FakeOllama, voice_service: Service,
        spoken_question: SpokenClip) -> None:
    fake_ollama.script(ScriptedReply(chunks=ANSWER))
    async with serving(voice_service):
        channel = fake_discord.dm_channel_id(STRANGER_ID)
        fake_discord.dm(author_id=STRANGER_ID, author_name="stranger", content="",
                attachments=[voice_attachment(fake_discord, spoken_question)])
        await until(lambda: any(m.get("flags", 0) & VOICE_FLAG
                                for m in bot_messages(fake_discord, channel)),
                    "a voice message from the bot", within=60)
    body = fake_ollama.requests_to("/api/chat")[-1].body
    assert body is not None
    asked = str(body["messages"][-1]["content"])  # type: ignore[index]
    assert asked.startswith("[voice note, transcribed automatically")
    assert heard(asked, "weather", "paris", "today") >= 2, asked
    from_bot = bot_messages(fake_discord, channel)
    assert from_bot[0]["content"] == "".join(ANSWER).strip()
    voice = from_bot[-1]
    assert voice["content"] == ""
    (attachment,) = voice["attachments"]
    assert 3.0 < float(attachment["duration_secs"]) < 15.0
    assert 0 < len(base64.b64decode(attachment["waveform"])) <= 256
    (upload,) = [c for c in fake_discord.calls if c.files and c.method == "POST"]
    audio = next(iter(upload.files.values()))
    info = probe(audio)
    assert (info.codec, info.sample_rate, info.channels) == ("opus", 48_000, 1)
    assert abs(info.duration - float(attachment["duration_secs"])) < 0.5
    back = await Transcriber().transcribe(audio)
    assert heard(back.text, "sunny", "warm", "sunglasses", "walk", "river") >= 3, back.text


async def test_malformed_voice_attachments_are_set_aside_or_said_never_a_traceback(
        fake_discord: FakeDiscord, fake_ollama: FakeOllama, voice_service: Service,
        caplog: pytest.LogCaptureFixture) -> None:
    async with serving(voice_service):
        channel = fake_discord.dm_channel_id(STRANGER_ID)
        # A duration that is no number: the message cannot be read, so it is quarantined.
        odd = fake_discord.add_attachment(b"OggS", "voice-message.ogg", "audio/ogg",
                                          duration_secs=2.0, waveform="AAAA")
        unreadable = fake_discord.dm(author_id=STRANGER_ID, author_name="stranger",
                                     content="", attachments=[{**odd, "duration_secs": [2]}])
        # A URL that is no string: the note cannot be fetched, and the person is told so.
        no_url = fake_discord.dm(author_id=STRANGER_ID, author_name="stranger", content="",
                                 attachments=[{**odd, "url": 5}])
        assert await settled(voice_service, no_url) == MessageStatus.FAILED
        text = fake_discord.dm(author_id=STRANGER_ID, author_name="stranger",
                               content="and text?")
        assert await settled(voice_service, text) == MessageStatus.ANSWERED
    replies = [m["content"] for m in bot_messages(fake_discord, channel)]
    assert replies == ["I couldn't make out that voice note.", "Hello there."]
    assert (f"message {unreadable['id']}",) in db_rows(voice_service,
                                                      "select ref from quarantine")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_corrupt_voice_message_gets_a_plain_answer(
        fake_discord: FakeDiscord, fake_ollama: FakeOllama, voice_service: Service) -> None:
    async with serving(voice_service):
        channel = fake_discord.dm_channel_id(STRANGER_ID)
        broken = fake_discord.add_attachment(b"OggS" + b"\x00" * 300, "voice-message.ogg",
                                             "audio/ogg", duration_secs=2.0, waveform="AAAA")
        voice = fake_discord.dm(author_id=STRANGER_ID, author_name="stranger", content="",
                                attachments=[broken])
        # Settled means delivered and recorded: the reply's last edit has landed by then.
        assert await settled(voice_service, voice) == MessageStatus.FAILED
        text = fake_discord.dm(author_id=STRANGER_ID, author_name="stranger",
                               content="and text?")
        assert await settled(voice_service, text) == MessageStatus.ANSWERED
    replies = [m["content"] for m in bot_messages(fake_discord, channel)]
    assert replies == ["I couldn't make out that voice note.", "Hello there."]
    assert len(fake_ollama.requests_to("/api/chat")) == 1
