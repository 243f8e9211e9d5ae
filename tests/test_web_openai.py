"""The OpenAI-compatible endpoint, used through the official `openai` client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest

from bot.store.web import create_api_token
from tests.fakes.llm_backends import FakeOllama, ScriptedReply
from tests.support.cli import hearthbot
from tests.support.helpers import db_rows, sent_messages, system_prompt
from tests.support.web import WebRunning, serving, web_config


@pytest.fixture
async def running(data_dir: Path, fake_ollama: FakeOllama) -> AsyncIterator[WebRunning]:
    async with serving(web_config(data_dir, fake_ollama), fake_ollama) as running:
        yield running


async def _client(running: WebRunning, persona: str) -> openai.AsyncOpenAI:
    _, secret = await create_api_token(running.service.store, persona, "tests")
    return openai.AsyncOpenAI(base_url=f"{running.url}/v1", api_key=secret, max_retries=0)


async def test_a_completion_answers_as_the_tokens_persona_with_the_requests_history(
        running: WebRunning) -> None:
    running.fake.script(ScriptedReply(chunks=("Paris", " it", " is.")))
    api = await _client(running, "admin")
    reply = await api.chat.completions.create(model="whatever-the-app-says", messages=[
        {"role": "system", "content": "Answer in three words."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Which country again?"},
        {"role": "user", "content": [{"type": "text", "text": "France, please."}]},
    ])
    assert reply.choices[0].message.content == "Paris it is."
    assert reply.choices[0].finish_reason == "stop" and reply.model == "admin"
    assert system_prompt(running.fake).startswith("You are hearthbot, the owner's")
    sent = [(m["role"], m["content"]) for m in sent_messages(running.fake)[1:]]
    assert sent == [
        ("user", "[instructions from the app calling the API]\nAnswer in three words."),
        ("user", "Capital of France?"), ("assistant", "Which country again?"),
        ("user", "France, please.")]
    # The same records as a chat message: the inbox row answered, the turn and its history.
    assert db_rows(running.service, "select platform, sender_id, state from inbox") == [
        ("api", "token-1", "answered")]
    assert db_rows(running.service, "select persona, status from turns") == [
        ("admin", "answered")]
    await api.close()


async def test_a_streamed_completion_arrives_piece_by_piece(running: WebRunning) -> None:
    running.fake.script(ScriptedReply(chunks=("One", ", two", ", three.")))
    api = await _client(running, "guest")
    stream = await api.chat.completions.create(
        model="guest", stream=True, messages=[{"role": "user", "content": "Count."}])
    pieces: list[str] = []
    finishes: list[str | None] = []
    async for chunk in stream:
        pieces.append(chunk.choices[0].delta.content or "")
        finishes.append(chunk.choices[0].finish_reason)
    assert [p for p in pieces if p] == ["One", ", two", ", three."]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert system_prompt(running.fake).startswith("You are hearthbot, a friendly public")
    await api.close()


async def test_models_lists_the_tokens_persona(running: WebRunning) -> None:
    api = await _client(running, "guest")
    models = await api.models.list()
    assert [m.id for m in models.data] == ["guest"]
    await api.close()


async def test_a_model_failure_is_one_sentence_in_both_modes(running: WebRunning) -> None:
    running.fake.script(ScriptedReply(status=500), ScriptedReply(status=500))
    api = await _client(running, "admin")
    with pytest.raises(openai.APIStatusError) as failed:
        await api.chat.completions.create(model="admin",
                                          messages=[{"role": "user", "content": "hi"}])
    assert failed.value.status_code == 502
    assert "Traceback" not in str(failed.value.body)
    stream = await api.chat.completions.create(model="admin", stream=True,
                                               messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.APIError, match="model"):
        async for _ in stream:
            pass
    await api.close()


async def test_bad_requests_and_bad_tokens_are_refused(running: WebRunning) -> None:
    api = await _client(running, "admin")
    with pytest.raises(openai.BadRequestError):
        await api.chat.completions.create(model="admin",
                                          messages=[{"role": "assistant", "content": "hi"}])
    # An image is refused, not dropped: no answer may pretend to have seen it.
    with pytest.raises(openai.BadRequestError, match="images are not supported"):
        await api.chat.completions.create(model="admin", messages=[{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}])
    wrong = openai.AsyncOpenAI(base_url=f"{running.url}/v1", api_key="hb-not-a-token",
                               max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await wrong.models.list()
    assert running.fake.requests_to("/api/chat") == []
    await api.close()
    await wrong.close()


async def test_tokens_are_created_listed_and_revoked_from_the_command_line(
        data_dir: Path, fake_ollama: FakeOllama, cli_env: dict[str, str]) -> None:
    code, out, _ = await hearthbot("token", "create", "--persona", "nobody", env=cli_env)
    assert code == 2
    code, out, _ = await hearthbot("token", "create", "--persona", "guest",
                                    "--name", "notes app", env=cli_env)
    assert code == 0
    secret = out.strip().splitlines()[-1]
    assert secret.startswith("hb-") and len(secret) > 40
    config = web_config(data_dir, fake_ollama)
    async with serving(config, fake_ollama) as running:
        api = openai.AsyncOpenAI(base_url=f"{running.url}/v1", api_key=secret, max_retries=0)
        assert [m.id for m in (await api.models.list()).data] == ["guest"]
        code, listed, _ = await hearthbot("token", "list", env=cli_env)
        assert code == 0 and secret not in listed
        assert "guest" in listed and "notes app" in listed and "active" in listed
        code, _, _ = await hearthbot("token", "revoke", "1", env=cli_env)
        assert code == 0
        with pytest.raises(openai.AuthenticationError):
            await api.models.list()
        await api.close()
        assert db_rows(running.service, "select count(*) from bindings where platform = 'api'"
                       ) == [(0,)]
    code, listed, _ = await hearthbot("token", "list", env=cli_env)
    assert "revoked" in listed
    code, _, err = await hearthbot("token", "revoke", "7", env=cli_env)
    assert code == 1 and "no token 7" in err
