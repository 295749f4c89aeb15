"""The console's supervisee list, supervisee page (enrolment with the OwnTracks QR code) and
track playback with exports, in Debian's Chromium against the real API and ingest pipeline."""

from __future__ import annotations

import csv
import math
import time
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
from playwright.sync_api import Browser

from store.settings import Settings
from tests.browser import Console, open_console
from tests.conftest import JIANGAN, PASSWORD, Org
from tests.geo import deep_inside
from tests.services import api_server
from tests.test_track_exports import KML, insert_fixes

GPX = "{http://www.topografix.com/GPX/1/1}"


def signed_in(browser: Browser, base: str, username: str) -> Console:
    c = open_console(browser, base)
    c.sign_in(username, PASSWORD)
    # Signed in, the console opens the duty view, which asks for the watch's purpose first:
    # declined here (these tests ask for their own purposes).
    c.page.click("dialog.dialog button.secondary")
    c.page.wait_for_selector("main .notice")
    return c


def open_list(c: Console) -> None:
    c.page.goto(f"{c.base}/#/supervisees")
    c.page.wait_for_selector(".sl-table tbody tr")


def enrol_in_console(c: Console, supervisee_id: int) -> tuple[str, str]:
    """Opens the person's page, enrols a phone; returns (device id, secret) as shown once."""
    c.page.goto(f"{c.base}/#/supervisees/{supervisee_id}")
    c.page.wait_for_selector("#sp-devices table")
    c.page.click("#enrol")
    c.page.fill("dialog.dialog input[name=label]", "本人手机")
    c.page.click("dialog.dialog button[type=submit]")
    c.page.wait_for_selector("#enrolment #owntracks-qr")
    secret = c.page.inner_text("#device-secret").strip()
    device = c.page.inner_text("#sp-devices tbody tr td .mono").strip()
    return device, secret


def report_walk(base: str, secret: str, device: str, t0: float) -> int:
    """Through the real Traccar Client endpoint: a 15-minute stop (fixes within ~20 m), then a
    walk of about 1 km. Returns the number of fixes."""
    lon, lat = deep_inside(JIANGAN)
    fixes = [(lon + 0.00005 * (i % 3), lat, t0 + 180 * i, 12.0) for i in range(6)]  # 0..15 min
    m_per_deg = 111_320 * math.cos(math.radians(lat))
    fixes += [(lon + 150 * k / m_per_deg, lat + 0.0005 * k, t0 + 900 + 120 * k, 25.0 + k)
              for k in range(1, 7)]
    with httpx.Client(base_url=base) as http:
        for x, y, t, acc in fixes:
            r = http.post(f"/api/v1/ingest/osmand/{secret}", params={
                "id": device, "lat": y, "lon": x, "timestamp": int(t), "accuracy": acc})
            assert r.status_code == 200, r.text
    return len(fixes)


