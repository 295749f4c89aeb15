"""The office screens of the console (zones, permits, key periods, staff, notifications, audit,
overview) in a real browser against the real API, database, Redis and broker."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta, timezone

import httpx
import psycopg
import pytest
from playwright.sync_api import Browser
from sqlalchemy.orm import Session

from alerts.worker import AlertWorker
from geofence.crs import point_to_wgs84
from geofence.model import CRS
from ingest.mqtt_worker import MqttIngestWorker
from store.settings import Settings
from tests.browser import Console, open_console
from tests.conftest import JIANGAN, JIANGHAN, PASSWORD, Org
from tests.geo import deep_inside
from tests.services import Phone, api_server, forget_session, in_thread

API = "/api/v1"
# Chromium logs every refused fetch; the one a test provokes on purpose is expected.
REFUSED_ZONE = "Failed to load resource: the server responded with a status of 422"


def _headers(base: str, username: str) -> dict[str, str]:
    r = httpx.post(f"{base}{API}/auth/token", data={"username": username, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def _console(browser: Browser, base: str, username: str, route: str) -> Console:
    c = open_console(browser, base)
    # Signed in on the screen's own address (the home screen would ask for a duty watch first).
    c.page.goto(f"{base}/#/{route}")
    c.page.fill("#username", username)
    c.page.fill("#password", PASSWORD)
    c.page.click("#signin")
    c.page.wait_for_selector("header.top")
    return c


def _merc(lat: float) -> float:
    return math.log(math.tan(math.pi / 4 + math.radians(lat) / 2))


class MapPixels:
    """Screen pixels of WGS-84 positions on a console map without tiles (drawn in WGS-84):
    from a zone whose extent is known (the database) and whose outline is on the screen."""

    def __init__(self, c: Console, db: psycopg.Connection, zone_id: int) -> None:
        path = c.page.locator(f"path.zone-id-{zone_id}")
        path.wait_for()
        c.page.wait_for_timeout(400)  # fitBounds has settled
        box = path.bounding_box()
        assert box is not None
        self.box = box
        self.w, self.s, self.e, self.n = db.execute(
            "SELECT ST_XMin(geom), ST_YMin(geom), ST_XMax(geom), ST_YMax(geom) FROM zones "
            "WHERE id = %s", (zone_id,)).fetchone()

    def __call__(self, lon: float, lat: float) -> tuple[float, float]:
        b = self.box
        x = b["x"] + (lon - self.w) / (self.e - self.w) * b["width"]
        y = b["y"] + (_merc(self.n) - _merc(lat)) / (_merc(self.n) - _merc(self.s)) * b["height"]
        return x, y


def _home_point() -> tuple[float, float]:
    """WGS-84 of a point deep inside Jiang'an (the supervisee's home area)."""
    return point_to_wgs84(*deep_inside(JIANGAN), CRS.GCJ02)


def _draw(c: Console, px: MapPixels, corners: list[tuple[float, float]]) -> list[tuple[float, float]]:
    c.page.click("#draw-poly")
    clicked = []
    for lon, lat in corners:
        x, y = px(lon, lat)
        c.page.mouse.click(x, y)
        clicked.append((x, y))
    c.page.locator("#zones-map .draft-vertex").nth(len(corners) - 1).wait_for()
    assert c.page.locator("#zones-map .draft-vertex").count() == len(corners)
    c.page.click("#draw-finish")
    return clicked


def _fill_dialog(c: Console, values: dict[str, str]) -> None:
    c.page.wait_for_selector("dialog.dialog[open]")
    for name, value in values.items():
        field = c.page.locator(f"dialog.dialog [name={name}]")
        if field.evaluate("e => e.tagName") == "SELECT":
            field.select_option(value)
        else:
            field.fill(value)
    c.page.click("dialog.dialog button[type=submit]")
    c.page.wait_for_selector("dialog.dialog", state="detached")


@pytest.mark.long
def test_officer_draws_an_exclusion_zone_assigns_it_and_a_fix_inside_raises_the_alert(
        settings: Settings, org: Org, db: psycopg.Connection, browser: Browser):
    client_id = f"{settings.mqtt_client_id}-office"
    ingest = MqttIngestWorker(settings, client_id=client_id)
    try:
        with api_server(settings) as base, in_thread(ingest), in_thread(AlertWorker(settings)):
            assert ingest.connected.wait(10), "ingest worker did not connect to the broker"
            c = _console(browser, base, "jiangan-officer", "zones")
            px = MapPixels(c, db, org.zone_ids[JIANGAN])
            lon, lat = _home_point()
            dx, dy = 0.006, 0.005  # about 1.1 km × 1.1 km around the supervisee's home
            corners = [(lon - dx, lat - dy), (lon + dx, lat - dy), (lon + dx, lat + dy), (lon - dx, lat + dy)]
            _draw(c, px, corners)
            c.page.fill("#zone-name", "禁止区域：某小学周边")
            assert c.page.locator("#zone-kind").input_value() == "exclusion"
            c.page.click("#zone-save")
            c.page.wait_for_selector("#zone-list td:has-text('禁止区域：某小学周边')")
            zone_id, kind, owner, crs, w, s, e, n = db.execute(
                "SELECT id, kind, owner_unit_id, crs, ST_XMin(geom), ST_YMin(geom), ST_XMax(geom), "
                "ST_YMax(geom) FROM zones WHERE name = '禁止区域：某小学周边'").fetchone()
            assert (kind, owner, crs) == ("exclusion", org.office_ids[JIANGAN], "wgs84")
            # Where the officer clicked, within two pixels (≈ 60 m at this zoom).
            tol = 2.5 * (px.e - px.w) / px.box["width"]
            for got, want in ((w, lon - dx), (e, lon + dx), (s, lat - dy), (n, lat + dy)):
                assert abs(got - want) < tol, (got, want, tol)
            c.page.wait_for_selector(f"path.zone-id-{zone_id}")
            c.shot("zones")

            c.page.click(f"button.assign[data-zone='{zone_id}']")
            _fill_dialog(c, {"supervisee": str(org.supervisee_id), "role": "exclusion", "buffer_m": "100"})
            c.page.wait_for_selector(".toast:has-text('已指定')")
            assert db.execute("SELECT role, buffer_m, active FROM supervisee_zones WHERE zone_id = %s "
                              "AND supervisee_id = %s", (zone_id, org.supervisee_id)).fetchall() == [
                ("exclusion", 100.0, True)]

            h = _headers(base, "jiangan-officer")
            cred = httpx.post(f"{base}{API}/supervisees/{org.supervisee_id}/devices", json={},
                              headers=h).json()
            phone = Phone(settings, cred["device_id"])
            now = time.time()
            for k in range(3):
                phone.report(lon, lat, now - 240 + k * 60, accuracy=15, crs="wgs84").wait_for_publish(5)
            alert = None
            deadline = time.monotonic() + 25
            while alert is None and time.monotonic() < deadline:
                alert = db.execute("SELECT id, severity, reason->>'zone_id' FROM alerts WHERE kind = "
                                   "'exclusion_entry' AND supervisee_id = %s",
                                   (org.supervisee_id,)).fetchone()
                time.sleep(0.3)
            phone.close()
            assert alert is not None, "no exclusion_entry alert"
            assert alert[1:] == ("critical", str(zone_id))
            c.open_duty()
            item = c.page.locator(f"#alert-queue li[data-alert-id='{alert[0]}']")
            item.wait_for(timeout=15_000)
            assert "进入禁止区域" in item.inner_text()
            assert c.problems == []
    finally:
        forget_session(settings, client_id)


def test_a_bow_tie_is_refused_and_the_crossing_is_marked_where_it_is(
        settings: Settings, org: Org, db: psycopg.Connection, browser: Browser):
    with api_server(settings) as base:
        c = _console(browser, base, "jiangan-officer", "zones")
        px = MapPixels(c, db, org.zone_ids[JIANGAN])
        lon, lat = _home_point()
        d = 0.006
        # A B C D with A→B and C→D the two diagonals: they cross at the centre.
        clicked = _draw(c, px, [(lon - d, lat - d), (lon + d, lat + d), (lon + d, lat - d),
                                (lon - d, lat + d)])
        c.page.fill("#zone-name", "蝴蝶结")
        c.page.click("#zone-save")
        err = c.page.locator("#zone-error")
        err.wait_for()
        # Said in Chinese, with the engine's own words (they name the place) below.
        assert err.inner_text().startswith("区域未保存：多边形无效（例如边相互交叉）。")
        assert "Self-intersection" in err.inner_text()
        assert c.page.locator("#zone-error-where").inner_text().endswith("第 1–2 边与第 3–4 边相交")
        # The cross on the map sits where the diagonals meet: the centre of the drawn vertices
        # (the map zoomed in on them to show it).
        c.page.wait_for_timeout(300)
        mark = c.page.locator("#zones-map .error-mark").bounding_box()
        assert mark is not None
        drawn = c.page.locator("#zones-map .draft-vertex").all()
        vertices = [b for b in (v.bounding_box() for v in drawn) if b]
        assert len(vertices) == 4
        spread = max(v["x"] for v in vertices) - min(v["x"] for v in vertices)
        assert spread > 4 * (max(x for x, _ in clicked) - min(x for x, _ in clicked)) / 2
        cx = sum(v["x"] + v["width"] / 2 for v in vertices) / 4
        cy = sum(v["y"] + v["height"] / 2 for v in vertices) / 4
        assert abs(mark["x"] + mark["width"] / 2 - cx) < 3 and abs(mark["y"] + mark["height"] / 2 - cy) < 3
        assert db.execute("SELECT count(*) FROM zones WHERE name = '蝴蝶结'").fetchone() == (0,)
        c.shot("zones-invalid")
        assert [p for p in c.problems if REFUSED_ZONE not in p] == []
        assert len(c.problems) == 1  # the one refusal, nothing else


def test_an_officer_edits_an_exclusion_zone_by_dragging_a_vertex(
        settings: Settings, org: Org, db: psycopg.Connection, browser: Browser):
    with api_server(settings) as base:
        lon, lat = _home_point()
        d = 0.004
        square = [[lon - d, lat - d], [lon + d, lat - d], [lon + d, lat + d], [lon - d, lat + d],
                  [lon - d, lat - d]]
        r = httpx.post(f"{base}{API}/zones", headers=_headers(base, "jiangan-officer"), json={
            "name": "禁止区域：网吧", "kind": "exclusion", "owner_unit_id": org.office_ids[JIANGAN],
            "crs": "wgs84", "geometry": {"type": "Polygon", "coordinates": [square]}})
        assert r.status_code == 201, r.text
        zone_id = r.json()["id"]
        c = _console(browser, base, "jiangan-officer", "zones")
        c.page.wait_for_selector(f"button.edit[data-zone='{zone_id}']")
        # The district's home area (a unit above the office) is read-only here.
        home_row = c.page.locator(
            f"#zone-list tr:has(button.assign[data-zone='{org.zone_ids[JIANGAN]}'])")
        assert home_row.locator("button.edit, button.retire").count() == 0
        assert "只读" in home_row.inner_text()
        c.page.click(f"button.edit[data-zone='{zone_id}']")
        vertices = c.page.locator("#zones-map .edit-vertex")
        vertices.nth(3).wait_for()
        assert vertices.count() == 4
        assert c.page.locator("#zone-name").input_value() == "禁止区域：网吧"
        px = MapPixels(c, db, zone_id)
        # Vertex 1 is on the screen where the zone has it; dragged 200 m west and 110 m south.
        box = vertices.nth(0).bounding_box()
        assert box is not None
        x0, y0 = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        ex, ey = px(lon - d, lat - d)
        assert abs(x0 - ex) < 2 and abs(y0 - ey) < 2
        target = (lon - d - 0.002, lat - d - 0.001)
        tx, ty = px(*target)
        c.page.mouse.move(x0, y0)
        c.page.mouse.down()
        c.page.mouse.move(tx, ty, steps=10)
        c.page.mouse.up()
        c.page.fill("#zone-name", "禁止区域：网吧（扩大）")
        c.page.wait_for_timeout(200)
        c.shot("zones-edit")
        c.page.click("#zone-save")
        c.page.wait_for_selector(f"#zone-list tr:has(button.edit[data-zone='{zone_id}']) td:has-text('v2')")
        version, name, crs, drawn = db.execute(
            "SELECT version, name, crs, source_geojson FROM zones WHERE id = %s", (zone_id,)).fetchone()
        assert (version, name, crs) == (2, "禁止区域：网吧（扩大）", "wgs84")
        ring = drawn["coordinates"][0]
        assert len(ring) == 5 and ring[0] == ring[-1]
        per_px = (px.e - px.w) / px.box["width"]  # degrees of longitude (and about of latitude)
        assert abs(ring[0][0] - target[0]) < 2 * per_px and abs(ring[0][1] - target[1]) < 2 * per_px
        for got, was in zip(ring[1:4], square[1:4], strict=True):  # the others stayed
            assert got == pytest.approx(was, abs=2e-7)
        [previous] = db.execute("SELECT detail->'previous_geojson' FROM audit_log WHERE "
                                "action = 'zone.update' AND target = %s", (f"zone:{zone_id}",)
                                ).fetchone()
        assert previous["coordinates"] == [square]
        # Retired with a reason: marked 已停用, no longer editable or assignable.
        c.page.click(f"button.retire[data-zone='{zone_id}']")
        _fill_dialog(c, {"reason": "场所已关闭"})
        c.page.wait_for_selector("#zone-list td:has-text('已停用')")
        assert c.page.locator(f"button.edit[data-zone='{zone_id}'], button.assign[data-zone='{zone_id}']"
                              ).count() == 0
        assert db.execute("SELECT active FROM zones WHERE id = %s", (zone_id,)).fetchone() == (False,)
        assert c.problems == []


def _destination_and_permit(base: str, org: Org, days: int) -> int:
    admin = _headers(base, "admin")
    dest = httpx.post(f"{base}{API}/zones", headers=admin, json={
        "name": "汉阳医院片区", "kind": "destination", "crs": "gcj02", "owner_unit_id": org.city_id,
        "geometry": {"type": "Polygon", "coordinates": [[
            [114.20, 30.53], [114.24, 30.53], [114.24, 30.56], [114.20, 30.56], [114.20, 30.53]]]}})
    assert dest.status_code == 201, dest.text
    start = datetime.now(UTC) + timedelta(days=1)
    r = httpx.post(f"{base}{API}/supervisees/{org.supervisee_id}/permits",
                   headers=_headers(base, "jiangan-officer"), json={
                       "reason": "medical", "destination_zone_id": dest.json()["id"],
                       "start_at": start.isoformat(), "end_at": (start + timedelta(days=days)).isoformat(),
                       "details": "膝关节手术"})
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def test_district_supervisor_approves_a_ten_day_permit_after_the_office_opinion(
        settings: Settings, org: Org, db: psycopg.Connection, browser: Browser):
    with api_server(settings) as base:
        pid = _destination_and_permit(base, org, 10)
        officer = _console(browser, base, "jiangan-officer", "permits")
        row = officer.page.locator(f"#permit-table tr[data-permit-id='{pid}']")
        row.click()
        officer.page.wait_for_selector("#permit-opinion")
        assert officer.page.locator("#permit-approve").count() == 0  # the district decides
        officer.page.click("#permit-opinion")
        _fill_dialog(officer, {"recommend": "yes", "note": "病情属实，同意外出就医"})
        officer.page.wait_for_selector("#permit-opinion-text:has-text('同意外出：病情属实')")
        assert officer.problems == []

        sup = _console(browser, base, "jiangan-supervisor", "permits")
        sup.page.locator(f"#permit-table tr[data-permit-id='{pid}']").click()
        sup.page.click("#permit-approve")
        _fill_dialog(sup, {"note": "同意，按期销假"})
        sup.page.wait_for_selector(".permit-history li:has-text('批准')")
        sup.page.click("#permit-filter [data-value=all]")
        sup.page.locator(f"#permit-table tr[data-permit-id='{pid}']").click()
        sup.page.wait_for_selector(".permit-history li:has-text('批准')")
        sup.shot("permits")
        status, tier, decided_by, opinion, note = db.execute(
            "SELECT status, required_tier, decided_by, office_opinion, decision_note FROM travel_permits "
            "WHERE id = %s", (pid,)).fetchone()
        assert (status, tier, decided_by, note) == ("approved", "district",
                                                    org.staff["jiangan-supervisor"], "同意，按期销假")
        assert opinion == "recommend: 病情属实，同意外出就医"
        actions = db.execute("SELECT action FROM permit_events WHERE permit_id = %s ORDER BY id",
                             (pid,)).fetchall()
        assert actions == [("requested",), ("office_opinion",), ("approved",)]
        assert sup.problems == []


def test_an_officer_of_another_district_sees_none_of_jiangans_zones_or_permits(
        settings: Settings, org: Org, db: psycopg.Connection, browser: Browser):
    with api_server(settings) as base:
        _destination_and_permit(base, org, 3)
        h = _headers(base, "jiangan-officer")
        lon, lat = _home_point()
        r = httpx.post(f"{base}{API}/zones", headers=h, json={
            "name": "江岸禁止区域", "kind": "exclusion", "owner_unit_id": org.office_ids[JIANGAN],
            "radius_m": 300, "geometry": {"type": "Point", "coordinates": [lon, lat]}})
        assert r.status_code == 201, r.text
        c = _console(browser, base, "jianghan-officer", "zones")
        c.page.wait_for_selector("#zone-list td:has-text('江汉区')")
        text = c.page.locator("main").inner_text()
        assert "江岸" not in text and "江岸禁止区域" not in text
        names = set(c.page.locator("#zone-list tbody tr td:first-child").all_inner_texts())
        assert names == {"江汉区", "汉阳医院片区"}  # their district and the city's destination
        c.page.goto(f"{base}/#/permits")
        c.page.click("#permit-filter [data-value=all]")
        c.page.wait_for_selector("#permit-table td.empty")
        assert c.page.locator("#permit-table tr[data-permit-id]").count() == 0
        assert c.problems == []


def test_an_auditor_reads_the_audit_log_and_its_chain_check_but_no_positions(
        settings: Settings, org: Org, session: Session, browser: Browser):
    from store.demo import create_staff
    from store.enums import Role
    from store.models import OrgUnit

    city = session.get(OrgUnit, org.city_id)
    assert city is not None
    create_staff(session, city, "auditor", Role.AUDITOR, PASSWORD, full_name="审计员甲")
    session.commit()
    with api_server(settings) as base:
        _destination_and_permit(base, org, 2)  # something in the log
        c = open_console(browser, base)
        c.sign_in("auditor", PASSWORD)
        c.page.wait_for_selector("#audit-verify.ok")
        assert "哈希链完整" in c.page.locator("#audit-verify").inner_text()
        c.page.wait_for_selector("#audit-rows td:has-text('permit.request')")
        assert c.page.locator(".nav a[data-route=duty]").count() == 0
        assert c.page.locator(".nav a[data-route=supervisees]").count() == 0
        # The cookie session itself is refused the positions.
        r = c.page.request.get(f"{base}{API}/duty?purpose=audit+check")
        assert r.status == 403
        c.page.fill("#audit-action", "permit.request")
        c.page.click("#audit-filters button[type=submit]")
        rows = c.page.locator("#audit-rows tbody tr")
        deadline = time.monotonic() + 10
        while not all("permit.request" in r for r in rows.all_inner_texts()):
            assert time.monotonic() < deadline, rows.all_inner_texts()
            c.page.wait_for_timeout(100)
        assert rows.count() >= 1
        c.shot("audit")
        assert c.problems == []


def test_city_admin_screens_staff_key_periods_notifications_overview(
        settings: Settings, org: Org, db: psycopg.Connection, browser: Browser):
    with api_server(settings) as base:
        _destination_and_permit(base, org, 3)  # one permit waiting in Jiang'an
        c = _console(browser, base, "admin", "overview")
        c.page.wait_for_selector("#overview-table tbody tr")
        pending = c.page.locator("#overview-totals .tile[data-key=permits_pending] .tile-n").inner_text()
        assert pending == "1"
        # Two districts, each heading its office with its subtotal; the permit counts in
        # Jiang'an's subtotal, not Jianghan's.
        assert c.page.locator("#overview-table tr[data-office]").count() == 2
        assert c.page.locator("#overview-table tr.district-row").count() == 2
        jiangan = c.page.locator(
            f"#overview-table tbody[data-district='{org.district_ids[JIANGAN]}'] tr.district-row td")
        jianghan = c.page.locator(
            f"#overview-table tbody[data-district='{org.district_ids[JIANGHAN]}'] tr.district-row td")
        assert (jiangan.nth(4).inner_text(), jianghan.nth(4).inner_text()) == ("1", "0")
        # Any month's compliance report, downloaded with the console's own sign-in.
        c.page.fill("#report-month", "2026-10")
        c.page.dispatch_event("#report-month", "change")
        href = c.page.get_attribute("#report-pdf", "href")
        assert href == f"{API}/reports/compliance?from=2026-10-01&to=2026-11-01&format=pdf"
        pdf = c.page.request.get(f"{base}{href}")
        assert pdf.status == 200 and pdf.body().startswith(b"%PDF-")
        csv = c.page.request.get(f"{base}{c.page.get_attribute('#report-csv', 'href')}")
        assert "武汉市司法局" in csv.body().decode("utf-8-sig")
        c.shot("overview")

        c.page.goto(f"{base}/#/staff")
        c.page.wait_for_selector("#staff-table")
        c.page.select_option("#staff-role", "office_head")
        c.page.select_option("#staff-unit", str(org.office_ids[JIANGAN]))
        c.page.fill("#staff-username", "jiangan-head")
        c.page.fill("#staff-name", "王所长")
        c.page.fill("#staff-password", "a long initial password")
        c.page.click("#staff-form button[type=submit]")
        c.page.wait_for_selector("#staff-table td:has-text('王所长')")
        assert db.execute("SELECT role, org_unit_id FROM staff WHERE username = 'jiangan-head'"
                          ).fetchone() == ("office_head", org.office_ids[JIANGAN])
        c.shot("staff")

        c.page.goto(f"{base}/#/key-periods")
        c.page.fill("#kp-name", "春节重点时段")
        c.page.fill("#kp-from", "2027-02-05")
        c.page.fill("#kp-to", "2027-02-12")
        c.page.check("#kp-form input[value=strict]")
        c.page.click("#kp-form button[type=submit]")
        c.page.wait_for_selector("#kp-list td:has-text('春节重点时段')")
        assert db.execute("SELECT levels, interval_factor FROM key_periods").fetchall() == [(["strict"], 0.5)]
        c.shot("keyperiods")

        c.page.goto(f"{base}/#/notifications")
        c.page.click("#channel-add")
        _fill_dialog(c, {"channel": "email", "address": "admin@sfj.wuhan.example", "min_severity": "high",
                         "carries": "both"})
        c.page.wait_for_selector("#channel-list td:has-text('admin@sfj.wuhan.example')")
        c.page.wait_for_selector("#channel-list td:has-text('告警和月度合规报表')")
        assert db.execute("SELECT channel, min_severity, active, alerts, reports FROM staff_channels"
                          ).fetchall() == [("email", "high", True, True, True)]
        c.shot("notifications")
        assert c.problems == []


def test_a_district_supervisor_registers_a_webhook_and_sees_it_listed(
        settings: Settings, org: Org, db: psycopg.Connection, browser: Browser):
    """The notification channels page's webhook form: a refused address is told in Chinese and
    nothing is stored; an accepted one shows its signing secret once, is listed, and carries a
    channel."""
    district = org.district_ids[JIANGAN]
    with api_server(settings) as base:
        c = _console(browser, base, "jiangan-supervisor", "notifications")
        c.page.wait_for_selector("#webhook-list td.empty:text('尚未登记 Webhook 接收端。')")
        c.page.click("#webhook-add")
        _fill_dialog(c, {"name": "江岸区短信网关", "url": "ftp://sms.example.org/hook",
                         "unit": str(district)})
        toast = c.page.locator(".toast-error")
        toast.wait_for()
        assert toast.inner_text() == "Webhook 地址不可用。\nwebhook refused: not an absolute http(s) URL"
        assert db.execute("SELECT count(*) FROM webhook_endpoints").fetchone() == (0,)
        c.shot("notifications-webhook-refused")
        toast.wait_for(state="detached", timeout=15_000)  # read, and gone by itself

        c.page.click("#webhook-add")
        c.page.wait_for_selector("dialog.dialog[open] input[name=url]")
        c.page.fill("dialog.dialog input[name=name]", "江岸区短信网关")
        c.page.fill("dialog.dialog input[name=url]", "http://127.0.0.1:9/sms")
        c.page.select_option("dialog.dialog select[name=unit]", str(district))
        c.page.click("dialog.dialog button[type=submit]")
        # The signing secret, shown this once, is the stored one.
        shown = c.page.locator("dialog.dialog[open] input[name=secret]")
        shown.wait_for()
        (hook_id, unit, url, secret, active) = db.execute(
            "SELECT id, org_unit_id, url, secret, active FROM webhook_endpoints").fetchone()
        assert (unit, url, active) == (district, "http://127.0.0.1:9/sms", True)
        assert shown.input_value() == secret and secret.startswith("whsec_")
        assert "签名密钥只显示这一次" in c.page.inner_text("dialog.dialog[open] h2")
        c.page.click("dialog.dialog[open] button[type=submit]")
        c.page.wait_for_selector("dialog.dialog", state="detached")
        row = c.page.locator("#webhook-list tbody tr", has_text="江岸区短信网关")
        row.wait_for()
        assert "http://127.0.0.1:9/sms" in row.inner_text() and "江岸区司法局" in row.inner_text()
        assert "启用" in row.inner_text()
        assert db.execute("""SELECT a.action, a.target, a.detail->>'url' FROM audit_log a
                              JOIN staff s ON s.id = a.staff_id
                             WHERE s.username = 'jiangan-supervisor' AND a.action LIKE 'webhook.%%'
                          """).fetchall() == [("webhook.create", f"webhook:{hook_id}",
                                               "http://127.0.0.1:9/sms")]
        # The receiver is offered for one's own channel (an SMS number through the gateway).
        c.page.click("#channel-add")
        _fill_dialog(c, {"channel": "webhook", "address": "+8613800000002",
                         "webhook_id": str(hook_id), "min_severity": "high"})
        c.page.wait_for_selector("#channel-list td:has-text('+8613800000002')")
        assert "江岸区短信网关" in c.page.inner_text("#channel-list tbody tr")
        assert db.execute("SELECT channel, address, webhook_id, min_severity FROM staff_channels"
                          ).fetchall() == [("webhook", "+8613800000002", hook_id, "high")]
        c.shot("notifications-webhook")
        refused = "Failed to load resource: the server responded with a status of 400"
        assert [p for p in c.problems if refused not in p] == []
        assert len(c.problems) == 1  # the one refusal, nothing else


def _permit(base: str, h: dict[str, str], org: Org, dest: int, start: datetime, days: float,
            reason: str, details: str) -> int:
    r = httpx.post(f"{base}{API}/supervisees/{org.supervisee_id}/permits", headers=h, json={
        "reason": reason, "destination_zone_id": dest, "start_at": start.isoformat(),
        "end_at": (start + timedelta(days=days)).isoformat(), "details": details})
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def _tab(c: Console, name: str) -> list[int]:
    """The permits the tab lists, by id (after the list has been redrawn)."""
    c.page.click(f"#permit-filter [data-value={name}]")
    c.page.wait_for_selector(f"#permit-filter [data-value={name}].on")
    return [int(x) for x in c.page.locator("#permit-table tr[data-permit-id]").evaluate_all(
        "rows => rows.map(r => r.dataset.permitId)")]


def _local(d: datetime) -> str:
    """A datetime-local input's value in the console's time zone (Asia/Shanghai)."""
    return d.astimezone(timezone(timedelta(hours=8))).strftime("%Y-%m-%dT%H:%M")


def test_permits_reject_amend_revoke_and_the_trips_under_way_and_overdue(
        settings: Settings, org: Org, db: psycopg.Connection, browser: Browser):
    """The office's permits screen: the 'under way' and 'overdue returns' tabs list the right
    trips (an amended trip waiting for its decision is still under way on its approved span);
    an officer rejects a request, amends one (now 10 days: back to the district for a decision)
    and revokes a trip under way; each is in the database, the permit's history and the audit log."""
    with api_server(settings) as base:
        admin, officer = _headers(base, "admin"), _headers(base, "jiangan-officer")
        dest = httpx.post(f"{base}{API}/zones", headers=admin, json={
            "name": "汉阳医院片区", "kind": "destination", "crs": "gcj02", "owner_unit_id": org.city_id,
            "geometry": {"type": "Polygon", "coordinates": [[
                [114.20, 30.53], [114.24, 30.53], [114.24, 30.56], [114.20, 30.56], [114.20, 30.53]]]}}
        ).json()["id"]
        now = datetime.now(UTC).replace(second=0, microsecond=0)
        overdue = _permit(base, officer, org, dest, now + timedelta(days=40), 3, "family", "探望病重母亲")
        underway = _permit(base, officer, org, dest, now - timedelta(days=1), 3, "medical", "复查")
        for pid in (overdue, underway):
            r = httpx.post(f"{base}{API}/permits/{pid}/approve", headers=officer, json={"note": "同意"})
            assert r.status_code == 200, r.text
        # The family visit was five days ago and ended two days ago: no return check-in since.
        db.execute("""UPDATE travel_permits SET start_at = now() - interval '5 days',
                      end_at = now() - interval '2 days', approved_end_at = now() - interval '2 days'
                      WHERE id = %s""", (overdue,))
        rejected = _permit(base, officer, org, dest, now + timedelta(days=4), 3, "work", "外地培训")
        amended = _permit(base, officer, org, dest, now + timedelta(days=10), 3, "litigation", "出庭")

        c = _console(browser, base, "jiangan-officer", "permits")
        c.page.wait_for_selector("#permit-table tr[data-permit-id]")
        assert sorted(_tab(c, "inbox")) == sorted([rejected, amended])
        assert _tab(c, "underway") == [underway]
        assert _tab(c, "overdue") == [overdue]
        assert "逾期未归" in c.page.inner_text(f"#permit-table tr[data-permit-id='{overdue}']")
        c.shot("permits-overdue")

        # Reject, with the reason.
        _tab(c, "inbox")
        c.page.click(f"#permit-table tr[data-permit-id='{rejected}']")
        c.page.wait_for_selector(f"#permit-detail h2:has-text('#{rejected}')")
        c.page.click("#permit-reject")
        _fill_dialog(c, {"note": "培训可线上参加，不予批准"})
        c.page.wait_for_selector(".permit-history li:has-text('不予批准')")
        assert "未批准" in c.page.inner_text("#permit-detail .alert-head")
        assert "培训可线上参加" in c.page.inner_text(".permit-history")

        # Amend: ten days now, which the district bureau decides after the office's opinion.
        c.page.click(f"#permit-table tr[data-permit-id='{amended}']")
        c.page.wait_for_selector(f"#permit-detail h2:has-text('#{amended}')")
        c.page.click("#permit-amend")
        new_end = now + timedelta(days=20)
        _fill_dialog(c, {"end": _local(new_end), "note": "庭审延期，需多留一周"})
        c.page.wait_for_selector(".permit-history li:has-text('变更')")
        facts = c.page.inner_text("#permit-detail .facts")
        assert "区司法局" in facts and new_end.astimezone(timezone(timedelta(hours=8))).strftime(
            "%Y-%m-%d %H:%M") in facts
        assert c.page.locator("#permit-approve").count() == 0  # the district decides now
        c.page.wait_for_selector("#permit-opinion")

        # A trip under way, extended: still under way (on its approved span) while it waits.
        _tab(c, "underway")
        c.page.click(f"#permit-table tr[data-permit-id='{underway}']")
        # Its own detail first: the amend button of the permit shown before would amend that one.
        c.page.wait_for_selector(f"#permit-detail h2:has-text('#{underway}')")
        c.page.click("#permit-amend")
        _fill_dialog(c, {"end": _local(now + timedelta(days=3)), "note": "医生要求多观察一天"})
        c.page.wait_for_selector(".permit-history li:has-text('变更')")
        assert _tab(c, "underway") == [underway]
        assert underway in _tab(c, "inbox")
        c.page.click(f"#permit-table tr[data-permit-id='{underway}']")
        c.page.wait_for_selector(f"#permit-detail h2:has-text('#{underway}')")
        c.page.click("#permit-approve")
        _fill_dialog(c, {"note": "同意延长一天"})
        c.page.wait_for_selector(".permit-history li:has-text('批准') >> nth=1")
        assert _tab(c, "underway") == [underway]
        c.shot("permits-underway")

        # Revoke the trip under way: it is no longer under way.
        c.page.click(f"#permit-table tr[data-permit-id='{underway}']")
        c.page.wait_for_selector(f"#permit-detail h2:has-text('#{underway}')")
        c.page.click("#permit-revoke")
        _fill_dialog(c, {"note": "本人已提前返回，撤销外出"})
        c.page.wait_for_selector(".permit-history li:has-text('撤销')")
        assert "已撤销" in c.page.inner_text("#permit-detail .alert-head")
        assert _tab(c, "underway") == []
        c.page.click("#permit-filter [data-value=all]")
        c.page.click(f"#permit-table tr[data-permit-id='{underway}']")
        c.page.wait_for_selector(".permit-history li:has-text('撤销')")
        c.shot("permits-revoked")

        rows = {pid: row for pid, *row in db.execute(
            """SELECT id, status, required_tier, decision_note, end_at, approved_end_at
                 FROM travel_permits""")}
        assert rows[rejected][:3] == ["rejected", "office", "培训可线上参加，不予批准"]
        assert rows[amended][:2] == ["requested", "district"]
        assert rows[amended][2] is None and rows[amended][3] == new_end
        assert rows[amended][4] is None  # never approved: nothing in force meanwhile
        assert rows[underway][:3] == ["revoked", "office", "本人已提前返回，撤销外出"]
        assert rows[underway][3] == rows[underway][4] == now + timedelta(days=3)
        events = {pid: [a for (a,) in db.execute(
            "SELECT action FROM permit_events WHERE permit_id = %s ORDER BY id", (pid,))]
            for pid in (rejected, amended, underway)}
        assert events == {rejected: ["requested", "rejected"], amended: ["requested", "amended"],
                          underway: ["requested", "approved", "amended", "approved", "revoked"]}
        audit = db.execute(
            """SELECT a.action, a.target FROM audit_log a JOIN staff s ON s.id = a.staff_id
                WHERE s.username = 'jiangan-officer' AND a.action IN
                      ('permit.reject', 'permit.amend', 'permit.revoke') ORDER BY a.id""").fetchall()
        assert audit == [("permit.reject", f"permit:{rejected}"), ("permit.amend", f"permit:{amended}"),
                         ("permit.amend", f"permit:{underway}"), ("permit.revoke", f"permit:{underway}")]
        assert c.problems == []


