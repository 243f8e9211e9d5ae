"""The web chat and the dashboard through their HTTP routes, as the pages use them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.events import ChatKind, InboundEvent
from bot.pairing import redeem
from bot.store.audit import ToolCallRecord, record_tool_call
from tests.fakes.llm_backends import FakeOllama, ScriptedReply
from tests.support.helpers import db_rows, sent_messages, system_prompt, user_text
from tests.support.voice import ANSWER, QUESTION, heard
from tests.support.web import WebRunning, client, events, serving, sign_in, web_config


@pytest.fixture
async def running(data_dir: Path, fake_ollama: FakeOllama) -> AsyncIterator[WebRunning]:
    async with serving(web_config(data_dir, fake_ollama), fake_ollama) as running:
        yield running


async def _say(browser: aiohttp.ClientSession, running: WebRunning, csrf: str,
               text: str) -> list[dict[str, Any]]:
    async with browser.post(f"{running.url}/api/chat/messages", json={"text": text},
                            headers={"X-CSRF-Token": csrf}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        return await events(response)


async def test_the_owner_chats_with_the_admin_persona_and_starts_over(
        running: WebRunning) -> None:
    running.fake.script(ScriptedReply(chunks=("Hello", " owner", ".")),
                        ScriptedReply(chunks=("Fine", ".")), ScriptedReply(chunks=("New", ".")))
    async with client() as browser:
        csrf = await sign_in(running, browser)
        assert await _say(browser, running, csrf, "hi") == [
            {"type": "text", "text": "Hello"}, {"type": "text", "text": " owner"},
            {"type": "text", "text": "."}, {"type": "done", "status": "answered"}]
        assert system_prompt(running.fake).startswith("You are hearthbot, the owner's")
        await _say(browser, running, csrf, "and you?")
        async with browser.get(f"{running.url}/api/chat/history") as response:
            shown = await response.json()
        assert shown["persona"] == "admin"
        assert [(m["role"], m["content"]) for m in shown["messages"]] == [
            ("user", "hi"), ("assistant", "Hello owner."), ("user", "and you?"),
            ("assistant", "Fine.")]
        said = await _say(browser, running, csrf, "/new")
        assert said[0] == {"type": "text", "text": "Started a fresh conversation."}
        async with browser.get(f"{running.url}/api/chat/history") as response:
            assert (await response.json())["messages"] == []
        await _say(browser, running, csrf, "again")
        assert len(running.fake.requests_to("/api/chat")) == 3
        assert [m["role"] for m in sent_messages(running.fake)] == ["system", "user"]
    assert user_text(running.fake) == "again"
    assert db_rows(running.service, "select platform, chat_id, state from inbox") == [
        ("web", "owner", "answered")] * 4


async def test_a_model_failure_arrives_as_one_sentence(running: WebRunning) -> None:
    running.fake.script(ScriptedReply(status=500))
    async with client() as browser:
        csrf = await sign_in(running, browser)
        said = await _say(browser, running, csrf, "hi")
    assert [e["type"] for e in said] == ["failed", "done"]
    assert "model" in said[0]["text"] and said[-1]["status"] == "failed"


async def test_the_dashboard_shows_status_and_edits_bindings_with_the_clis_checks(
        running: WebRunning) -> None:
    running.fake.script(ScriptedReply(chunks=("A", "B", "C")))
    await record_tool_call(running.service.store, ToolCallRecord(
        persona="guest", platform="telegram", chat_id="9", tool="shell_exec",
        arguments='{"command": "ls"}', outcome="refused", error="not allowed"))
    async with client() as browser:
        csrf = await sign_in(running, browser)
        await _say(browser, running, csrf, "hello")
        async with browser.get(f"{running.url}/api/status") as response:
            status = await response.json()
        assert status["model"]["active"] == f"ollama/{running.fake.models[0]}"
        assert status["inbox_depth"] == 0 and status["platforms"] == {"web": True}
        [turn] = status["turns"]
        assert turn["persona"] == "admin" and turn["tokens"] is not None
        assert turn["first_token_seconds"] <= turn["total_seconds"]
        assert status["memory"]["process_mb"] > 0

        changes = {"X-CSRF-Token": csrf}
        refused = [
            ({"platform": "telegram", "persona": "admin", "chat_kind": "group",
              "group": "-100"}, "only ever granted in a dm"),
            ({"platform": "telegram", "persona": "nobody"}, "unknown persona"),
            ({"platform": "", "persona": "guest"}, "needs a platform"),
            ({"platform": "telegram", "persona": "guest", "chat_kind": "room"}, "chat kind"),
        ]
        for spec, reason in refused:
            async with browser.post(f"{running.url}/api/bindings", json=spec,
                                    headers=changes) as response:
                assert response.status == 400
                assert reason in (await response.json())["error"].lower()
        async with browser.post(f"{running.url}/api/bindings", headers=changes, json={
                "platform": "telegram", "persona": "admin", "chat_kind": "dm",
                "peer": "777", "note": "my phone"}) as response:
            assert response.status == 201
            added = (await response.json())["binding"]
        assert added["source"] == "web" and added["peer"] == "777"
        async with browser.get(f"{running.url}/api/bindings") as response:
            listed = await response.json()
        config_row = next(b for b in listed["bindings"] if b["platform"] == "web")
        async with browser.delete(f"{running.url}/api/bindings/{config_row['id']}",
                                  headers=changes) as response:
            assert response.status == 409
            assert "config file" in (await response.json())["error"]
        async with browser.delete(f"{running.url}/api/bindings/{added['id']}",
                                  headers=changes) as response:
            assert response.status == 200
        async with browser.delete(f"{running.url}/api/bindings/{added['id']}",
                                  headers=changes) as response:
            assert response.status == 404
        assert ("777",) not in db_rows(running.service, "select peer_id from bindings")

        async with browser.post(f"{running.url}/api/pairing", headers=changes) as response:
            code = (await response.json())["code"]
        dm = InboundEvent(platform="telegram", chat_id="55", chat_kind=ChatKind.DM,
                          sender_id="55", sender_name="me", message_id="1")
        assert (await redeem(running.service.store, dm, code, "admin")).paired

        async with browser.get(f"{running.url}/api/audit") as response:
            [call] = (await response.json())["calls"]
        assert (call["tool"], call["outcome"], call["persona"]) == (
            "shell_exec", "refused", "guest")


async def test_a_recording_is_heard_answered_and_spoken_back(
        data_dir: Path, fake_ollama: FakeOllama) -> None:
    fake_ollama.script(ScriptedReply(chunks=ANSWER))
    async with serving(web_config(data_dir, fake_ollama), fake_ollama,
                       voice=True) as running:
        speech = running.service.gateway.speech
        assert speech is not None
        speaker = speech.speaker()
        assert speaker is not None
        await speaker.feed(QUESTION)
        clip = await speaker.finish()
        assert clip is not None
        async with client() as browser:
            csrf = await sign_in(running, browser)
            async with browser.get(f"{running.url}/api/chat/history") as response:
                assert (await response.json())["voice"] is True
            async with browser.post(f"{running.url}/api/chat/voice", data=clip.ogg_opus,
                                    headers={"X-CSRF-Token": csrf,
                                             "Content-Type": "audio/ogg",
                                             "X-Duration": f"{clip.duration:.1f}"}) as response:
                said = await events(response)
            kinds = [e["type"] for e in said]
            assert kinds == ["text"] * len(ANSWER) + ["voice", "heard", "done"]
            assert "".join(e["text"] for e in said if e["type"] == "text") == "".join(ANSWER)
            [heard_event] = [e for e in said if e["type"] == "heard"]
            assert heard(heard_event["text"], "weather", "paris", "today") >= 2
            [voice] = [e for e in said if e["type"] == "voice"]
            async with browser.get(running.url + voice["url"]) as response:
                assert response.status == 200
                assert response.content_type == "audio/ogg"
                assert (await response.read()).startswith(b"OggS")
            assert voice["duration"] > 1.0
            async with browser.post(f"{running.url}/api/chat/voice", data=b"",
                                    headers={"X-CSRF-Token": csrf,
                                             "Content-Type": "audio/ogg"}) as response:
                assert response.status == 400
            async with browser.post(f"{running.url}/api/chat/voice", data=b"<html>",
                                    headers={"X-CSRF-Token": csrf,
                                             "Content-Type": "text/html"}) as response:
                assert response.status == 415
    assert heard(user_text(fake_ollama), "weather", "paris") >= 1
