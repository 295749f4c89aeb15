"""The officer console in a real browser (Debian's Chromium) on the real system: phone → MQTT →
ingest → alert → live feed → the officers' screens."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
from playwright.sync_api import Browser
from psycopg.types.json import Jsonb
from sqlalchemy.orm import Session

from alerts.worker import AlertWorker
from api.routes.alerts import HEARTBEAT_S
from ingest.mqtt_worker import MqttIngestWorker
from store.settings import Settings
from tests.browser import Console, open_console
from tests.conftest import JIANGAN, JIANGHAN, PASSWORD, Org
from tests.geo import deep_inside
from tests.services import Phone, api_server, forget_session, in_thread


def _add_staff(session: Session, org: Org, username: str, role: str, unit_id: int) -> None:
    from store.demo import create_staff
    from store.enums import Role
    from store.models import OrgUnit

    unit = session.get(OrgUnit, unit_id)
    assert unit is not None
    create_staff(session, unit, username, Role(role), PASSWORD)
    session.commit()


def _enrol(base: str, username: str, supervisee_id: int) -> str:
    token = httpx.post(f"{base}/api/v1/auth/token",
                       data={"username": username, "password": PASSWORD}).json()["access_token"]
    cred = httpx.post(f"{base}/api/v1/supervisees/{supervisee_id}/devices", json={},
                      headers={"Authorization": f"Bearer {token}"}).json()
    return str(cred["device_id"])


@contextlib.contextmanager
def _live_system(settings: Settings, org: Org, name: str) -> Iterator[tuple[str, str]]:
    """The API, an MQTT ingest worker and the alert worker running, and a Jiang'an phone
    enrolled: (the API's base URL, the device id)."""
    client_id = f"{settings.mqtt_client_id}-{name}"
    ingest = MqttIngestWorker(settings, client_id=client_id)
    try:
        with api_server(settings) as base, in_thread(ingest), in_thread(AlertWorker(settings)):
            assert ingest.connected.wait(10), "ingest worker did not connect to the broker"
            yield base, _enrol(base, "jiangan-officer", org.supervisee_id)
    finally:
        forget_session(settings, client_id)


@pytest.mark.long
def test_an_alert_reaches_open_consoles_live_and_its_handling_is_seen_by_colleagues(
        settings: Settings, org: Org, browser: Browser, session: Session, db: psycopg.Connection):
    """An officer keeps the duty view open idle for half a minute (two heartbeats); a phone
    leaves its district over MQTT; the alert appears in the queue and on the map; the officer
    acknowledges and resolves it and a colleague's open console sees each change; another
    district's officer sees nothing."""
    _add_staff(session, org, "jiangan-officer2", "officer", org.office_ids[JIANGAN])
    with _live_system(settings, org, "console") as (base, device):
        consoles = {}
        for name in ("jiangan-officer", "jiangan-officer2", "jianghan-officer"):
            c = open_console(browser, base)
            c.sign_in(name, PASSWORD)
            c.open_duty()
            consoles[name] = c
        me, colleague, other = (consoles["jiangan-officer"], consoles["jiangan-officer2"],
                                consoles["jianghan-officer"])
        me.shot("duty-idle")
        # Two heartbeats' time (HEARTBEAT_S, 15 s) with nothing happening: the feed stays
        # open, no reconnect.
        me.page.wait_for_timeout(2 * HEARTBEAT_S * 1000 + 2000)
        assert me.page.locator("#feed-status.live").count() == 1
        subscribes = db.execute(
            "SELECT count(*) FROM audit_log a JOIN staff s ON s.id = a.staff_id "
            "WHERE a.action = 'alert.stream_subscribe' AND s.username = 'jiangan-officer'"
        ).fetchone()
        assert subscribes == (1,)  # one opening, one audit row, however long it stays open

        phone = Phone(settings, device)
        t0 = time.time() - 900
        home, away = deep_inside(JIANGAN), deep_inside(JIANGHAN)
        phone.report(*home, t0).wait_for_publish(5)
        for k in range(3):  # ten minutes later, across the river, three reports
            phone.report(*away, t0 + 600 + k * 60).wait_for_publish(5)
        phone.close()
        item = me.page.locator("#alert-queue li.queue-item").first
        item.wait_for(timeout=20_000)
        alert_id = int(item.get_attribute("data-alert-id") or 0)
        (kind,) = db.execute("SELECT kind FROM alerts WHERE id = %s", (alert_id,)).fetchone()
        assert kind == "area_exit"
        colleague.page.locator(f"#alert-queue li[data-alert-id='{alert_id}']").wait_for(
            timeout=10_000)
        # A high-severity alert sounds its tone (Web Audio; the page notes when it played).
        assert me.page.evaluate("() => document.body.dataset.lastCue || ''").startswith("high@")
        # On the map: the person turns "outside" once the map refreshes after the event.
        me.page.locator("path.person.state-outside").first.wait_for(timeout=15_000)
        item.click()
        me.page.locator("#alert-detail .explanation").wait_for()
        text = me.page.inner_text("#alert-detail .explanation")
        # The home area by its name, and the one deep fix that decided (1.9 km beyond).
        assert f"区域 {org.zone_ids[JIANGAN]}“江岸区”" in text, text
        assert "一次精度良好的定位超出边界" in text, text
        me.page.locator("path.evidence-fix").first.wait_for(timeout=10_000)
        me.shot("duty-alert")

        me.page.click("#ack")
        colleague.page.locator(
            f"#alert-queue li[data-alert-id='{alert_id}'][data-status='acknowledged']"
        ).wait_for(timeout=10_000)
        me.page.click("#resolve")
        me.page.select_option("dialog.dialog select[name=disposition]", "confirmed_violation")
        me.page.fill("dialog.dialog textarea[name=note]", "电话联系本人，已返回辖区 called, back home")
        me.shot("duty-resolve")
        me.page.click("dialog.dialog button[type=submit]")
        colleague.page.locator(f"#alert-queue li[data-alert-id='{alert_id}']").wait_for(
            state="detached", timeout=10_000)
        colleague.shot("duty-colleague")
        status, disposition = db.execute(
            "SELECT status, disposition FROM alerts WHERE id = %s", (alert_id,)).fetchone()
        assert (status, disposition) == ("resolved", "confirmed_violation")

        # The other district's officer saw none of it: no alert, no person of Jiang'an.
        assert other.page.locator("#alert-queue li.queue-item").count() == 0
        other.page.reload()
        other.page.wait_for_selector("#feed-status.live")
        assert other.page.locator("#alert-queue li.queue-item").count() == 0
        other.shot("duty-other-district")
        for c in consoles.values():
            assert c.problems == []
            c.context.close()


def test_the_auditor_has_no_duty_view_and_no_positions(settings: Settings, org: Org,
                                                       browser: Browser, session: Session):
    _add_staff(session, org, "auditor", "auditor", org.city_id)
    with api_server(settings) as base:
        c = open_console(browser, base)
        c.sign_in("auditor", PASSWORD)
        assert c.page.locator(".nav a[data-route=duty]").count() == 0
        c.page.goto(f"{base}/#/duty")
        c.page.wait_for_selector("main .notice")
        assert c.page.locator("#duty-map").count() == 0
        # The console's cookie session gets the API's answer: no positions for an auditor.
        status = c.page.evaluate(
            "fetch('/api/v1/duty?purpose=looking').then(r => r.status)")
        assert status == 403
        # The only error the page saw is the refusal the test provoked.
        assert [p for p in c.problems if "status of 403" not in p] == []
        c.context.close()


def test_the_maps_gcj02_conversion_is_the_engines(settings: Settings, browser: Browser):
    """Overlays on GCJ-02 tiles are converted in the browser by the same formula as the engine's
    (geofence/crs.py), both ways, so a zone drawn on AMap tiles lands where it was drawn."""
    import numpy as np

    from geofence.crs import gcj02_to_wgs84, wgs84_to_gcj02

    rng = np.random.default_rng(3)
    lon, lat = rng.uniform(73.5, 134.5, 200), rng.uniform(18.5, 53.0, 200)
    with api_server(settings) as base:
        c = open_console(browser, base)
        c.page.goto(f"{base}/static/index.html")
        got = c.page.evaluate("""async ([lon, lat]) => {
            const m = await import('/static/js/map.js');
            return lon.map((x, i) => [...m.wgsToGcj(x, lat[i]), ...m.gcjToWgs(x, lat[i])]);
        }""", [lon.tolist(), lat.tolist()])
        c.context.close()
    got_a = np.array(got)
    glon, glat = wgs84_to_gcj02(lon, lat)
    wlon, wlat = gcj02_to_wgs84(lon, lat)
    assert np.abs(got_a[:, 0] - glon).max() < 1e-9 and np.abs(got_a[:, 1] - glat).max() < 1e-9
    assert np.abs(got_a[:, 2] - wlon).max() < 1e-7 and np.abs(got_a[:, 3] - wlat).max() < 1e-7
    # And the conversion is not the identity: inside China GCJ-02 is hundreds of metres off.
    assert np.abs(got_a[:, 0] - lon).min() > 1e-4


def test_the_console_speaks_english_when_asked(settings: Settings, org: Org, browser: Browser):
    """Chinese first, English available: the switch in the header changes every label, and the
    choice survives a reload."""
    with api_server(settings) as base:
        c = open_console(browser, base)
        c.sign_in("jiangan-officer", PASSWORD)
        c.open_duty()
        assert c.page.inner_text(".nav a[data-route=duty]") == "值班监控"
        c.page.click("header .who button.link:not(#logout)")
        c.page.wait_for_selector(".nav a[data-route=duty]:text('Duty view')")
        c.page.wait_for_selector("#feed-status.live")
        assert c.page.inner_text("#feed-status") == "live"
        c.page.reload()
        c.page.wait_for_selector("#feed-status.live")
        nav = c.page.inner_text("nav.nav")
        assert "Supervisees" in nav and "Travel permits" in nav and "矫正对象" not in nav
        c.shot("duty-english")
        for route, name in (("supervisees", "supervisees-english"), ("permits", "permits-english")):
            c.page.goto(f"{base}/#/{route}")
            c.page.wait_for_selector("main h1")
            assert not any("\u4e00" <= ch <= "\u9fff" for ch in c.page.inner_text("main h1"))
            c.shot(name)
        assert c.problems == []
        c.context.close()


def test_a_configured_tile_server_is_allowed_by_the_policy_and_draws(
        settings: Settings, org: Org, browser: Browser):
    """A deployment's tile server with `{s}` subdomains (AMap-style, GCJ-02): the console loads
    its tiles from every subdomain, and the Content-Security-Policy lets each of them through
    (a wildcard inside a label, as `webrd0*.…`, would have blocked them all)."""
    import http.server
    import threading

    from store.settings import set_settings
    from tests.services import free_port

    png = bytes.fromhex(  # a valid 1x1 grey PNG
        "89504e470d0a1a0a0000000d49484452000000010000000108000000003a7e9b55"
        "0000000a49444154789c63b8070000810080d3c1e9950000000049454e44ae426082")
    hosts: list[str] = []

    class Tiles(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            hosts.append(self.headers.get("Host", ""))
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(png)))
            self.end_headers()
            self.wfile.write(png)

        def log_message(self, *args: object) -> None:
            pass

    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Tiles)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # Chromium resolves every *.localhost name to the loopback address.
    set_settings(settings.model_copy(update={
        "console_tile_url": f"http://webrd0{{s}}.localhost:{port}/{{z}}/{{x}}/{{y}}.png",
        "console_tile_subdomains": "12", "console_tile_crs": "gcj02"}))
    try:
        with api_server(settings) as base:
            csp = httpx.get(f"{base}/").headers["content-security-policy"]
            assert (f"http://webrd01.localhost:{port}" in csp
                    and f"http://webrd02.localhost:{port}" in csp and "*" not in csp), csp
            c = open_console(browser, base)
            c.sign_in("jiangan-officer", PASSWORD)
            c.open_duty()
            c.page.wait_for_function(
                "() => document.querySelectorAll('img.leaflet-tile-loaded').length >= 4",
                timeout=15_000)
            c.shot("console-duty-tiles")
            assert {h.split(":")[0] for h in hosts} == {"webrd01.localhost", "webrd02.localhost"}
            assert not [p for p in c.problems if "Content Security Policy" in p], c.problems
            assert c.page.inner_text(".leaflet-control-attribution").strip() == "Leaflet"
            c.context.close()
    finally:
        set_settings(settings)
        server.shutdown()


