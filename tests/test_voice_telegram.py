"""Voice end to end over Telegram: a spoken note in, a transcript to the model, a spoken reply
out as a real voice note. Real piper, real faster-whisper, real python-telegram-bot."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.config import Config, VoiceSpec
from bot.voice.audio import probe
from bot.voice.speech import Speech
from bot.voice.stt import Transcriber
from bot.voice.tts import SpokenClip, Synthesizer
from tests.fakes.llm_backends import FakeOllama, ScriptedReply
from tests.fakes.telegram import FakeTelegram
from tests.support.helpers import make_config, until, user_text
from tests.support.telegram import GROUP, STRANGER, Running, start, texts
from tests.support.voice import ANSWER, QUESTION, heard


@pytest.fixture(scope="module")
def spoken_question() -> SpokenClip:
    return asyncio.run(Synthesizer().synthesize(QUESTION))


@pytest.fixture(scope="module")
def spoken_to_the_bot() -> SpokenClip:
    """A clip the bundled Whisper hears as naming the bot. Piper adds random variation to every
    take, and now and then a take sounds like "Harkbot": this test is about what the gateway
    does with a note that names the bot, so it is given one that does."""
    async def take() -> SpokenClip:
        synthesizer, transcriber = Synthesizer(), Transcriber()
        for _ in range(5):
            clip = await synthesizer.synthesize("Hearthbot, what time is it in Paris?")
            heard_text = (await transcriber.transcribe(clip.ogg_opus)).text
            if Speech(VoiceSpec()).names_the_bot(heard_text, ()):
                return clip
        raise AssertionError(f"five takes of the bot's name were all misheard: {heard_text!r}")

    return asyncio.run(take())


def voice_config(data_dir: Path, tg: FakeTelegram, llm: FakeOllama,
                 voice_replies: str = "inbound") -> Config:
    return make_config(
        data_dir,
        gateway={"providers": {"ollama": {"type": "ollama", "base_url": llm.base_url,
                                          "models": [{"id": llm.models[0]}]}}},
        agents={"default": {"active_model": f"ollama/{llm.models[0]}"},
                "instances": {"admin": {"role": "admin"},
                              "guest": {"role": "guest", "voice_replies": voice_replies}}},
        channels={"telegram": {"token": tg.token, "api_base_url": tg.base_url,
                               "file_base_url": tg.base_file_url, "poll_timeout": 2,
                               "edit_interval": 0.2, "draft_interval": 0.05}},
    )


@pytest.fixture
async def running(data_dir: Path, fake_tg: FakeTelegram,
                  fake_ollama: FakeOllama) -> AsyncIterator[Running]:
    async for value in start(voice_config(data_dir, fake_tg, fake_ollama), fake_tg,
                             fake_ollama, voice=True):
        yield value


async def test_voice_note_in_gets_transcribed_and_a_spoken_reply_out(
        running: Running, spoken_question: SpokenClip) -> None:
    running.llm.script(ScriptedReply(chunks=ANSWER))
    running.tg.push_voice(chat_id=STRANGER, from_id=STRANGER, data=spoken_question.ogg_opus,
                          duration=round(spoken_question.duration))
    await until(lambda: running.tg.voices_sent, within=60)
    asked = user_text(running.llm)
    assert asked.startswith("[voice note, transcribed automatically")
    assert heard(asked, "weather", "paris", "today") >= 2, asked
    assert texts(running.tg, STRANGER)[0] == "".join(ANSWER).strip()
    (voice,) = running.tg.voices_sent
    audio = voice.files["voice"]
    info = probe(audio)
    assert (info.codec, info.sample_rate, info.channels) == ("opus", 48_000, 1)
    assert 3.0 < info.duration < 15.0
    assert abs(int(voice.params["duration"]) - info.duration) <= 1.0
    back = await Transcriber().transcribe(audio)
    assert heard(back.text, "sunny", "warm", "sunglasses", "walk", "river") >= 3, back.text
    sent = running.tg.sent_messages(STRANGER)
    assert "voice" in sent[-1], "it arrives as a voice bubble, not a file"


async def test_second_voice_note_waits_for_the_first_spoken_reply(
        running: Running, spoken_question: SpokenClip,
        monkeypatch: pytest.MonkeyPatch) -> None:
    speech = running.service.gateway.speech
    assert speech is not None and speech.synthesizer is not None
    synthesizer = speech.synthesizer
    started: list[tuple[float, str]] = []
    real = synthesizer.synthesize_pcm48k

    async def recorded(text: str) -> bytes:
        started.append((time.monotonic(), text))
        return await real(text)

    monkeypatch.setattr(synthesizer, "synthesize_pcm48k", recorded)
    running.llm.script(ScriptedReply(chunks=("First reply here. ", "It has two sentences.")),
                       ScriptedReply(chunks=("Second reply now.",)))
    for _ in range(2):
        running.tg.push_voice(chat_id=STRANGER, from_id=STRANGER,
                              data=spoken_question.ogg_opus,
                              duration=round(spoken_question.duration))
    await until(lambda: len(running.tg.voices_sent) == 2, within=90)
    first_voice_done = running.tg.voices_sent[0].at
    second = [at for at, text in started if text.startswith("Second")]
    assert second and min(second) > first_voice_done
    assert len(running.llm.requests_to("/api/chat")) == 2


@pytest.mark.parametrize("data", [b"", b"this is not audio at all" * 40], ids=["empty",
                                                                              "corrupt"])
async def test_bad_audio_gets_a_plain_answer_and_service_goes_on(running: Running,
                                                                 data: bytes) -> None:
    running.tg.push_voice(chat_id=STRANGER, from_id=STRANGER, data=data, duration=2)
    await until(lambda: texts(running.tg, STRANGER), within=30)
    assert texts(running.tg, STRANGER) == ["I couldn't make out that voice note."]
    assert running.llm.requests_to("/api/chat") == []
    running.tg.push_text(chat_id=STRANGER, from_id=STRANGER, text="Text still works?")
    await until(lambda: len(texts(running.tg, STRANGER)) == 2)
    assert running.tg.voices_sent == [], "a text question gets a text answer"


async def test_a_voice_note_telegram_will_not_hand_over_gets_a_plain_answer(
        running: Running, caplog: pytest.LogCaptureFixture) -> None:
    # A file id Telegram no longer knows (expired, or from another bot): getFile is refused.
    running.tg.push_update({"message": {
        "message_id": 900, "date": int(time.time()),
        "chat": {"id": STRANGER, "type": "private", "first_name": "Alice"},
        "from": {"id": STRANGER, "is_bot": False, "first_name": "Alice"},
        "voice": {"file_id": "gone", "file_unique_id": "gone", "duration": 2,
                  "mime_type": "audio/ogg"}}})
    await until(lambda: texts(running.tg, STRANGER), within=30)
    assert texts(running.tg, STRANGER) == ["I couldn't make out that voice note."]
    refused = [r for r in caplog.records if "could not be fetched" in r.getMessage()]
    assert refused and all(r.levelname == "WARNING" and r.exc_info is None for r in refused)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_in_a_group_a_voice_note_naming_the_bot_counts_as_a_mention(
        running: Running, spoken_question: SpokenClip, spoken_to_the_bot: SpokenClip) -> None:
    running.tg.push_voice(chat_id=GROUP, chat_type="group", from_id=STRANGER,
                          data=spoken_question.ogg_opus, duration=3)
    running.tg.push_voice(chat_id=GROUP, chat_type="group", from_id=STRANGER,
                          data=spoken_to_the_bot.ogg_opus, duration=3)
    await until(lambda: running.tg.voices_sent, within=60)
    (request,) = running.llm.requests_to("/api/chat")
    assert heard(user_text(running.llm), "time") == 1
    assert texts(running.tg, GROUP)[0] == "Hello there."
    assert request.body is not None


async def test_voice_replies_off_answers_in_text_only(data_dir: Path, fake_tg: FakeTelegram,
                                                     fake_ollama: FakeOllama,
                                                     spoken_question: SpokenClip) -> None:
    config = voice_config(data_dir, fake_tg, fake_ollama, voice_replies="off")
    async for tg_running in start(config, fake_tg, fake_ollama, voice=True):
        tg_running.tg.push_voice(chat_id=STRANGER, from_id=STRANGER,
                                 data=spoken_question.ogg_opus, duration=3)
        await until(lambda: texts(fake_tg, STRANGER), within=60)
        await tg_running.adapter.idle()  # the turn, spoken part included, is over
    assert texts(fake_tg, STRANGER) == ["Hello there."]
    assert fake_tg.voices_sent == []


async def test_an_overlong_voice_note_is_refused_before_download(
        running: Running, spoken_question: SpokenClip) -> None:
    running.tg.push_voice(chat_id=STRANGER, from_id=STRANGER, data=spoken_question.ogg_opus,
                          duration=3600)
    await until(lambda: texts(running.tg, STRANGER), within=30)
    assert texts(running.tg, STRANGER) == [
        "That voice note is too long for me; please keep it under 5 minutes."]
    assert running.tg.downloads == []
    assert running.llm.requests_to("/api/chat") == []
