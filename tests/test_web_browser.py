"""The web pages in a real browser: headless Chromium against the service on 127.0.0.1.

They sign in with a one-time link, chat and watch the reply stream in, record a voice note,
edit the binding table, sign out; a browser without the cookie gets nowhere. Screenshots and
the measured figures land in tests.support.browser.SCREENSHOTS (build/screenshots).
"""

from __future__ import annotations

import json
import statistics
import wave
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from bot.store.bindings import list_bindings
from tests.fakes.llm_backends import FakeOllama, ScriptedReply
from tests.support.browser import SCREENSHOTS, chromium, screenshot, wait_for
from tests.support.voice import ANSWER, QUESTION, heard
from tests.support.web import serving_in_a_thread, web_config

STREAMED = ("Hello", " from", " your", " own", " machine", ".")

WATCH_REPLIES = """
window.hb = {states: [], firsts: [], sent: null};
document.addEventListener("submit", () => { window.hb.sent = performance.now(); }, true);
new MutationObserver(() => {
  const li = [...document.querySelectorAll("#log li.assistant")].pop();
  if (!li) return;
  window.hb.states.push(li.textContent);
  if (li.textContent && window.hb.sent !== null) {
    window.hb.firsts.push(performance.now() - window.hb.sent);
    window.hb.sent = null;
  }
}).observe(document.getElementById("log"), {childList: true, subtree: true,
                                            characterData: true});
"""
FINISHED_REPLY = """
const li = [...document.querySelectorAll("#log li.assistant")].pop();
const idle = !document.getElementById("send").disabled;
return li && idle && !li.classList.contains("pending") ? li.textContent : null;
"""
STATUS_OF = """
const done = arguments[arguments.length - 1];
Promise.all(arguments[0].map(([method, path]) =>
  fetch(path, {method, redirect: "manual"}).then((r) => [method, path, r.status])))
  .then(done);
"""


def _send(driver: WebDriver, text: str) -> str:
    box = driver.find_element(By.ID, "text")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)
    wait_for(driver, lambda d: d.find_element(By.ID, "send").get_property("disabled")
             or d.execute_script(FINISHED_REPLY), "the message to go out")
    reply: str = wait_for(driver, lambda d: d.execute_script(FINISHED_REPLY), "the reply")
    return reply


def _binding_row(driver: WebDriver, peer: str) -> Any:
    for row in driver.find_elements(By.CSS_SELECTOR, "#bindings tbody tr"):
        if peer in row.text:
            return row
    return None


def test_the_owner_signs_in_chats_edits_bindings_and_signs_out(
        data_dir: Path, tmp_path: Path) -> None:
    with serving_in_a_thread(lambda fake: web_config(data_dir, fake)) as (thread, running):
        store = running.service.store
        running.fake.script(ScriptedReply(chunks=STREAMED, token_delay=0.1))
        link = thread.run(running.link())
        with chromium(tmp_path / "owner") as driver:
            driver.get(link)
            wait_for(driver, lambda d: "admin persona" in d.find_element(By.ID, "who").text,
                     "the chat page")
            assert driver.current_url == f"{running.url}/chat"  # the link left the address bar
            driver.execute_script(WATCH_REPLIES)
            assert _send(driver, "Say hello") == "".join(STREAMED)
            states: list[str] = driver.execute_script("return window.hb.states")
            # The page showed the reply growing, not only finished.
            partial = [s for s in states if s and s != "".join(STREAMED)]
            assert partial and all("".join(STREAMED).startswith(s) for s in partial)
            screenshot(driver, "chat.png")

            driver.refresh()  # the history of the current conversation comes back
            wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#log li")) == 2,
                     "the history")
            assert _send(driver, "/new") == "Started a fresh conversation."
            assert len(driver.find_elements(By.CSS_SELECTOR, "#log li")) == 1

            driver.get(f"{running.url}/dashboard")
            wait_for(driver, lambda d: _binding_row(d, "owner") is not None, "the bindings")
            wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#latency circle"),
                     "the latency chart")
            form = driver.find_element(By.ID, "add-binding")
            form.find_element(By.NAME, "platform").send_keys("telegram")
            Select(form.find_element(By.NAME, "chat_kind")).select_by_value("dm")
            form.find_element(By.NAME, "peer").send_keys("4242")
            Select(form.find_element(By.NAME, "persona")).select_by_value("guest")
            form.find_element(By.NAME, "note").send_keys("a friend")
            form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
            wait_for(driver, lambda d: _binding_row(d, "4242") is not None, "the new binding")
            added = [b for b in thread.run(list_bindings(store)) if b.peer_id == "4242"]
            assert [(b.platform, b.chat_kind, b.persona, b.note, b.source) for b in added] == [
                ("telegram", "dm", "guest", "a friend", "web")]
            driver.find_element(By.ID, "pair").click()
            wait_for(driver, lambda d: "valid" in d.find_element(By.ID, "code").text,
                     "a pairing code")
            driver.set_window_size(1200, 1600)
            driver.execute_script("window.scrollTo(0, 0)")
            screenshot(driver, "dashboard.png")

            _binding_row(driver, "4242").find_element(By.TAG_NAME, "button").click()
            wait_for(driver, lambda d: _binding_row(d, "4242") is None, "the binding to go")
            assert not [b for b in thread.run(list_bindings(store)) if b.peer_id == "4242"]

            driver.find_element(By.ID, "logout").click()
            wait_for(driver, lambda d: "Signed out" in d.find_element(By.TAG_NAME, "body").text,
                     "signing out")
            driver.get(f"{running.url}/chat")
            assert "Sign in with the one-time link" in driver.find_element(
                By.TAG_NAME, "body").text

        with chromium(tmp_path / "stranger") as stranger:
            stranger.get(link)  # the link was spent by the owner
            assert "not valid" in stranger.find_element(By.TAG_NAME, "body").text
            for path in ("/", "/chat", "/dashboard"):
                stranger.get(running.url + path)
                assert "Sign in with the one-time link" in stranger.find_element(
                    By.TAG_NAME, "body").text
            assert running.server.app is not None
            routes = sorted({(r.method, r.resource.canonical.replace("{id}", "1")
                              .replace("{clip}", "x"))
                             for r in running.server.app.router.routes()
                             if r.method != "HEAD" and r.resource is not None})
            statuses = stranger.execute_async_script(STATUS_OF, routes)
            assert len(statuses) == len(routes) > 10
            assert {status for _, _, status in statuses} == {401}, statuses
        assert len(running.fake.requests_to("/api/chat")) == 1