# --- sign-in, lockout, password change, notification links, the API's refusals in Chinese ----

def _at_sign_in(browser: Browser, base: str, url: str = "/", lang: str = "zh") -> Console:
    c = open_console(browser, base, lang)
    c.page.goto(f"{base}{url}")
    c.page.wait_for_selector("#signin")
    return c


def _try(c: Console, username: str, password: str) -> str:
    """Submit the sign-in form; the message the screen then shows (empty if signed in)."""
    msg = c.page.locator(".signin-form .form-error")
    c.page.evaluate("() => { document.querySelector('.signin-form .form-error').textContent = ''; }")
    c.page.fill("#username", username)
    c.page.fill("#password", password)
    c.page.click("#signin")
    c.page.wait_for_function(
        "() => document.querySelector('header.top') || "
        "document.querySelector('.signin-form .form-error')?.textContent")
    return "" if c.page.locator("header.top").count() else msg.inner_text()


def _latin_words(text: str) -> list[str]:
    """English words in a text (a Chinese screen shows none in its messages)."""
    import re

    return re.findall(r"[A-Za-z]{3,}", text)


def test_a_wrong_password_is_told_in_chinese_or_in_english_when_chosen(
        settings: Settings, org: Org, browser: Browser, db: psycopg.Connection):
    with api_server(settings) as base:
        c = _at_sign_in(browser, base)
        assert c.page.inner_text("h1") == "登录"
        c.page.wait_for_timeout(300)
        assert c.page.locator(".signin").count() == 1  # boot's 401 shows one form, not two
        c.shot("signin")
        said = _try(c, "jiangan-officer", "not the password")
        first, policy = said.split("\n")
        assert first == "用户名或密码错误，或账户已被锁定。"
        assert policy == (f"连续输错 {settings.login_max_failures} 次密码，账户将锁定 "
                          f"{settings.login_lockout_s // 60} 分钟；如已锁定，请稍后再试或联系管理员解锁。")
        assert _latin_words(said) == []
        assert c.page.input_value("#password") == ""  # cleared for the next try
        c.shot("signin-wrong-password")
        # The server's refusal was the API's (an audit row), not something the page made up.
        assert db.execute("SELECT action, target FROM audit_log").fetchall() == [
            ("auth.login_failed", "jiangan-officer")]
        # English when chosen on the sign-in screen.
        c.page.click(".signin-card button.link")
        c.page.wait_for_selector("h1:text('Sign in')")
        said = _try(c, "jiangan-officer", "not the password either")
        assert said.startswith("Wrong username or password, or the account is locked.\n")
        assert f"lock the account for {settings.login_lockout_s // 60} min" in said
        c.shot("signin-wrong-password-english")
        # And the server not reached at all: a network error, in the chosen language.
        c.page.route("**/api/v1/auth/console", lambda route: route.abort())
        assert _try(c, "jiangan-officer", PASSWORD).startswith("Network error")
        c.page.click(".signin-card button.link")
        c.page.wait_for_selector("h1:text('登录')")
        assert _try(c, "jiangan-officer", PASSWORD) == "网络错误：无法连接服务器，请检查网络后重试"
        c.page.unroute("**/api/v1/auth/console")
        assert _try(c, "jiangan-officer", PASSWORD) == ""
        assert [p for p in c.problems if "ERR_FAILED" not in p] == []
        c.context.close()