def test_an_officer_draws_a_circle_zone_by_its_centre_and_radius(
        settings: Settings, org: Org, db: psycopg.Connection, browser: Browser):
    with api_server(settings) as base:
        c = _console(browser, base, "jiangan-officer", "zones")
        px = MapPixels(c, db, org.zone_ids[JIANGAN])
        lon, lat = _home_point()
        c.page.click("#draw-circle")
        c.page.wait_for_selector("#circle-radius")
        assert "点击圆心" in c.page.inner_text("#zone-draw .hint")
        x, y = px(lon, lat)
        c.page.mouse.click(x, y)
        c.page.locator("#zones-map path.draft-shape").wait_for()
        c.page.fill("#circle-radius", "500")
        c.page.fill("#zone-name", "禁止区域：某酒吧半径 500 米")
        c.page.select_option("#zone-kind", "exclusion")
        c.page.wait_for_timeout(100)
        c.shot("zones-circle")
        c.page.click("#zone-save")
        c.page.wait_for_selector("#zone-list td:has-text('禁止区域：某酒吧半径 500 米')")
        c.page.wait_for_selector(".toast:has-text('区域已保存')")
        zone_id, kind, owner, crs, drawn, clon, clat, area, reach, n = db.execute(
            """SELECT id, kind, owner_unit_id, crs, source_geojson, ST_X(ST_Centroid(geom)),
                      ST_Y(ST_Centroid(geom)), ST_Area(geom::geography),
                      ST_MaxDistance(geom, ST_Centroid(geom)), ST_NPoints(geom)
                 FROM zones WHERE name = '禁止区域：某酒吧半径 500 米'""").fetchone()
        assert (kind, owner, crs) == ("exclusion", org.office_ids[JIANGAN], "wgs84")
        assert drawn["type"] == "Point" and drawn["radius_m"] == 500
        # The centre is where the officer clicked (two pixels ≈ 60 m here), as drawn and as stored.
        tol = 2.5 * (px.e - px.w) / px.box["width"]
        assert abs(drawn["coordinates"][0] - lon) < tol and abs(drawn["coordinates"][1] - lat) < tol
        assert abs(clon - drawn["coordinates"][0]) < 1e-6 and abs(clat - drawn["coordinates"][1]) < 1e-6
        # A 128-gon of radius 500 m: its area is π·500² to within 0.1 %, its vertices 500 m out.
        assert n == 129 and area == pytest.approx(math.pi * 500 ** 2, rel=1e-3)
        metres = db.execute("""SELECT max(ST_Distance(ST_SetSRID(ST_MakePoint(%s, %s), 4326)::geography,
                                                       (d).geom::geography))
                                 FROM (SELECT ST_DumpPoints(geom) AS d FROM zones WHERE id = %s) v""",
                            (drawn["coordinates"][0], drawn["coordinates"][1], zone_id)).fetchone()[0]
        assert metres == pytest.approx(500, abs=1) and reach > 0
        c.page.wait_for_selector(f"path.zone-id-{zone_id}")
        assert db.execute("SELECT count(*) FROM audit_log WHERE action = 'zone.create' AND target = %s",
                          (f"zone:{zone_id}",)).fetchone() == (1,)
        c.shot("zones-circle-saved")
        assert c.problems == []


