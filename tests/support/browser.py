"""Debian's Chromium, headless, driven through its own chromedriver: nothing is downloaded."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.wait import WebDriverWait

# Without the networking flags Chromium keeps trying to reach Google's services.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--window-size=1200,860")
# Where the tests leave their screenshots and figures (the README names it).
SCREENSHOTS = Path(os.environ.get("HEARTHBOT_SCREENSHOTS")
                   or Path(__file__).resolve().parents[2] / "build" / "screenshots")
WAIT_LIMIT = 30.0


def _find(name: str, *fallbacks: str) -> str | None:
    found = shutil.which(name)
    return found or next((f for f in fallbacks if Path(f).exists()), None)


def browser_paths() -> tuple[str, str]:
    """Chromium and chromedriver, or the test stops: skipped on a developer's machine without
    them, failed in CI, where `make test` installs them."""
    chromium = _find("chromium", "/usr/bin/chromium")
    driver = _find("chromedriver", "/usr/bin/chromedriver")
    if chromium and driver:
        return chromium, driver
    message = ("Chromium and chromedriver are needed for the browser tests: "
               "apt-get install chromium chromium-driver (make test does it as root)")
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@contextlib.contextmanager
def chromium(profile: Path, extra: Sequence[str] = ()) -> Iterator[WebDriver]:
    """A fresh browser with its own empty profile."""
    binary, driver_path = browser_paths()
    # Selenium's own driver manager stays out of it: both paths are given.
    os.environ.setdefault("SE_AVOID_STATS", "true")
    os.environ.setdefault("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*FLAGS, f"--user-data-dir={profile}", *extra):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: WebDriver, condition: Callable[[WebDriver], Any], what: str) -> Any:
    """Wait until `condition` holds (a final state, never a fixed time)."""
    # A page that redraws a table between two looks is still on its way, not wrong.
    return WebDriverWait(driver, WAIT_LIMIT, poll_frequency=0.05,
                         ignored_exceptions=(StaleElementReferenceException,)).until(
        condition, message=f"waited {WAIT_LIMIT:g} s for {what}")


def screenshot(driver: WebDriver, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    driver.save_screenshot(str(path))
    return path