def test_the_lockout_after_the_configured_failures_is_shown_in_chinese(
        settings: Settings, org: Org, browser: Browser, db: psycopg.Connection):
    with api_server(settings) as base:
        c = _at_sign_in(browser, base)
        for k in range(settings.login_max_failures):
            assert _try(c, "jiangan-officer", f"guess {k}").startswith("用户名或密码错误")
        # Locked: the right password is refused too, and the screen says for how long an
        # account stays locked (the same words as for a wrong password: the API does not tell
        # a locked account from a wrong password, so nobody learns which accounts exist).
        said = _try(c, "jiangan-officer", PASSWORD)
        assert said.startswith("用户名或密码错误，或账户已被锁定。")
        assert f"账户将锁定 {settings.login_lockout_s // 60} 分钟" in said
        assert "联系管理员解锁" in said and _latin_words(said) == []
        assert c.page.locator("header.top").count() == 0
        c.shot("signin-locked")
        locked_for = db.execute("SELECT extract(epoch FROM locked_until - now()) FROM staff "
                                "WHERE username = 'jiangan-officer'").fetchone()[0]
        assert 0 < locked_for <= settings.login_lockout_s
        rows = db.execute("""SELECT detail ? 'now_locked_until', (detail->>'locked')::bool
                               FROM audit_log WHERE action = 'auth.login_failed' ORDER BY id"""
                          ).fetchall()
        assert rows == [(False, False)] * (settings.login_max_failures - 1) + [
            (True, False), (False, True)]
        assert c.problems == []
        c.context.close()