def test_time_to_first_token_and_page_weight_are_measured(
        data_dir: Path, tmp_path: Path) -> None:
    """With an instant fake model: from the browser's send to the first token on the page."""
    turns = 20
    with (serving_in_a_thread(lambda fake: web_config(data_dir, fake)) as (thread, running),
          chromium(tmp_path / "owner") as driver):
        driver.get(thread.run(running.link()))
        wait_for(driver, lambda d: "persona" in d.find_element(By.ID, "who").text,
                 "the chat page")
        weight = driver.execute_script("""
            const entries = [performance.getEntriesByType("navigation")[0],
                             ...performance.getEntriesByType("resource")];
            return entries.map((e) => [e.name, e.transferSize, e.decodedBodySize]);""")
        driver.execute_script(WATCH_REPLIES)
        replies = [_send(driver, f"question {n}") for n in range(turns)]
        firsts: list[float] = driver.execute_script("return window.hb.firsts")
    assert replies == ["Hello there."] * turns
    assert len(firsts) == turns
    figures = {
        "turns": turns,
        "first_token_ms": {"median": statistics.median(firsts), "min": min(firsts),
                           "max": max(firsts),
                           "p90": sorted(firsts)[int(0.9 * (turns - 1))]},
        "page": {name.rsplit("/", 1)[-1] or "chat": {"transfer": t, "body": b}
                 for name, t, b in weight},
        "page_body_bytes": sum(b for _, _, b in weight),
        "page_transfer_bytes": sum(t for _, t, _ in weight),
    }
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    (SCREENSHOTS / "figures.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))


def _speech_wav(running: Any, thread: Any) -> bytes:
    """The question, spoken by the bundled voice, as the 16-bit WAV Chromium's fake
    microphone plays."""
    from bot.voice.audio import decode_to_pcm16k, to_wav

    async def speak() -> bytes:
        speaker = running.service.gateway.speech.speaker()
        await speaker.feed(QUESTION)
        clip = await speaker.finish()
        return bytes(clip.ogg_opus)

    pcm = decode_to_pcm16k(thread.run(speak()))
    silence = np.zeros(16_000, dtype=np.float32)
    samples = np.concatenate([silence, pcm, silence])
    return to_wav((np.clip(samples, -1, 1) * 32767).astype(np.int16).tobytes(), 16_000)


def test_a_recorded_voice_note_is_heard_and_the_reply_played_back(
        data_dir: Path, tmp_path: Path) -> None:
    with serving_in_a_thread(lambda fake: web_config(data_dir, fake),
                             voice=True) as (thread, running):
        fake: FakeOllama = running.fake
        fake.script(ScriptedReply(chunks=ANSWER))
        microphone = tmp_path / "question.wav"
        microphone.write_bytes(_speech_wav(running, thread))
        with wave.open(BytesIO(microphone.read_bytes())) as recording:
            seconds = recording.getnframes() / recording.getframerate()
        with chromium(tmp_path / "owner", extra=(
                "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={microphone}%noloop",
                "--autoplay-policy=no-user-gesture-required")) as driver:
            driver.get(thread.run(running.link()))
            record = wait_for(driver, lambda d: d.find_element(By.ID, "record")
                              if d.find_element(By.ID, "record").is_displayed() else None,
                              "the record button")
            record.click()
            # The button counts the seconds recorded: stop once the whole question is in.
            wait_for(driver, lambda d: (text := d.find_element(By.ID, "record").text)
                     .startswith("Stop (") and int(text[6:].split()[0]) >= seconds,
                     "the recording to hold the whole question")
            record.click()
            reply = wait_for(driver, lambda d: d.execute_script(FINISHED_REPLY), "the reply")
            assert reply == "".join(ANSWER)
            said = driver.find_element(By.CSS_SELECTOR, "#log li.user.heard").text
            assert heard(said, "weather", "paris", "today") >= 2
            played = wait_for(driver, lambda d: d.execute_script("""
                const audio = document.querySelector("#log li.assistant audio");
                return audio && audio.readyState >= 1 ? audio.duration : null;"""),
                              "the spoken reply to load")
            assert played > 1.0
            screenshot(driver, "voice.png")
