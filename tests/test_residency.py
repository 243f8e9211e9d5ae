"""Residency: one model loaded and warm, kept warm, switched at run time, checked for fit.

Against the fake Ollama (it records every request and which models it holds) and, for the
switch in the middle of traffic, through the real Telegram client and the fake Bot API.
"""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from adapters.console import GUEST, OWNER, ConsoleChat
from bot.config import BUNDLED_MODEL_ID, Config
from bot.errors import ModelDoesNotFit, ProviderUnavailable
from bot.model_host import ModelHost
from bot.service import Service, open_service, serve_platforms
from tests.fakes.llm_backends import FakeOllama, ScriptedReply
from tests.fakes.telegram import FakeTelegram
from tests.support.helpers import make_config, until
from tests.support.telegram import OWNER as TG_OWNER
from tests.support.telegram import STRANGER, start, texts

SMALL, BIG = "llama3.2:3b", "qwen3:8b"
GB = 1_000_000_000


def two_models(data_dir: Path, fake: FakeOllama, *, residency: dict[str, Any] | None = None,
               instances: dict[str, Any] | None = None, **sections: Any) -> Config:
    """Two Ollama models with aliases: "small" (active) and "big"."""
    provider = {"type": "ollama", "base_url": fake.base_url, "first_token_timeout": 5,
                "read_timeout": 5,
                "models": [{"id": SMALL, "context_window": 4096},
                           {"id": BIG, "name": "Qwen3 8B", "context_window": 4096}]}
    agents: dict[str, Any] = {"default": {
        "active_model": f"ollama/{SMALL}",
        "model_registry": {f"ollama/{SMALL}": {"alias": "small"},
                           f"ollama/{BIG}": {"alias": "big"}}}}
    if instances is not None:
        agents["instances"] = instances
    gateway = {"providers": {"ollama": provider},
               "residency": {"wait_tries": 3, "wait_seconds": 0.01, **(residency or {})}}
    return make_config(data_dir, gateway=gateway, agents=agents, **sections)


@pytest.fixture
async def fake_two() -> AsyncIterator[FakeOllama]:
    async with FakeOllama((SMALL, BIG), sizes={SMALL: 2 * GB, BIG: 5 * GB}) as fake:
        yield fake


def generate_bodies(fake: FakeOllama) -> list[dict[str, object]]:
    return [r.body for r in fake.requests_to("/api/generate") if r.body is not None]


def console(service: Service, sender: str = OWNER) -> tuple[ConsoleChat, io.StringIO]:
    out = io.StringIO()
    return ConsoleChat(service.gateway, sender=sender, out=out, err=out), out


# --- start ------------------------------------------------------------------------------------

async def test_start_warms_the_active_model_with_keep_alive(data_dir: Path,
                                                            fake_two: FakeOllama) -> None:
    host = ModelHost(two_models(data_dir, fake_two))
    try:
        seconds = await host.start()
    finally:
        await host.close()
    assert generate_bodies(fake_two) == [
        {"model": SMALL, "prompt": "", "stream": False, "keep_alive": "24h"}]
    assert fake_two.loaded == [SMALL]
    assert host.state.resident == f"ollama/{SMALL}" and host.state.state == "resident"
    assert host.state.cold_start_seconds == seconds and seconds >= 0