def test_an_officer_changes_the_password_on_the_account_page_and_signs_in_with_the_new_one(
        settings: Settings, org: Org, browser: Browser, db: psycopg.Connection):
    new = "换一个更长的新密码 2027"
    with api_server(settings) as base:
        c = _at_sign_in(browser, base, "/#/account")
        assert _try(c, "jiangan-officer", PASSWORD) == ""
        c.page.wait_for_selector("main.view-account h1:text('我的账户')")
        form = c.page.locator("main.view-account form")
        # A wrong current password: told in Chinese, and the officer stays signed in (the API
        # answers 401 for it, which is not the session ending).
        form.locator("input[name=current]").fill("not my password")
        form.locator("input[name=new]").fill(new)
        form.locator("input[name=again]").fill(new)
        form.locator("button[type=submit]").click()
        c.page.wait_for_selector("main.view-account .form-error:text('当前密码不正确。')")
        assert c.page.locator("header.top").count() == 1
        c.shot("account-wrong-current-password")
        # The two new entries differ: caught before anything is sent.
        form.locator("input[name=current]").fill(PASSWORD)
        form.locator("input[name=again]").fill(new + "x")
        form.locator("button[type=submit]").click()
        c.page.wait_for_selector("main.view-account .form-error:text('两次输入的新密码不一致')")
        form.locator("input[name=again]").fill(new)
        form.locator("button[type=submit]").click()
        c.page.wait_for_selector(".toast:text('密码已修改，请重新登录')")
        c.shot("account-password-changed")
        # The page reloads into the sign-in screen: the old password no longer works.
        c.page.wait_for_selector("#signin")
        assert _try(c, "jiangan-officer", PASSWORD).startswith("用户名或密码错误")
        assert _try(c, "jiangan-officer", new) == ""
        c.page.wait_for_selector("main.view-account h1:text('我的账户')")
        assert c.page.inner_text("header .who a.me") == "jiangan-officer · 矫正工作人员"
        assert db.execute("""SELECT action FROM audit_log WHERE action LIKE 'auth.password%%'
                              ORDER BY id""").fetchall() == [("auth.password_change_refused",),
                                                             ("auth.password_change",)]
        assert c.problems == []
        c.context.close()


