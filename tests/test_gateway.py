"""One message through the whole core: inbox, router, persona, session, model, reply, record."""

from __future__ import annotations

import io
from pathlib import Path

from adapters.console import GUEST, OWNER, ConsoleChat
from bot.events import ChatKind, InboundEvent, MessageStatus
from bot.service import Service
from persona.personas import ADMIN_PROMPT, GUEST_PROMPT
from tests.fakes.llm_backends import FakeOllama, ScriptedReply
from tests.support.helpers import db_rows, sent_messages


def console(service: Service, sender: str = OWNER) -> tuple[ConsoleChat, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    return ConsoleChat(service.gateway, sender=sender, out=out, err=err), out, err


async def test_owner_gets_admin_prompt_and_sees_the_stream(ollama_service: Service,
                                                           fake_ollama: FakeOllama) -> None:
    fake_ollama.script(ScriptedReply(chunks=("Paris", " is", " the", " capital.")))
    chat, out, err = console(ollama_service)
    result = await chat.ask("What is the capital of France?")
    assert result.status is MessageStatus.ANSWERED
    assert out.getvalue() == "Paris is the capital.\n"
    assert err.getvalue() == ""
    messages = sent_messages(fake_ollama)
    assert messages[0] == {"role": "system", "content": ADMIN_PROMPT}
    assert messages[-1] == {"role": "user", "content": "What is the capital of France?"}
    body = fake_ollama.requests_to("/api/chat")[-1].body
    assert body is not None and body["model"] == "llama3.2:3b" and body["keep_alive"] == "24h"
    (turn,) = db_rows(ollama_service, "select persona, model, status, completion_tokens, "
                                      "first_token_at is not null from turns")
    assert turn == ("admin", "ollama/llama3.2:3b", "answered", 4, 1)


async def test_guest_gets_guest_prompt(ollama_service: Service, fake_ollama: FakeOllama) -> None:
    chat, out, _ = console(ollama_service, GUEST)
    await chat.ask("hello")
    assert sent_messages(fake_ollama)[0] == {"role": "system", "content": GUEST_PROMPT}
    assert out.getvalue() == "Hello there.\n"


async def test_history_is_kept_per_persona_and_new_starts_over(ollama_service: Service,
                                                              fake_ollama: FakeOllama) -> None:
    fake_ollama.script(ScriptedReply(chunks=("Hi Ada.",)), ScriptedReply(chunks=("Ada.",)))
    chat, out, _ = console(ollama_service)
    await chat.ask("My name is Ada.")
    await chat.ask("What is my name?")
    assert [m["content"] for m in sent_messages(fake_ollama)[1:]] == [
        "My name is Ada.", "Hi Ada.", "What is my name?"]
    await chat.ask("/new")
    assert out.getvalue().endswith("Started a fresh conversation.\n")
    await chat.ask("Who am I?")
    assert [m["content"] for m in sent_messages(fake_ollama)[1:]] == ["Who am I?"]
    guest_chat, _, _ = console(ollama_service, GUEST)
    await guest_chat.ask("Hello")
    assert [m["content"] for m in sent_messages(fake_ollama)[1:]] == ["Hello"]


async def test_backend_failure_is_one_sentence_and_recorded(ollama_service: Service,
                                                           fake_ollama: FakeOllama) -> None:
    fake_ollama.script(ScriptedReply(status=500))
    chat, out, err = console(ollama_service)
    result = await chat.ask("hello?")
    assert result.status is MessageStatus.FAILED
    assert out.getvalue() == ""
    assert err.getvalue() == "The model isn't reachable right now. Please try again in a moment.\n"
    assert db_rows(ollama_service, "select state from inbox") == [("failed",)]
    ((status, error),) = db_rows(ollama_service, "select status, error from turns")
    assert status == "failed" and "500" in str(error)
    # A failed turn leaves no half conversation behind: the next turn starts clean.
    await chat.ask("again")
    assert [m["content"] for m in sent_messages(fake_ollama)[1:]] == ["again"]


async def test_mid_reply_drop_keeps_partial_text_and_says_so(ollama_service: Service,
                                                             fake_ollama: FakeOllama) -> None:
    fake_ollama.script(ScriptedReply(chunks=("The", " answer", " is"), disconnect_after=2))
    chat, out, err = console(ollama_service)
    await chat.ask("question")
    assert out.getvalue() == "The answer\n"
    assert err.getvalue() == "The model stopped in the middle of its reply. Please try again.\n"
    assert db_rows(ollama_service, "select state from inbox") == [("failed",)]


async def test_same_message_twice_is_answered_once(ollama_service: Service,
                                                   fake_ollama: FakeOllama) -> None:
    chat, out, _ = console(ollama_service)
    event = chat.event("hello")
    first = await ollama_service.gateway.handle(event, chat.deliver)
    second = await ollama_service.gateway.handle(event, chat.deliver)
    assert (first.status, second.status) == (MessageStatus.ANSWERED, MessageStatus.DUPLICATE)
    assert len(fake_ollama.requests_to("/api/chat")) == 1
    assert out.getvalue() == "Hello there.\n"


async def test_group_message_without_mention_is_not_answered(ollama_service: Service,
                                                            fake_ollama: FakeOllama) -> None:
    delivered: list[str] = []

    async def deliver(_event: InboundEvent, reply: object) -> None:
        delivered.append("called")

    quiet = InboundEvent(platform="telegram", chat_id="-5", chat_kind=ChatKind.GROUP,
                         sender_id="9", sender_name="x", message_id="1", text="chatter",
                         group_id="-5")
    result = await ollama_service.gateway.handle(quiet, deliver)
    assert result.status is MessageStatus.IGNORED
    assert delivered == [] and fake_ollama.requests_to("/api/chat") == []


async def test_transcribed_voice_is_marked_untrusted(ollama_service: Service,
                                                     fake_ollama: FakeOllama) -> None:
    spoken = InboundEvent(platform="console", chat_id="owner", chat_kind=ChatKind.DM,
                          sender_id="owner", sender_name="owner", message_id="v1",
                          text="turn on the lights", transcribed=True)
    chat, _, _ = console(ollama_service)
    await ollama_service.gateway.handle(spoken, chat.deliver)
    content = sent_messages(fake_ollama)[-1]["content"]
    assert content.startswith("[voice note, transcribed automatically")
    assert content.endswith("turn on the lights")


async def test_failing_delivery_is_recorded_and_service_goes_on(ollama_service: Service,
                                                                fake_ollama: FakeOllama) -> None:
    async def broken(_event: InboundEvent, reply: object) -> None:
        raise ConnectionError("platform went away")

    chat, out, _ = console(ollama_service)
    result = await ollama_service.gateway.handle(chat.event("one"), broken)
    assert result.status is MessageStatus.FAILED
    assert db_rows(ollama_service, "select state from inbox") == [("failed",)]
    assert (await chat.ask("two")).status is MessageStatus.ANSWERED
    assert out.getvalue() == "Hello there.\n"


async def test_resume_answers_stored_but_unanswered_events_once(
        data_dir: Path, fake_ollama: FakeOllama) -> None:
    from bot.service import open_service
    from bot.store import inbox
    from tests.support.helpers import ollama_config

    config = ollama_config(data_dir, fake_ollama)
    async with open_service(config, voice=False) as service:
        chat, _, _ = console(service)
        await inbox.record(service.store, chat.event("left over from a crash"))
    answered: list[str] = []

    async def deliver(_event: InboundEvent, reply: object) -> None:
        async for part in reply:  # type: ignore[attr-defined]
            answered.append(part.text)

    async with open_service(config, voice=False) as service:
        pending = await service.gateway.pending("console")
        assert len(pending) == 1
        for left in pending:
            await service.gateway.answer(left.inbox_id, left.event, deliver)
        assert await service.gateway.pending("console") == []
    assert "".join(answered) == "Hello there."
    assert sent_messages(fake_ollama)[-1]["content"] == "left over from a crash"