def test_officer_enrols_a_phone_and_sees_the_qr_code_once(settings: Settings, org: Org,
                                                           browser: Browser):
    with api_server(settings) as base:
        c = signed_in(browser, base, "jiangan-officer")
        open_list(c)
        assert c.page.locator(".sl-table tbody tr.clickable").count() == 1  # only their district
        c.page.fill("#sl-search", "no such person")
        assert c.page.inner_text(".sl-table td.empty") == "没有符合条件的矫正对象"
        c.page.fill("#sl-search", f"T-{JIANGAN}")
        c.shot("supervisees")
        c.page.click(".sl-table tbody tr.clickable")
        c.page.wait_for_selector("#sp-level table")
        assert c.page.inner_text(".person-head .pname") == "Test jiangan"
        c.page.wait_for_selector("#person-map path.leaflet-interactive")  # the home area
        c.shot("supervisee")

        device, secret = enrol_in_console(c, org.supervisee_id)
        assert device.startswith("d") and len(secret) >= 20
        qr = c.page.get_attribute("#owntracks-qr", "src") or ""
        assert qr.startswith("data:image/svg+xml")
        # The image really rendered (a CSP refusing data: images would leave it 0 wide).
        assert c.page.evaluate("document.getElementById('owntracks-qr').naturalWidth") > 0
        assert c.page.inner_text("#traccar-url").endswith(f"/api/v1/ingest/osmand/{secret}")
        assert "只显示这一次" in c.page.inner_text("#enrolment .once")
        c.shot("enrolment")
        # Closed, the secret is gone from the page; the device list shows the phone in use.
        c.page.click("#enrol-done")
        assert c.page.locator("#device-secret").count() == 0
        assert secret not in c.page.content()
        assert "使用中" in c.page.inner_text("#sp-devices tbody")

        # Level change with a reason: the history shows it.
        c.page.click("#change-level")
        c.page.select_option("dialog.dialog select[name=level]", "strict")
        c.page.fill("dialog.dialog input[name=flags]", "涉毒")
        c.page.fill("dialog.dialog textarea[name=reason]", "多次越界，调整为严管")
        c.page.click("dialog.dialog button[type=submit]")
        c.page.wait_for_selector("#sp-level td:has-text('多次越界，调整为严管')")
        assert c.page.inner_text(".person-head .level") == "严管"

        # Roll-call now: it is listed as sent.
        c.page.click("#rollcall")
        c.page.click("dialog.dialog button[type=submit]")
        c.page.wait_for_selector("#sp-rollcalls tbody td:has-text('工作人员临时点名')")
        c.page.wait_for_timeout(300)
        c.shot("supervisee-after")
        assert c.problems == []


def test_track_playback_slider_stops_and_gpx_download(settings: Settings, org: Org,
                                                      browser: Browser, db: psycopg.Connection,
                                                      tmp_path: Path):
    with api_server(settings) as base:
        c = signed_in(browser, base, "jiangan-officer")
        device, secret = enrol_in_console(c, org.supervisee_id)
        t0 = time.time() - 3600
        n = report_walk(base, secret, device, t0)
        assert db.execute("SELECT count(*) FROM positions").fetchone() == (n,)
        # An alert opened during the walk (seeded as in tests/test_api.py: the rule engine is not
        # what this test is about), at the 9th fix's time and place.
        lon, lat, fix_time = db.execute(
            "SELECT lon, lat, fix_time FROM positions ORDER BY fix_time OFFSET 8 LIMIT 1").fetchone()
        db.execute("""INSERT INTO alerts (kind, severity, supervisee_id, office_id, opened_at, lon, lat)
                      VALUES ('area_exit', 'high', %s, %s, %s, %s, %s)""",
                   (org.supervisee_id, org.office_ids[JIANGAN], fix_time, lon, lat))
        db.commit()

        c.page.click("#open-track")
        c.page.wait_for_selector("#track-form")
        c.page.fill("#tr-purpose", "核查活动轨迹 track review")
        c.page.click("#tr-show")
        c.page.wait_for_selector("#track-slider")
        assert c.page.inner_text("#track-count") == f"{n} 个定位点"
        assert c.page.get_attribute("#track-slider", "max") == str(n - 1)
        assert c.page.locator("#track-map path.track-fix").count() == n
        # One stop: the first six fixes, 15 minutes.
        assert c.page.locator("#stops tbody tr.clickable").count() == 1
        assert "15 分钟" in c.page.inner_text("#stops tbody tr")
        assert c.page.locator("#track-map path.track-stop").count() == 1
        first = c.page.inner_text("#fix-time")
        # Moving the slider moves the marker and shows that fix's time, accuracy, provider.
        c.page.locator("#track-slider").fill(str(n - 1))
        assert c.page.inner_text("#fix-time") != first
        assert f"{n} / {n}" in c.page.inner_text("#fix-info")
        assert "±31 m" in c.page.inner_text("#fix-info")
        c.page.click("#prev")
        assert c.page.input_value("#track-slider") == str(n - 2)
        # The alert's moment: a tick on the slider and a row; either takes the slider there.
        assert c.page.locator(".slider-box .tick").count() == 1
        assert c.page.locator("#track-map path.track-alert").count() == 1
        c.page.click("#track-alerts tbody tr.clickable")
        assert c.page.input_value("#track-slider") == "8"
        c.page.click("#stops tbody tr.clickable")
        assert c.page.input_value("#track-slider") == "0"
        c.page.click(".slider-box .tick")
        assert c.page.input_value("#track-slider") == "8"
        c.shot("track")

        with c.page.expect_download() as dl:
            c.page.click("#export-gpx")
        path = tmp_path / "track.gpx"
        dl.value.save_as(path)
        root = ET.parse(path).getroot()
        assert len(root.findall(f"{GPX}trk/{GPX}trkseg/{GPX}trkpt")) == n
        with c.page.expect_download() as dl:
            c.page.click("#export-csv")
        dl.value.save_as(tmp_path / "track.csv")
        with open(tmp_path / "track.csv", encoding="utf-8") as f:
            assert len(list(csv.DictReader(f))) == n

        audit = db.execute("""SELECT action, purpose, detail->>'format' FROM audit_log
                               WHERE action LIKE 'location.%' ORDER BY id""").fetchall()
        assert audit == [("location.read_track", "核查活动轨迹 track review", None),
                         ("location.export_track", "核查活动轨迹 track review", "gpx"),
                         ("location.export_track", "核查活动轨迹 track review", "csv")]
        assert c.problems == []