def test_a_notification_link_opens_its_alert_after_sign_in(
        settings: Settings, org: Org, browser: Browser, db: psycopg.Connection):
    """The link a webhook or e-mail carries (alerts/delivery.py `document`) opens the console
    on that alert: after signing in and saying the purpose, not on the duty view."""
    import json

    from alerts.delivery import claim, new_webhook_secret
    from alerts.service import queue_raised
    from geofence.crs import point_to_wgs84
    from geofence.model import CRS
    from tests.test_delivery import add_channel, add_webhook, raise_alert

    hook = add_webhook(db, org.city_id, "http://127.0.0.1:9/hook", new_webhook_secret())
    add_channel(db, org.staff["jiangan-officer"], "webhook", "+8613800000001", hook)
    raise_alert(db, org)  # another alert of the office, not the one linked
    # The linked one as the engine would open it: where, since when, and why.
    lon, lat = point_to_wgs84(*deep_inside(JIANGAN), CRS.GCJ02)
    since = time.time() - 600
    reason = {"rule": "exclusion_entry.accuracy_circle_wholly_inside", "zone_id": org.zone_ids[JIANGAN],
              "since": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(since)),
              "accuracy_m": 18.0, "distance_m": 240.0}
    with db.transaction():
        (alert_id,) = db.execute(
            """INSERT INTO alerts (kind, severity, supervisee_id, office_id, reason, lon, lat,
                                   first_fix_time, last_fix_time)
               VALUES ('exclusion_entry', 'critical', %s, %s, %s, %s, %s, to_timestamp(%s),
                       to_timestamp(%s)) RETURNING id""",
            (org.supervisee_id, org.office_ids[JIANGAN], json.dumps(reason), lon, lat, since,
             since + 120)).fetchone()
        queue_raised(db, "exclusion_entry", "critical",
                     [(alert_id, org.supervisee_id, org.office_ids[JIANGAN], 1, True, {})])
    with api_server(settings) as base:
        (sent,) = [o for o in claim(db, "webhook", 10, 30.0, "test") if o.alert["id"] == alert_id]
        link = sent.document(base)["alert"]["url"]
        assert link == f"{base}/#/alerts/{alert_id}"
        c = open_console(browser, base)
        c.page.goto(link)
        c.page.wait_for_selector("#signin")
        assert _try(c, "jiangan-officer", PASSWORD) == ""
        c.page.wait_for_selector("dialog.dialog input[name=purpose]")
        c.page.fill("dialog.dialog input[name=purpose]", "核查告警通知 notification follow-up")
        c.page.click("dialog.dialog button[type=submit]")
        c.page.wait_for_selector(f"main.view-alert h1:text('告警 #{alert_id}')")
        assert c.page.evaluate("location.hash") == f"#/alerts/{alert_id}"
        c.page.wait_for_selector(f"main.view-alert .alert-detail[data-alert-id='{alert_id}']")
        c.page.wait_for_selector("main.view-alert li:has-text('Webhook')")
        info = c.page.inner_text("main.view-alert .alert-page-info")
        assert "进入禁止区域" in info and "Test jiangan (T-420102)" in info
        assert "深入边界 240 m" in info and "Webhook · 待发送" in info
        assert not [w for w in ("None", "null", "undefined", "unknown", "pending") if w in info]
        assert c.page.locator("#ack").count() == 1
        assert c.page.locator("#duty-map").count() == 0
        c.page.wait_for_timeout(500)  # the map has drawn
        c.shot("alert-from-notification")
        assert db.execute("""SELECT purpose FROM audit_log a JOIN staff s ON s.id = a.staff_id
                              WHERE s.username = 'jiangan-officer'
                                AND a.action = 'alert.stream_subscribe'
                           """).fetchall() == [("核查告警通知 notification follow-up",)]
        assert c.problems == []
        c.context.close()


