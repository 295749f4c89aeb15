"""Driving Debian's Chromium (/usr/bin/chromium, installed by deploy/ensure-browser.sh) with
Playwright, against the real console served by the real API. Screenshots go to `screenshots/`."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, sync_playwright

CHROMIUM = os.environ.get("CCS_CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parent.parent / "screenshots"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--autoplay-policy=no-user-gesture-required", "--lang=zh-CN"]


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """One headless Chromium for the test session."""
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: run `make services` (deploy/ensure-browser.sh "
                           "installs Debian's chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Console:
    """A signed-in (or not yet) console in its own browser context, recording page errors and
    Content-Security-Policy violations so a test can assert there were none."""

    context: BrowserContext
    page: Page
    base: str
    problems: list[str] = field(default_factory=list)

    def sign_in(self, username: str, password: str) -> None:
        self.page.goto(f"{self.base}/")
        self.page.fill("#username", username)
        self.page.fill("#password", password)
        self.page.click("#signin")
        self.page.wait_for_selector("header.top")

    def open_duty(self, purpose: str = "值班监控 duty monitoring") -> None:
        self.page.goto(f"{self.base}/#/duty")
        self.page.wait_for_selector("dialog.dialog input[name=purpose]")
        self.page.fill("dialog.dialog input[name=purpose]", purpose)
        self.page.click("dialog.dialog button[type=submit]")
        self.page.wait_for_selector("#feed-status.live", timeout=15_000)

    def shot(self, name: str) -> Path:
        SHOTS.mkdir(exist_ok=True)
        path = SHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=False)
        return path


def open_console(browser: Browser, base: str, lang: str = "zh") -> Console:
    context = browser.new_context(viewport={"width": 1440, "height": 900}, locale="zh-CN",
                                  timezone_id="Asia/Shanghai")
    page = context.new_page()
    c = Console(context, page, base)

    def on_console(msg: ConsoleMessage) -> None:
        # A 401 before sign-in is how the console learns it must show the sign-in page.
        if msg.type == "error" and "status of 401" not in msg.text:
            c.problems.append(f"console: {msg.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda e: c.problems.append(f"page error: {e}"))
    if lang == "en":
        page.add_init_script("localStorage.setItem('ccs.lang', 'en')")
    return c