def _upload(c: Console, tmp_path, name: str, obj: dict) -> None:  # type: ignore[no-untyped-def]
    import json

    path = tmp_path / name
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    c.page.wait_for_selector("#zone-file", state="attached")
    c.page.set_input_files("#zone-file", str(path))


def test_an_uploaded_file_with_a_self_intersecting_polygon_is_refused_where_it_crosses(
        settings: Settings, org: Org, db: psycopg.Connection, browser: Browser, tmp_path):
    """A file of two polygons, the second a bow tie: the engine's refusal names the polygon, the
    console marks the crossing on the map and names the file's edges that cross there."""
    with api_server(settings) as base:
        c = _console(browser, base, "jiangan-officer", "zones")
        c.page.wait_for_selector("#zone-list td")
        lon, lat = _home_point()
        d = 0.004
        square = [[lon - 3 * d, lat - d], [lon - d, lat - d], [lon - d, lat + d], [lon - 3 * d, lat + d],
                  [lon - 3 * d, lat - d]]
        # A B C D: A→B and C→D are the diagonals of the box [lon+d, lon+3d] × [lat-d, lat+d].
        bow = [[lon + d, lat - d], [lon + 3 * d, lat + d], [lon + 3 * d, lat - d], [lon + d, lat + d],
               [lon + d, lat - d]]
        _upload(c, tmp_path, "两处网吧.geojson", {"type": "FeatureCollection", "features": [{
            "type": "Feature", "properties": {"name": "两处网吧"},
            "geometry": {"type": "MultiPolygon", "coordinates": [[square], [bow]]}}]})
        c.page.wait_for_selector("#zone-draw .hint:has-text('两处网吧.geojson')")
        c.page.select_option("#file-crs", "wgs84")
        c.page.fill("#zone-name", "禁止区域：两处网吧")
        c.page.click("#zone-save")
        err = c.page.locator("#zone-error")
        err.wait_for()
        assert "Self-intersection" in err.inner_text() and "polygon 1" in err.inner_text()
        where = c.page.inner_text("#zone-error-where")
        assert where.endswith("文件中第 2 个多边形，第 1–2 边与第 3–4 边相交"), where
        # The red cross is at the bow tie's crossing, the centre of its box.
        c.page.wait_for_timeout(300)
        mark = c.page.locator("#zones-map .error-mark").bounding_box()
        drawn = c.page.locator("#zones-map path.draft-shape").bounding_box()
        assert mark is not None and drawn is not None
        mx, my = mark["x"] + mark["width"] / 2, mark["y"] + mark["height"] / 2
        # The draft spans lon-3d..lon+3d: the bow tie's centre (lon+2d) is 5/6 across, half down.
        assert abs(mx - (drawn["x"] + 5 / 6 * drawn["width"])) < 4, (mx, drawn)
        assert abs(my - (drawn["y"] + 0.5 * drawn["height"])) < 4, (my, drawn)
        assert db.execute("SELECT count(*) FROM zones WHERE name = '禁止区域：两处网吧'").fetchone() == (0,)
        c.shot("zones-upload-invalid")
        assert [p for p in c.problems if REFUSED_ZONE not in p] == [] and len(c.problems) == 1