def test_the_apis_refusals_are_worded_in_the_consoles_language(
        settings: Settings, org: Org, browser: Browser, db: psycopg.Connection):
    """Refusals of the real API through the console's own api() and errorText: forbidden, not
    found, conflict, field validation, a zone the engine refuses, the network gone."""
    alert_id = db.execute("""INSERT INTO alerts (kind, severity, supervisee_id, office_id)
                             VALUES ('area_exit', 'high', %s, %s) RETURNING id""",
                          (org.supervisee_id, org.office_ids[JIANGAN])).fetchone()[0]
    calls = [
        ["/webhooks", {"method": "POST", "body": {"org_unit_id": org.office_ids[JIANGAN],
                                                  "name": "gateway", "url": "http://127.0.0.1:9/x"}}],
        [f"/alerts/{alert_id + 1000}", {}],
        [f"/alerts/{alert_id}/acknowledge", {"method": "POST"}],
        ["/auth/password", {"method": "POST", "body": {"current_password": PASSWORD,
                                                       "new_password": "short"}}],
        ["/zones", {"method": "POST", "body": {
            "name": "z", "kind": "exclusion", "owner_unit_id": org.office_ids[JIANGAN],
            "geometry": {"type": "Polygon", "coordinates": [[[114.3, 30.6], [114.31, 30.6],
                                                             [114.3, 30.6]]]}}}],
        ["/network-check", {}],  # the test's route drops it: the server is not reached
    ]
    words = """async ([calls, lang]) => {
        const { api } = await import('/static/js/api.js');
        const { errorText, toast } = await import('/static/js/ui.js');
        const { setLang } = await import('/static/js/i18n.js');
        setLang(lang);
        const out = [];
        for (const [path, opts] of calls) {
          try { await api(path, opts); out.push('accepted'); }
          catch (e) { out.push(errorText(e)); toast(errorText(e), 'error'); }
        }
        return out;
    }"""
    with api_server(settings) as base:
        c = open_console(browser, base)
        c.sign_in("jiangan-officer", PASSWORD)
        c.page.click("dialog.dialog button.secondary")  # no duty watch: this test asks its own
        c.page.wait_for_selector("main .notice")
        db.execute("UPDATE alerts SET status = 'acknowledged' WHERE id = %s", (alert_id,))
        c.page.route("**/api/v1/network-check", lambda route: route.abort())
        zh = c.page.evaluate(words, [calls, "zh"])
        assert zh[0] == "您的角色无权执行此操作。"
        assert zh[1] == "未找到：可能已被删除，或不在您的辖区内。"
        # A conflict keeps the server's own words below: which state the alert is in.
        assert zh[2] == ("当前状态不允许此操作（可能已被他人处理），请刷新后查看。\n"
                         f"alert {alert_id} is acknowledged, not open")
        assert zh[3] == "提交的内容有误：新密码：至少 12 个字符"
        first, engine = zh[4].split("\n")
        assert first == "顶点太少：多边形至少需要 3 个不同的顶点。" and "at least 4 positions" in engine
        assert zh[5] == "网络错误：无法连接服务器，请检查网络后重试"
        assert all(_latin_words(z.split("\n")[0]) == [] for z in zh)
        c.page.wait_for_selector(".toast-error")
        c.shot("error-messages")
        en = c.page.evaluate(words, [calls, "en"])
        assert en[0] == "Your role may not do this."
        assert en[1].startswith("Not found:")
        assert en[3] == "Some fields are not accepted: New password: at least 12 characters"
        assert en[5].startswith("Network error")
        # The refusals changed nothing: the password is the old one, no zone was made.
        assert db.execute("SELECT count(*) FROM zones WHERE name = 'z'").fetchone() == (0,)
        assert db.execute("SELECT action FROM audit_log WHERE action LIKE 'auth.password%%'"
                          ).fetchall() == []
        expected = ("status of 403", "status of 404", "status of 409", "status of 422",
                    "ERR_FAILED")
        assert [p for p in c.problems if not any(x in p for x in expected)] == []


def _seed_alert(db: psycopg.Connection, org: Org, kind: str = "area_exit",
                severity: str = "high") -> int:
    """An open alert of the Jiang'an supervisee, as the engine would have left it (no outbox
    row: the consoles find it when they load their queue)."""
    from geofence.crs import point_to_wgs84
    from geofence.model import CRS

    lon, lat = point_to_wgs84(*deep_inside(JIANGHAN), CRS.GCJ02)
    since = datetime.now(UTC) - timedelta(minutes=8)
    reason = {"rule": "area_exit.accuracy_circle_wholly_outside", "since": since.isoformat(),
              "accuracy_m": 20, "distance_m": 2400, "zone_id": org.zone_ids[JIANGAN]}
    (alert_id,) = db.execute(
        """INSERT INTO alerts (kind, severity, supervisee_id, office_id, opened_at, first_fix_time,
                               last_fix_time, lon, lat, count, reason)
           VALUES (%s, %s, %s, %s, now() - interval '5 minutes', %s, now() - interval '6 minutes',
                   %s, %s, 3, %s) RETURNING id""",
        (kind, severity, org.supervisee_id, org.office_ids[JIANGAN], since, lon, lat,
         Jsonb(reason))).fetchone()
    return int(alert_id)


