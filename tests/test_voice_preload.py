"""`voice.preload`: the speech models load at start, or wait for the first voice note (the
default); either way that note is heard and answered."""

from __future__ import annotations

from pathlib import Path

from adapters.console import OWNER, PLATFORM
from bot.events import ChatKind, InboundEvent, MessageStatus, Reply, VoiceAttachment
from bot.service import Service, open_service
from bot.voice.tts import Synthesizer, encode_clip
from tests.fakes.llm_backends import FakeOllama, ScriptedReply
from tests.support.helpers import make_config, ollama_config, sent_messages, until
from tests.support.voice import QUESTION, heard


async def voice_note(text: str) -> tuple[bytes, float]:
    """`text` spoken into an OGG/Opus voice note by a synthesizer of the test's own."""
    synthesizer = Synthesizer()
    await synthesizer.load()
    clip = await encode_clip(await synthesizer.synthesize_pcm48k(text))
    return clip.ogg_opus, clip.duration


async def answer_voice_note(service: Service) -> list[str]:
    ogg, duration = await voice_note(QUESTION)

    async def fetch() -> bytes:
        return ogg

    event = InboundEvent(platform=PLATFORM, chat_id=OWNER, chat_kind=ChatKind.DM,
                         sender_id=OWNER, sender_name="Owner", message_id="voice-1",
                         voice=VoiceAttachment("audio/ogg", duration, "voice-1", fetch))
    texts: list[str] = []

    async def deliver(_event: InboundEvent, reply: Reply) -> None:
        texts.extend([part.text async for part in reply.parts if hasattr(part, "text")])

    result = await service.gateway.handle(event, deliver)
    assert result.status is MessageStatus.ANSWERED
    return texts


async def test_by_default_the_models_load_at_the_first_voice_note(
        data_dir: Path, fake_ollama: FakeOllama) -> None:
    fake_ollama.script(ScriptedReply(chunks=("Sunny.",)))
    async with open_service(ollama_config(data_dir, fake_ollama)) as service:
        speech = service.gateway.speech
        assert speech is not None and speech.transcriber is not None
        assert not speech.transcriber.loaded
        assert speech.synthesizer is not None and not speech.synthesizer.loaded
        texts = await answer_voice_note(service)
        assert "".join(texts) == "Sunny."
        assert heard(sent_messages(fake_ollama)[-1]["content"], "weather", "paris") >= 1
        assert speech.transcriber.loaded  # and kept for the next one


async def test_preload_loads_the_models_at_start(data_dir: Path,
                                                 fake_ollama: FakeOllama) -> None:
    fake_ollama.script(ScriptedReply(chunks=("Sunny.",)))
    plain = ollama_config(data_dir, fake_ollama)
    provider = {"type": "ollama", "base_url": fake_ollama.base_url,
                "models": [{"id": fake_ollama.models[0]}]}
    config = make_config(data_dir, gateway={"providers": {"ollama": provider}},
                         agents={"default": {"active_model": plain.agents.default.active_model}},
                         voice={"preload": True})
    assert config.voice.preload and not plain.voice.preload
    async with open_service(config) as service:
        speech = service.gateway.speech
        assert speech is not None
        transcriber, synthesizer = speech.transcriber, speech.synthesizer
        assert transcriber is not None and synthesizer is not None
        await until(lambda: transcriber.loaded and synthesizer.loaded, "both models loaded")
        texts = await answer_voice_note(service)
        assert "".join(texts) == "Sunny."
        assert heard(sent_messages(fake_ollama)[-1]["content"], "weather", "paris") >= 1