def test_an_uploaded_file_in_an_unsupported_coordinate_system_is_refused_at_the_file(
        settings: Settings, org: Org, db: psycopg.Connection, browser: Browser, tmp_path):
    """Web Mercator metres (EPSG:3857) are not longitudes and latitudes: the console says so at
    the file, draws nothing and sends nothing; a file that declares WGS-84 is read as WGS-84."""
    with api_server(settings) as base:
        c = _console(browser, base, "jiangan-officer", "zones")
        c.page.wait_for_selector("#zone-list td")
        x, y = 12_724_000.0, 3_582_000.0  # Hankou in Web Mercator metres
        ring = [[x, y], [x + 500, y], [x + 500, y + 500], [x, y + 500], [x, y]]
        _upload(c, tmp_path, "mercator.geojson", {
            "type": "FeatureCollection",
            "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::3857"}},
            "features": [{"type": "Feature", "properties": {},
                          "geometry": {"type": "Polygon", "coordinates": [ring]}}]})
        err = c.page.locator("#zone-draw .form-error")
        err.wait_for()
        assert "EPSG::3857" in err.inner_text() and "不支持" in err.inner_text()
        assert c.page.locator("#zone-save").count() == 0
        assert c.page.locator("#zones-map path.draft-shape").count() == 0
        c.shot("zones-upload-crs")
        assert db.execute("SELECT count(*) FROM zones").fetchone() == (len(org.zone_ids),)

        # Declared WGS-84 (the GeoJSON 2008 name of it): read as such, whatever the map uses.
        c.page.click("#draw-cancel")
        lon, lat = _home_point()
        d = 0.003
        square = [[lon - d, lat - d], [lon + d, lat - d], [lon + d, lat + d], [lon - d, lat + d],
                  [lon - d, lat - d]]
        _upload(c, tmp_path, "wgs84.geojson", {
            "type": "Feature", "crs": {"type": "name", "properties": {
                "name": "urn:ogc:def:crs:OGC:1.3:CRS84"}},
            "properties": {}, "geometry": {"type": "Polygon", "coordinates": [square]}})
        c.page.wait_for_selector("#zone-name")
        assert c.page.input_value("#file-crs") == "wgs84"
        assert c.page.locator("#zone-draw .form-error").inner_text() == ""
        c.page.fill("#zone-name", "禁止区域：文件导入")
        c.page.click("#zone-save")
        c.page.wait_for_selector("#zone-list td:has-text('禁止区域：文件导入')")
        assert db.execute("SELECT crs FROM zones WHERE name = '禁止区域：文件导入'").fetchone() == ("wgs84",)
        assert c.problems == []