def test_escalating_and_suspending_an_alert_are_seen_at_once_by_a_colleagues_console(
        settings: Settings, org: Org, browser: Browser, session: Session, db: psycopg.Connection):
    """In the duty view's alert panel an officer escalates an alert to the district bureau, then
    suspends the person's notifications of that kind (a hospital stay): a colleague's open
    console shows each step without reloading, and the database and audit log record both."""
    _add_staff(session, org, "jiangan-officer2", "officer", org.office_ids[JIANGAN])
    alert_id = _seed_alert(db, org)
    with api_server(settings) as base, in_thread(AlertWorker(settings)):
        me, colleague = open_console(browser, base), open_console(browser, base)
        for c, name in ((me, "jiangan-officer"), (colleague, "jiangan-officer2")):
            c.sign_in(name, PASSWORD)
            c.open_duty()
        mine = me.page.locator(f"#alert-queue li[data-alert-id='{alert_id}']")
        theirs = colleague.page.locator(f"#alert-queue li[data-alert-id='{alert_id}']")
        theirs.wait_for(timeout=10_000)
        assert "区司法局" not in theirs.inner_text() and "通知已暂停" not in theirs.inner_text()
        mine.click()
        me.page.locator("#alert-detail #escalate").wait_for()

        me.page.click("#escalate")
        me.page.wait_for_selector(".toast:has-text('已上报')")
        # The colleague's queue says where the alert now is, from the feed alone.
        colleague.page.locator(
            f"#alert-queue li[data-alert-id='{alert_id}'] .qi-status:has-text('区司法局')"
        ).wait_for(timeout=10_000)
        me.page.locator("#alert-detail dd:has-text('区司法局')").wait_for(timeout=10_000)
        level, deadline = db.execute("SELECT escalation_level, ack_deadline FROM alerts WHERE id = %s",
                                     (alert_id,)).fetchone()
        assert level == 1 and deadline is not None  # the district gets its own time to acknowledge

        me.page.click("#suspend")
        me.page.wait_for_selector("dialog.dialog[open] input[name=hours]")
        assert me.page.input_value("dialog.dialog input[name=hours]") == "24"
        me.page.fill("dialog.dialog input[name=hours]", "72")
        me.page.fill("dialog.dialog textarea[name=reason]", "本人住院治疗（协和医院），暂停越界通知")
        me.shot("duty-suspend")
        me.page.click("dialog.dialog button[type=submit]")
        me.page.wait_for_selector(".toast:has-text('已暂停通知')")
        # Announced on the live feed: the colleague's console marks it without a reload.
        colleague.page.locator(
            f"#alert-queue li[data-alert-id='{alert_id}'] .qi-status:has-text('通知已暂停')"
        ).wait_for(timeout=10_000)
        me.page.locator("#alert-detail .alert-head:has-text('通知已暂停')").wait_for(timeout=10_000)
        me.page.locator("#alert-detail .history li:has-text('暂停通知至')").wait_for(timeout=10_000)
        history = me.page.locator("#alert-detail .history li").all_inner_texts()
        assert len(history) == 2, history  # each step once, however many redraws came
        assert "上报至区司法局" in history[0] and "本人住院治疗" in history[1]
        assert me.page.locator("#alert-detail .history").count() == 1
        me.page.wait_for_selector(".toast", state="detached", timeout=15_000)
        me.shot("duty-escalated-suspended")
        colleague.shot("duty-colleague-suspended")

        kind, reason, hours, by = db.execute(
            """SELECT kind, reason, extract(epoch FROM ends_at - starts_at) / 3600, staff_id
                 FROM alert_suspensions WHERE supervisee_id = %s""", (org.supervisee_id,)).fetchone()
        assert (kind, reason, round(hours), by) == (
            "area_exit", "本人住院治疗（协和医院），暂停越界通知", 72, org.staff["jiangan-officer"])
        assert db.execute("SELECT suppressed, status FROM alerts WHERE id = %s", (alert_id,)
                          ).fetchone() == (True, "open")
        assert db.execute("SELECT action FROM alert_events WHERE alert_id = %s ORDER BY id",
                          (alert_id,)).fetchall() == [("escalated",), ("suspended",)]
        audit = db.execute(
            """SELECT a.action, a.target FROM audit_log a JOIN staff s ON s.id = a.staff_id
                WHERE s.username = 'jiangan-officer' AND a.action IN ('alert.escalate', 'alert.suspend')
                ORDER BY a.id""").fetchall()
        assert audit == [("alert.escalate", f"alert:{alert_id}"),
                         ("alert.suspend", f"supervisee:{org.supervisee_id}")]
        # Both steps went out on the feed, each once.
        topics = [t for (t,) in db.execute(
            "SELECT topic FROM outbox WHERE payload->>'alert_id' = %s ORDER BY id", (str(alert_id),))]
        assert topics == ["alert.escalated", "alert.suspended"]
        for c in (me, colleague):
            assert c.problems == []
            c.context.close()


