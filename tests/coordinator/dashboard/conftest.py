"""A real headless Chromium, driven through chromedriver (Debian's ``chromium`` and
``chromium-driver``; ``.ci/run`` installs them), for the dashboard's tests. A test that fails
leaves a screenshot of the page under $KTRDR_TEST_ARTIFACTS/dashboard (else the temporary
directory), and its report says where.

The coordinator under test runs on the test's event loop, so every WebDriver call (a blocking HTTP
exchange with chromedriver) runs in a thread: the loop stays free to answer the page.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
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
                shot = artifacts() / f"never-{_safe(what)}.png"
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

    async def viewport(self, width: int, height: int = 1000) -> None:
        """The window's size; the page's own width (``innerWidth``) is ``width``."""
        await self.call(self.driver.set_window_size, width, height)
        await self.until("return innerWidth === arguments[0]", width, what=f"a {width} px wide viewport")

    async def size(self) -> dict[str, int]:
        """The page's scrolled size (``scrollWidth`` past ``innerWidth``: the page overflows sideways)."""
        return dict(await self.script(
            "const d = document.documentElement;"
            "return {width: d.scrollWidth, height: d.scrollHeight, viewport: innerWidth};"))

    async def screenshot(self, name: str) -> None:
        """Kept where KTRDR_SCREENSHOTS points (to look at them), else not taken."""
        folder = os.environ.get("KTRDR_SCREENSHOTS")
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            # The whole page, not the first screenful, at the width it is shown at.
            width, height = await self.script("return [innerWidth, document.documentElement.scrollHeight]")
            before = await self.call(self.driver.get_window_size)
            await self.call(self.driver.set_window_size, int(width), min(int(height) + 120, 4000))
            await self.call(self.driver.save_screenshot, str(Path(folder) / f"{name}.png"))
            await self.call(self.driver.set_window_size, before["width"], before["height"])


def artifacts() -> Path:
    """Where a failed browser test leaves its screenshot: $KTRDR_TEST_ARTIFACTS (a folder CI keeps),
    else the temporary directory."""
    folder = Path(os.environ.get("KTRDR_TEST_ARTIFACTS") or Path(tempfile.gettempdir()) / "ktrdr-test-artifacts")
    folder = folder / "dashboard"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:120] or "page"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A browser test that failed leaves a screenshot of the page as it was, and the browser's
    console, under :func:`artifacts`; the failure's report says where."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    browser = getattr(item, "funcargs", {}).get("browser")
    if report.when != "call" or not report.failed or not isinstance(browser, Browser):
        return
    shot = artifacts() / f"{_safe(item.name)}.png"
    try:
        browser.driver.save_screenshot(str(shot))
        logs = browser.driver.get_log("browser")
        shot.with_suffix(".console.txt").write_text(
            "\n".join(str(entry.get("message")) for entry in logs) or "(empty)\n")
        where = f"screenshot: {shot}\nconsole: {shot.with_suffix('.console.txt')}"
    except Exception as exc:  # the browser itself may be what failed
        where = f"no screenshot ({exc})"
    report.sections.append(("dashboard page at the failure", where))
    sys.stderr.write(f"\n{item.nodeid}: {where}\n")


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