def test_track_playback_says_when_the_period_holds_more_than_it_shows(
        settings: Settings, org: Org, browser: Browser, db: psycopg.Connection, tmp_path: Path):
    """More fixes than the playback's 10,000: the page says how many the period holds, and the
    exports (KML among them) hold every one."""
    n = 10_050
    insert_fixes(db, org.supervisee_id, n, datetime.now(UTC) - timedelta(hours=3))
    with api_server(settings) as base:
        c = signed_in(browser, base, "jiangan-officer")
        c.page.goto(f"{base}/#/supervisees/{org.supervisee_id}/track")
        c.page.fill("#tr-purpose", "长时段核查 long period")
        c.page.click("#tr-show")
        c.page.wait_for_selector("#track-limit", timeout=30_000)
        assert c.page.inner_text("#track-count") == "10000 个定位点"
        assert c.page.inner_text("#track-limit") == (
            "本时段共有 10050 个定位点，这里只显示了前 10000 个，请缩短时段。导出的文件包含全部定位点。")
        assert "limit" not in (c.page.get_attribute("#export-kml", "href") or "")
        c.shot("track-limit")
        with c.page.expect_download() as dl:
            c.page.click("#export-kml")
        assert dl.value.suggested_filename.endswith(".kml")
        dl.value.save_as(tmp_path / "track.kml")
        root = ET.parse(tmp_path / "track.kml").getroot()
        assert len(root.findall(f"{KML}Document/{KML}Folder/{KML}Placemark")) == n
        assert db.execute("""SELECT action, detail->>'format', (detail->>'fixes')::int
                               FROM audit_log WHERE action LIKE 'location.%' ORDER BY id""").fetchall() == [
            ("location.read_track", None, 10_000), ("location.export_track", "kml", n)]
        assert c.problems == []


def test_track_of_a_period_without_fixes_says_so(settings: Settings, org: Org, browser: Browser):
    with api_server(settings) as base:
        c = signed_in(browser, base, "jiangan-officer")
        c.page.goto(f"{base}/#/supervisees/{org.supervisee_id}/track")
        c.page.fill("#tr-purpose", "例行检查 routine")
        c.page.click("#tr-show")
        c.page.wait_for_selector("#track-empty")
        assert c.page.locator("#player").is_hidden()
        assert c.page.locator("#export-gpx").count() == 1
        c.shot("track-empty")
        assert c.problems == []