async def test_start_waits_for_a_backend_that_comes_up_late(
        data_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bot.model_host")
    late = FakeOllama((SMALL, BIG))
    with socket.socket() as probe:  # a free port, on which nothing listens yet
        probe.bind(("127.0.0.1", 0))
        late.port = probe.getsockname()[1]
    config = two_models(data_dir, late, residency={"wait_tries": 1000, "wait_seconds": 0.02})
    host = ModelHost(config)
    starting = asyncio.create_task(host.start())
    try:
        await until(lambda: "waiting for" in caplog.text, "a failed first try")
        await late.start(late.port)
        await asyncio.wait_for(starting, 30)
    finally:
        starting.cancel()
        await host.close()
        await late.stop()
    assert late.loaded == [SMALL]
    assert generate_bodies(late)[0]["keep_alive"] == "24h"


async def test_start_gives_up_after_bounded_tries_with_one_sentence(data_dir: Path) -> None:
    gone = FakeOllama((SMALL,))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        gone.port = probe.getsockname()[1]
    host = ModelHost(two_models(data_dir, gone))
    with pytest.raises(ProviderUnavailable) as raised:
        await host.start()
    await host.close()
    message = str(raised.value)
    assert message.startswith(f"the model server for ollama/{SMALL} at {gone.base_url} did "
                              "not answer after 3 tries")
    assert "\n" not in message
    assert host.state.resident is None


# --- keeping warm -----------------------------------------------------------------------------

async def test_eviction_seen_in_ps_is_warmed_again_by_the_service(
        data_dir: Path, fake_two: FakeOllama) -> None:
    config = two_models(data_dir, fake_two, residency={"check_seconds": 0.05})
    stopping = asyncio.Event()
    async with open_service(config, voice=False) as service:
        await service.models.start()
        serving = asyncio.create_task(serve_platforms(service, [], stopping))
        try:
            fake_two.evict(SMALL)
            await until(lambda: fake_two.loaded == [SMALL], "the model loaded again")
            await until(lambda: service.models.state.rewarms == 1, "the re-warm counted")
        finally:
            stopping.set()
            await serving
    warms = [b for b in generate_bodies(fake_two) if b["keep_alive"] == "24h"]
    assert len(warms) == 2, "one warm-up at start, one after the eviction"
    assert fake_two.requests_to("/api/ps"), "residency is read from /api/ps"


async def test_a_loaded_model_is_left_alone(data_dir: Path, fake_two: FakeOllama) -> None:
    host = ModelHost(two_models(data_dir, fake_two))
    try:
        await host.start()
        await host.keep_warm()
        await host.keep_warm()
    finally:
        await host.close()
    assert len(generate_bodies(fake_two)) == 1
    assert len(fake_two.requests_to("/api/ps")) == 2


async def test_a_model_not_loaded_at_start_is_loaded_by_the_check(
        data_dir: Path, fake_two: FakeOllama) -> None:
    host = ModelHost(two_models(data_dir, fake_two))
    try:
        await host.keep_warm()
    finally:
        await host.close()
    assert fake_two.loaded == [SMALL] and host.state.resident == f"ollama/{SMALL}"


# --- switching --------------------------------------------------------------------------------

async def test_switch_unloads_the_old_model_before_the_new_one_loads(
        data_dir: Path, fake_two: FakeOllama) -> None:
    async with open_service(two_models(data_dir, fake_two), voice=False) as service:
        await service.models.start()
        chat, out = console(service)
        await chat.ask("/model big")
        await chat.ask("hello")
    bodies = generate_bodies(fake_two)
    assert bodies[1:] == [
        {"model": SMALL, "prompt": "", "stream": False, "keep_alive": 0},
        {"model": BIG, "prompt": "", "stream": False, "keep_alive": "24h"}]
    assert fake_two.peak_loaded == 1
    assert fake_two.chat_bodies()[-1]["model"] == BIG
    assert "Switched to big (`ollama/qwen3:8b`)" in out.getvalue()


async def test_a_message_sent_during_a_switch_is_answered_by_the_new_model(
        data_dir: Path, fake_tg: FakeTelegram, fake_two: FakeOllama) -> None:
    channels = {"telegram": {"token": fake_tg.token, "api_base_url": fake_tg.base_url,
                             "file_base_url": fake_tg.base_file_url, "poll_timeout": 2,
                             "draft_interval": 0.05}}
    config = two_models(data_dir, fake_two, channels=channels)
    fake_two.load_gates[BIG] = asyncio.Event()
    async for running in start(config, fake_tg, fake_two):
        await running.service.models.start()
        fake_tg.push_text(chat_id=TG_OWNER, from_id=TG_OWNER, text="/model big")
        await until(lambda: any(b["model"] == BIG for b in generate_bodies(fake_two)),
                    "the new model loading")
        # Mid-switch: the old model is unloaded, the new one is still loading.
        fake_tg.push_text(chat_id=STRANGER, from_id=STRANGER, text="who answers?")
        await until(lambda: any(str(c.params.get("chat_id")) == str(STRANGER)
                                for c in fake_tg.calls_to("sendChatAction")),
                    "the guest's turn started (typing)")
        assert fake_two.chat_bodies() == [], "no turn may reach a model while it loads"
        released = time.monotonic()
        fake_two.load_gates[BIG].set()
        await until(lambda: texts(fake_tg, STRANGER), "the guest's reply")
        await until(lambda: texts(fake_tg, TG_OWNER), "the owner's confirmation")
    assert texts(fake_tg, STRANGER) == ["Hello there."]
    assert [b["model"] for b in fake_two.chat_bodies()] == [BIG]
    assert fake_two.requests_to("/api/chat")[0].at > released, "the turn waited for the load"
    generates = fake_two.requests_to("/api/generate")
    unload = next(i for i, r in enumerate(generates) if r.body and r.body["keep_alive"] == 0)
    load = next(i for i, r in enumerate(generates) if r.body and r.body["model"] == BIG)
    assert generates[unload].body == {"model": SMALL, "prompt": "", "stream": False,
                                               "keep_alive": 0}
    assert unload < load
    assert fake_two.peak_loaded == 1
    assert texts(fake_tg, TG_OWNER)[0].startswith("Switched to big")


async def test_a_reply_under_way_finishes_on_the_old_model_before_it_is_unloaded(
        data_dir: Path, fake_two: FakeOllama) -> None:
    hold = asyncio.Event()
    fake_two.script(ScriptedReply(chunks=("One", " two", " three."), pause_after_first=hold))
    async with open_service(two_models(data_dir, fake_two), voice=False) as service:
        await service.models.start()
        guest, guest_out = console(service, GUEST)
        owner, owner_out = console(service, OWNER)
        replying = asyncio.create_task(guest.ask("count"))
        await until(lambda: guest_out.getvalue() == "One", "the reply under way")
        switching = asyncio.create_task(owner.ask("/model big"))
        await until(lambda: service.models.state.waiting_for_replies == 1
                    or len(generate_bodies(fake_two)) > 1, "the switch waiting for the reply")
        assert [b["keep_alive"] for b in generate_bodies(fake_two)] == ["24h"], \
            "nothing is unloaded while a reply streams from it"
        hold.set()
        result = await replying
        await switching
    assert result.answered and guest_out.getvalue() == "One two three.\n"
    assert fake_two.chat_bodies()[0]["model"] == SMALL
    assert [b["keep_alive"] for b in generate_bodies(fake_two)] == ["24h", 0, "24h"]
    assert owner_out.getvalue().startswith("Switched to big")


async def test_model_alone_lists_the_registry_with_the_active_one_marked(
        data_dir: Path, fake_two: FakeOllama) -> None:
    async with open_service(two_models(data_dir, fake_two), voice=False) as service:
        await service.models.start()
        chat, out = console(service)
        await chat.ask("/model")
    assert out.getvalue().splitlines() == [
        "Models:",
        f"- small: {SMALL}, `ollama/{SMALL}` (active, loaded)",
        f"- big: Qwen3 8B, `ollama/{BIG}`",
        "Switch with /model NAME.",
    ]


async def test_only_the_owner_may_switch(data_dir: Path, fake_two: FakeOllama) -> None:
    async with open_service(two_models(data_dir, fake_two), voice=False) as service:
        await service.models.start()
        chat, out = console(service, GUEST)
        await chat.ask("/model big")
        assert service.models.state.active == f"ollama/{SMALL}"
    assert out.getvalue() == "/model is only available to the owner.\n"
    assert not any(b["model"] == BIG for b in generate_bodies(fake_two))


async def test_switching_to_the_active_model_says_so_and_loads_nothing(
        data_dir: Path, fake_two: FakeOllama) -> None:
    async with open_service(two_models(data_dir, fake_two), voice=False) as service:
        await service.models.start()
        chat, out = console(service)
        await chat.ask("/model small")
    assert out.getvalue() == f"small (`ollama/{SMALL}`) is already the active model.\n"
    assert len(generate_bodies(fake_two)) == 1


async def test_an_unknown_name_changes_nothing(data_dir: Path, fake_two: FakeOllama) -> None:
    async with open_service(two_models(data_dir, fake_two), voice=False) as service:
        await service.models.start()
        chat, out = console(service)
        await chat.ask("/model huge")
    assert out.getvalue() == "There is no model called 'huge'. Known: small, big.\n"
    assert len(generate_bodies(fake_two)) == 1


async def test_a_model_the_backend_cannot_load_leaves_the_previous_one_active(
        data_dir: Path) -> None:
    async with FakeOllama((SMALL,)) as fake:  # "big" is configured but was never pulled
        async with open_service(two_models(data_dir, fake), voice=False) as service:
            await service.models.start()
            chat, out = console(service)
            await chat.ask("/model big")
            assert service.models.state.active == f"ollama/{SMALL}"
            assert service.models.state.resident == f"ollama/{SMALL}"
            await chat.ask("still there?")
        assert fake.loaded == [SMALL]
        assert fake.chat_bodies()[-1]["model"] == SMALL
    first = out.getvalue().splitlines()[0]
    assert first.startswith("Could not load big: The configured model isn't available.")
    assert first.endswith(f"small (`ollama/{SMALL}`) stays active.")


async def test_a_persona_naming_its_own_model_waits_for_a_switch_and_says_so(
        data_dir: Path, fake_two: FakeOllama, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bot.model_host")
    instances = {"admin": {"role": "admin"}, "guest": {"role": "guest", "model": "big"}}
    config = two_models(data_dir, fake_two, instances=instances)
    async with open_service(config, voice=False) as service:
        await service.models.start()
        guest, _ = console(service, GUEST)
        owner, _ = console(service, OWNER)
        await asyncio.gather(guest.ask("hi from a guest"), owner.ask("hi from the owner"))
        await guest.ask("and again")
    models = [(b["messages"][-1]["content"], b["model"])
              for b in fake_two.chat_bodies()]
    assert sorted(models[:2]) == [("hi from a guest", BIG), ("hi from the owner", SMALL)]
    assert models[2] == ("and again", BIG)
    assert fake_two.peak_loaded == 1, "never two models loaded at once"
    assert (f"a turn needs ollama/{BIG} (named by its persona) while ollama/{SMALL} is "
            "loaded; it waits for the switch") in caplog.text


# --- memory -----------------------------------------------------------------------------------

async def test_a_model_that_does_not_fit_is_refused_with_both_figures(
        data_dir: Path, fake_two: FakeOllama) -> None:
    # BIG: 5 GB x 1.3 + 4096 x 0.0002 = 7.32 GB. Free: 3.5 GB (SMALL, 3.42 GB, fits), plus
    # the 3.42 GB that unloading SMALL would free = 6.92 GB.
    config = two_models(data_dir, fake_two)
    async with open_service(config, voice=False) as service:
        service.models._available_memory = lambda: 3_500_000_000
        await service.models.start()
        chat, out = console(service)
        await chat.ask("/model big")
        assert service.models.state.active == f"ollama/{SMALL}"
    reply = out.getvalue().strip()
    assert reply == (
        f"ollama/{BIG} needs about 7.32 GB of memory at its peak (5.00 GB of weights x 1.3 + "
        "4096 tokens of context x 0.0002 GB), but only 6.92 GB is available, counting about "
        f"3.42 GB that unloading ollama/{SMALL} frees; it was not loaded; small "
        f"(`ollama/{SMALL}`) stays active.")
    assert [b["keep_alive"] for b in generate_bodies(fake_two)] == ["24h"], \
        "nothing was unloaded or loaded"
    assert fake_two.loaded == [SMALL]


async def test_the_bundled_model_is_refused_before_its_weights_are_read(
        data_dir: Path) -> None:
    host = ModelHost(make_config(data_dir), available_memory=lambda: 100_000_000)
    with pytest.raises(ModelDoesNotFit) as raised:
        await host.start()
    await host.close()
    assert raised.value.available_gb == pytest.approx(0.1)
    assert raised.value.needed_gb == pytest.approx(98_362_432 / GB * 1.3 + 2048 * 0.0002)
    assert str(raised.value).startswith(
        f"local/{BUNDLED_MODEL_ID} needs about 0.54 GB of memory at its peak (0.10 GB of "
        "weights x 1.3 + 2048 tokens of context x 0.0002 GB), but only 0.10 GB is available")
    assert host.state.resident is None


async def test_a_model_that_fits_is_loaded(data_dir: Path, fake_two: FakeOllama) -> None:
    host = ModelHost(two_models(data_dir, fake_two), available_memory=lambda: 8 * GB)
    try:
        await host.start()
        await host.switch("big")
    finally:
        await host.close()
    assert host.state.resident == f"ollama/{BIG}"
    assert host.state.memory_needed_gb == pytest.approx(7.3192)


async def test_switching_away_from_the_embedded_model_frees_its_weights(
        data_dir: Path, fake_two: FakeOllama) -> None:
    from bot.providers.embedded import EmbeddedProvider

    local = f"local/{BUNDLED_MODEL_ID}"
    config = make_config(data_dir, gateway={"providers": {
        "local": {"type": "embedded", "models": [{"id": BUNDLED_MODEL_ID, "max_tokens": 8}]},
        "ollama": {"type": "ollama", "base_url": fake_two.base_url,
                   "models": [{"id": SMALL}]}}},
        agents={"default": {"active_model": local}})
    host = ModelHost(config)
    try:
        await host.start()
        embedded, _ = host.backend(local)
        assert isinstance(embedded, EmbeddedProvider)
        assert await embedded.loaded_models() == [BUNDLED_MODEL_ID]
        await host.switch(f"ollama/{SMALL}")
        assert await embedded.loaded_models() == [], "the weights were released"
        assert fake_two.loaded == [SMALL]
        await host.switch(local)
        assert await embedded.loaded_models() == [BUNDLED_MODEL_ID]
        assert fake_two.loaded == [], "Ollama was told to unload"
    finally:
        await host.close()