def test_the_duty_map_colours_each_of_the_five_states_apart(
        settings: Settings, org: Org, browser: Browser, db: psycopg.Connection):
    """One person in each state: five markers in five different colours, each the colour of its
    state's entry in the map's legend, and the counts above the queue add them up."""
    from tests.test_console_api import STATES, seed_duty_states

    seed_duty_states(db, org)
    with api_server(settings) as base:
        c = open_console(browser, base)
        c.sign_in("jiangan-officer", PASSWORD)
        c.open_duty()
        markers = c.page.locator("#duty-map path.person")
        markers.nth(4).wait_for(timeout=10_000)
        assert markers.count() == 5  # the fixture's person has no fix: not on the map
        fills = {}
        for state in STATES:
            marker = c.page.locator(f"#duty-map path.person.state-{state}")
            assert marker.count() == 1, state
            fills[state] = marker.get_attribute("fill")
        assert len(set(fills.values())) == 5, fills
        legend = c.page.locator("#duty-map .legend .legend-row")
        assert legend.count() == 5
        swatches = {row.inner_text().strip(): row.locator(".swatch").evaluate(
            "e => getComputedStyle(e).backgroundColor") for row in legend.all()}
        labels = {"inside": "在区域内", "outside": "越界", "silent": "失联", "undecidable": "无法判定",
                  "travel": "外出审批中"}
        assert set(swatches) == set(labels.values())
        for state, label in labels.items():
            r, g, b = (int(fills[state][i:i + 2], 16) for i in (1, 3, 5))
            assert swatches[label] == f"rgb({r}, {g}, {b})", (state, swatches[label], fills[state])
        counts = {state: c.page.inner_text(f"#state-counts .count[data-state={state}]")
                  for state in STATES}
        assert counts == {"inside": "在区域内 1", "outside": "越界 1", "silent": "失联 2",
                          "undecidable": "无法判定 1", "travel": "外出审批中 1"}
        # Hovering a marker names the person and the state.
        c.page.locator("#duty-map path.person.state-undecidable").hover()
        c.page.wait_for_selector(".leaflet-tooltip:has-text('赵某某')")
        assert "赵某某 · 无法判定 · " in c.page.inner_text(".leaflet-tooltip")
        c.shot("duty-states")
        assert c.problems == []
        c.context.close()


def test_a_person_walking_out_is_shown_as_leaving_with_the_path_that_decided_it(
        settings: Settings, org: Org, browser: Browser):
    """A one-minute phone without speed walks out of Jiang'an towards Jianghan at 1.4 m/s,
    reporting over MQTT: three fixes inside, then 40, 124 and 208 m beyond the border (±10 m).
    The third outside fix decides a departure (profile version 4: three satellite fixes, each
    further out than the one before by more than both accuracies and 50 m); the officer's alert
    says so in Chinese, names each fix, and the map shows the three fixes beyond the border."""
    from tests.geo import near_border

    with _live_system(settings, org, "console-away") as (base, device):
        me = open_console(browser, base)
        me.sign_in("jiangan-officer", PASSWORD)
        me.open_duty()
        phone = Phone(settings, device)
        t0 = time.time() - 330  # the last fix half a minute ago: not late data
        for k, metres in enumerate((-270.0, -186.0, -102.0, 50.0, 134.0, 218.0)):
            phone.report(*near_border(JIANGAN, JIANGHAN, metres), t0 + 60 * k
                         ).wait_for_publish(5)
        phone.close()
        item = me.page.locator("#alert-queue li.queue-item").first
        item.wait_for(timeout=20_000)
        item.click()
        detail = me.page.locator("#alert-detail .explanation")
        detail.wait_for()
        text = detail.inner_text()
        assert "最后 3 次卫星定位一次比一次离边界更远" in text, text
        assert "此人正在离开" in text, text
        # The zone by its name, not its number alone.
        assert f"区域 {org.zone_ids[JIANGAN]}“江岸区”" in text, text
        # The evidence named is the three outside fixes, nearest first.
        beyond = [float(m.replace(",", "")) for m in re.findall(r"区域外 ([\d,.]+) m", text)]
        assert len(beyond) == 3, text
        assert all(b - a > 50 + 10 + 10 for a, b in zip(beyond, beyond[1:], strict=False)), text
        me.page.locator("path.evidence-fix").nth(2).wait_for(timeout=10_000)
        assert me.page.locator("path.evidence-fix").count() == 3
        # Raised once: the detail says so (it said "fixes 1" beside an explanation of three).
        facts = me.page.inner_text("#alert-detail").split()
        assert facts[facts.index("触发次数") + 1] == "1", facts
        assert "迟到数据" not in facts  # the last fix was half a minute old
        # One alert for the one departure, also after the later fixes were folded.
        me.page.wait_for_timeout(2000)
        assert me.page.locator("#alert-queue li.queue-item").count() == 1
        me.shot("duty-departure")
        assert me.problems == []
        me.context.close()
