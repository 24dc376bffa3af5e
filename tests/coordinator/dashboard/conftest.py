"""A real headless Chromium, driven through chromedriver (Debian's ``chromium`` and
``chromium-driver``; ``.ci/run`` installs them), for the dashboard's tests.

The coordinator under test runs on the test's event loop, so every WebDriver call (a blocking HTTP
exchange with chromedriver) runs in a thread: the loop stays free to answer the page.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("KTRDR_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("KTRDR_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
WAIT_S = 20.0


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    for what, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)):
        if not (Path(path).is_file() or shutil.which(path)):
            return (f"{what} not found at {path}: install Debian's chromium and chromium-driver (.ci/run does), "
                    "or set KTRDR_TEST_CHROMIUM / KTRDR_TEST_CHROMEDRIVER")
    return None


class Browser:
    """Async wrappers over one WebDriver session, and waits that poll the page."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def open(self, url: str) -> None:
        await self.call(self.driver.get, url)

    async def script(self, source: str, *args: Any) -> Any:
        return await self.call(self.driver.execute_script, source, *args)

    async def until(self, source: str, *args: Any, what: str, timeout: float = WAIT_S) -> Any:
        """Polls a JavaScript expression (``return ...``) until it is truthy; returns its value."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            value = await self.script(source, *args)
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                shot = Path(tempfile.gettempdir()) / "ktrdr-dashboard-failure.png"
                await self.call(self.driver.save_screenshot, str(shot))
                logs = await self.call(self.driver.get_log, "browser")
                console = "\n".join(str(entry.get("message")) for entry in logs) or "(empty)"
                raise AssertionError(f"the page never showed {what} within {timeout} s (screenshot: {shot}); "
                                     f"the browser's console:\n{console}")
            await asyncio.sleep(0.1)

    async def text(self, css: str) -> str:
        return str(await self.script(
            "const el = document.querySelector(arguments[0]); return el ? el.innerText : '';", css))

    async def click(self, css: str) -> None:
        await self.script("document.querySelector(arguments[0]).click();", css)

    async def screenshot(self, name: str) -> None:
        """Kept where KTRDR_SCREENSHOTS points (to look at them), else not taken."""
        folder = os.environ.get("KTRDR_SCREENSHOTS")
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            # The whole page, not the first screenful.
            height = await self.script("return document.documentElement.scrollHeight")
            await self.call(self.driver.set_window_size, 1400, min(int(height) + 120, 4000))
            await self.call(self.driver.save_screenshot, str(Path(folder) / f"{name}.png"))


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    missing = _missing()
    if missing:
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # What a root, closed-network CI machine needs: no sandbox, no GPU, no calls home.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    driver = await asyncio.to_thread(webdriver.Chrome, options=options, service=Service(CHROMEDRIVER))
    try:
        yield Browser(driver)
    finally:
        await asyncio.to_thread(driver.quit)