def test_officer_of_another_district_cannot_open_the_supervisee(settings: Settings, org: Org,
                                                                  browser: Browser):
    with api_server(settings) as base:
        c = signed_in(browser, base, "jianghan-officer")
        open_list(c)
        assert "Test jiangan" not in c.page.inner_text(".sl-table")
        c.page.goto(f"{base}/#/supervisees/{org.supervisee_id}")
        c.page.wait_for_selector("#not-found")
        assert c.page.locator("#enrol").count() == 0
        c.shot("supervisee-other-district")
        c.page.goto(f"{base}/#/supervisees/{org.supervisee_id}/track")
        c.page.wait_for_selector("#not-found")
        assert c.page.locator("#track-form").count() == 0
        # The console's failed reads are logged by the browser as 404s: those are expected here.
        assert [p for p in c.problems if "404" not in p] == []


def test_the_sanction_suggestion_is_shown_and_a_person_records_the_decision(
        settings: Settings, org: Org, browser: Browser, db: psycopg.Connection):
    """Out of contact for twelve days (an open communication-failure alert), with one reprimand
    this year: the page suggests a warning and says why, in Chinese; nothing is applied until
    the officer records the decision, which the profile follows by moving the person to strict."""
    db.execute("""INSERT INTO alerts (kind, severity, supervisee_id, office_id, first_fix_time)
                  VALUES ('communication_failure', 'medium', %s, %s, now() - interval '12 days')""",
               (org.supervisee_id, org.office_ids[JIANGAN]))
    db.execute("""INSERT INTO sanctions (supervisee_id, kind, decided_by, decided_at, reason)
                  VALUES (%s, 'reprimand', %s, now() - interval '40 days', '未按时报到')""",
               (org.supervisee_id, org.staff["jiangan-officer"]))
    with api_server(settings) as base:
        c = signed_in(browser, base, "jiangan-officer")
        c.page.goto(f"{base}/#/supervisees/{org.supervisee_id}")
        c.page.wait_for_selector("#sp-sanctions #suggestion")
        assert c.page.inner_text("#suggestion") == "警告"
        card = c.page.inner_text("#sp-sanctions")
        assert "失联 12.0 天（超过 10 天）" in card, card
        assert "12.0 天" in c.page.inner_text("#sp-sanctions dl dd:nth-of-type(2)")
        assert c.page.inner_text("#sp-sanctions dl dd:nth-of-type(3)") == "1"
        assert "由工作人员决定" in card
        assert "out of contact" not in card and "undefined" not in card and "null" not in card
        assert db.execute("SELECT count(*) FROM sanctions").fetchone() == (1,)  # nothing applied
        c.page.locator("#sp-sanctions").scroll_into_view_if_needed()
        c.shot("supervisee-sanction")

        c.page.click("#sanction")
        c.page.select_option("dialog.dialog select[name=kind]", "warning")
        c.page.fill("dialog.dialog textarea[name=reason]", "失联十二日，经谈话教育后给予警告")
        c.page.click("dialog.dialog button[type=submit]")
        c.page.wait_for_selector(".toast:has-text('已记录')")
        c.page.wait_for_selector(".person-head .level:has-text('严管')")
        kind, by, reason = db.execute("SELECT kind, decided_by, reason FROM sanctions "
                                      "ORDER BY id DESC LIMIT 1").fetchone()
        assert (kind, by, reason) == ("warning", org.staff["jiangan-officer"],
                                      "失联十二日，经谈话教育后给予警告")
        assert db.execute("SELECT level FROM supervisees WHERE id = %s", (org.supervisee_id,)
                          ).fetchone() == ("strict",)
        assert db.execute("""SELECT action, target, detail->>'kind' FROM audit_log
                              WHERE action = 'sanction.record'""").fetchall() == [
            ("sanction.record", f"supervisee:{org.supervisee_id}", "warning")]
        # The level change says why: automatically, after the warning.
        c.page.wait_for_selector("#sp-level td:has-text('警告')")
        assert c.problems == []
