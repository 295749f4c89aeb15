"""The officer console in a real browser (Debian's Chromium) on the real system."""

from __future__ import annotations

from playwright.sync_api import Browser

from store.settings import Settings
from tests.browser import open_console
from tests.conftest import PASSWORD, Org
from tests.services import api_server


def test_sign_in_shows_the_duty_view_with_the_jurisdiction_on_the_map(settings: Settings, org: Org,
                                                                      browser: Browser):
    with api_server(settings) as base:
        c = open_console(browser, base)
        c.sign_in("jiangan-officer", PASSWORD)
        c.open_duty()
        c.page.wait_for_selector("#duty-map path.leaflet-interactive")
        c.shot("smoke")
        assert c.problems == []
