"""The console's server side without a browser: cookie sign-in and CSRF, the page's security
headers, and the live feed (heartbeats, resumption with Last-Event-ID, one audit row a watch)."""

from __future__ import annotations

import contextlib
import queue
import re
import threading
import time

import httpx
import orjson
import psycopg
import pytest
import redis

from alerts.worker import feed_key
from store.settings import Settings
from tests.conftest import JIANGAN, JIANGHAN, PASSWORD, Org
from tests.services import api_server

CSRF = {"X-Requested-With": "ccs-console"}
BASE = 9_000_000  # alert ids of this module's feed entries


def _console(base: str, username: str) -> httpx.Client:
    c = httpx.Client(base_url=base, timeout=10)
    r = c.post("/api/v1/auth/console", data={"username": username, "password": PASSWORD},
               headers=CSRF)
    assert r.status_code == 200, r.text
    return c


def _sse(client: httpx.Client, url: str, headers: dict[str, str], out: queue.Queue,
         stop: threading.Event) -> None:
    """Every SSE line as it arrives, then ("closed", why)."""
    try:
        with client.stream("GET", url, headers=headers, timeout=None) as r:
            out.put(("status", r.status_code))
            for line in r.iter_lines():
                if stop.is_set():
                    return
                out.put(("line", line))
        out.put(("closed", "server ended the stream"))
    except httpx.HTTPError as e:
        out.put(("closed", repr(e)))


def _publish(r: redis.Redis, settings: Settings, office_id: int, alert_id: int,
             topic: str = "alert.opened") -> str:
    """An entry as the alert worker's relay writes it (alerts/worker.py)."""
    payload = {"alert_id": BASE + alert_id, "office_id": office_id, "kind": "area_exit",
               "severity": "high", "status": "open", "supervisee_id": 1}
    return r.xadd(feed_key(settings), {"outbox_id": alert_id, "topic": topic,
                                      "payload": orjson.dumps(payload)}).decode()


def _events(out: queue.Queue, n: int, timeout: float = 10) -> list[dict[str, str]]:
    """The next n events (id, event, data) of this module's alerts (ids from 9,000,000: other
    tests' workers share the session's stream), skipping comments."""
    got: list[dict[str, str]] = []
    ev: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while len(got) < n:
        kind, value = out.get(timeout=max(0.1, deadline - time.monotonic()))
        assert kind == "line", (kind, value)
        if value == "":
            if "data" in ev and orjson.loads(ev["data"]).get("alert_id", BASE) >= BASE:
                got.append(ev)
            ev = {}
        elif not value.startswith(":"):
            k, _, v = value.partition(": ")
            ev[k] = v
    return got


def _open(base: str, client: httpx.Client, watch: str, last_id: str | None = None
          ) -> tuple[queue.Queue, threading.Event]:
    out: queue.Queue = queue.Queue()
    stop = threading.Event()
    headers = {"Last-Event-ID": last_id} if last_id else {}
    threading.Thread(target=_sse, daemon=True, args=(
        client, f"/api/v1/alerts/stream/live?watch={watch}", headers, out, stop)).start()
    assert out.get(timeout=10) == ("status", 200)
    return out, stop


def test_console_session_is_an_httponly_strict_cookie_and_writes_need_the_csrf_header(
        settings: Settings, org: Org):
    with api_server(settings) as base:
        c = httpx.Client(base_url=base)
        # A cross-site form post (no console header) cannot sign anyone in.
        assert c.post("/api/v1/auth/console",
                      data={"username": "jiangan-officer", "password": PASSWORD}).status_code == 403
        r = c.post("/api/v1/auth/console", data={"username": "jiangan-officer",
                                                 "password": PASSWORD}, headers=CSRF)
        assert r.status_code == 200 and r.json()["username"] == "jiangan-officer"
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        assert "access_token" not in r.text  # nothing a script could steal is in the body
        assert c.get("/api/v1/auth/me").json()["username"] == "jiangan-officer"
        body = {"purpose": "duty"}
        # Without the header, or from another origin, a write with the cookie is refused.
        assert c.post("/api/v1/alerts/watch", json=body).status_code == 403
        assert c.post("/api/v1/alerts/watch", json=body,
                      headers={**CSRF, "Origin": "https://evil.example"}).status_code == 403
        assert c.post("/api/v1/alerts/watch", json=body,
                      headers={**CSRF, "Origin": base}).status_code == 200
        # Signing out ends the cookie's session on the server, not only in the browser.
        stolen = dict(c.cookies)
        assert c.post("/api/v1/auth/logout", headers=CSRF).status_code == 204
        assert httpx.get(f"{base}/api/v1/auth/me", cookies=stolen).status_code == 401


def test_console_page_runs_under_a_strict_policy_with_no_inline_code(settings: Settings):
    with api_server(settings) as base:
        r = httpx.get(f"{base}/")
        assert r.status_code == 200 and "text/html" in r.headers["content-type"]
        csp = dict((d.split()[0], d.split()[1:]) for d in r.headers["content-security-policy"].split("; "))
        assert csp["script-src"] == ["'self'"] and csp["style-src"] == ["'self'"]
        assert csp["frame-ancestors"] == ["'none'"] and csp["connect-src"] == ["'self'"]
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", r.text)  # every script is a file
        assert " style=" not in r.text and "http" not in r.text.split("<body>")[0].replace(
            'http-equiv', '')  # nothing loaded from another origin
        for src in re.findall(r'(?:src|href)="(/static/[^"]+)"', r.text):
            assert httpx.get(f"{base}{src}").status_code == 200, src
        # The vendored map library carries its licence.
        assert "BSD" in httpx.get(f"{base}/static/vendor/leaflet/LICENSE").text or \
            "Redistribution" in httpx.get(f"{base}/static/vendor/leaflet/LICENSE").text
        assert httpx.get(f"{base}/api/v1/healthz").headers["content-security-policy"].startswith(
            "default-src 'none'; frame-ancestors")


def test_idle_feed_stays_open_with_heartbeats_past_the_redis_socket_timeout(
        settings: Settings, org: Org, monkeypatch: pytest.MonkeyPatch):
    import api.routes.alerts as alerts_route

    monkeypatch.setattr(alerts_route, "HEARTBEAT_S", 1.0)
    with api_server(settings) as base:
        c = _console(base, "jiangan-officer")
        watch = c.post("/api/v1/alerts/watch", json={"purpose": "duty"}, headers=CSRF).json()["watch"]
        out, stop = _open(base, c, watch)
        lines: list[tuple[str, str]] = []
        deadline = time.monotonic() + 9  # the old feed closed after about 5 s
        while time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                lines.append(out.get(timeout=0.5))
        stop.set()
        assert not [x for x in lines if x[0] == "closed"], lines
        assert sum(1 for x in lines if x == ("line", ": keepalive")) >= 6


def test_a_reconnect_resumes_after_last_event_id_with_nothing_lost_and_no_new_audit_row(
        settings: Settings, org: Org, rds: redis.Redis, db: psycopg.Connection):
    mine, theirs = org.office_ids[JIANGAN], org.office_ids[JIANGHAN]
    with api_server(settings) as base:
        c = _console(base, "jiangan-officer")
        watch = c.post("/api/v1/alerts/watch", json={"purpose": "duty"}, headers=CSRF).json()["watch"]
        out, stop = _open(base, c, watch)
        first = _publish(rds, settings, mine, 101)
        (ev,) = _events(out, 1)
        assert (ev["id"], ev["event"], orjson.loads(ev["data"])["alert_id"]) == (
            first, "alert.opened", BASE + 101)
        stop.set()
        # While the console is away: two of its office's events and one of another district's.
        _publish(rds, settings, mine, 102, "alert.acknowledged")
        _publish(rds, settings, theirs, 900)
        _publish(rds, settings, mine, 103)
        out2, stop2 = _open(base, c, watch, last_id=first)
        got = _events(out2, 2)
        _publish(rds, settings, mine, 104)
        got += _events(out2, 1)
        stop2.set()
        assert [(e["event"], orjson.loads(e["data"])["alert_id"] - BASE) for e in got] == [
            ("alert.acknowledged", 102), ("alert.opened", 103), ("alert.opened", 104)]
        (n,) = db.execute("SELECT count(*) FROM audit_log WHERE action = 'alert.stream_subscribe'"
                          ).fetchone()
        assert n == 1  # one watch opened, two connections


def test_a_feed_resumed_after_trimmed_events_says_so(settings: Settings, org: Org,
                                                     rds: redis.Redis):
    with api_server(settings) as base:
        c = _console(base, "jiangan-officer")
        watch = c.post("/api/v1/alerts/watch", json={"purpose": "duty"}, headers=CSRF).json()["watch"]
        seen = _publish(rds, settings, org.office_ids[JIANGAN], 1)
        _publish(rds, settings, org.office_ids[JIANGAN], 2)
        _publish(rds, settings, org.office_ids[JIANGAN], 3)
        # The stream keeps only its newest entry: the one after `seen` was trimmed away.
        rds.xtrim(feed_key(settings), maxlen=1, approximate=False)
        out, stop = _open(base, c, watch, last_id=seen)
        (ev,) = _events(out, 1)
        stop.set()
        assert ev["event"] == "feed.reset"


def test_a_watch_belongs_to_its_sign_in(settings: Settings, org: Org):
    with api_server(settings) as base:
        a, b = _console(base, "jiangan-officer"), _console(base, "jiangan-officer")
        watch = a.post("/api/v1/alerts/watch", json={"purpose": "duty"}, headers=CSRF).json()["watch"]
        assert a.get(f"/api/v1/alerts/watch/{watch}").json()["open"] is True
        assert b.get(f"/api/v1/alerts/watch/{watch}").json() == {
            "watch": watch, "open": False, "expires_in": 0}
        assert b.get(f"/api/v1/duty?watch={watch}").status_code == 404
        assert b.get(f"/api/v1/alerts/stream/live?watch={watch}").status_code == 404


def test_open_feeds_hold_no_database_connection(settings: Settings, org: Org):
    """Each open console's feed must cost no pooled PostgreSQL connection: the pool has 10
    (+10 overflow), and a feed stays open all shift."""
    from store.db import get_engine

    feeds = 25
    with api_server(settings) as base:
        c = httpx.Client(base_url=base, timeout=10, limits=httpx.Limits(max_connections=feeds + 5))
        r = c.post("/api/v1/auth/console", data={"username": "jiangan-officer",
                                                   "password": PASSWORD}, headers=CSRF)
        assert r.status_code == 200, r.text
        watch = c.post("/api/v1/alerts/watch", json={"purpose": "duty"}, headers=CSRF).json()["watch"]
        stops = [_open(base, c, watch)[1] for _ in range(feeds)]
        try:
            pool = get_engine().pool
            assert pool.checkedout() <= 1, pool.status()  # type: ignore[attr-defined]
            # Every other request still gets a connection at once.
            started = time.monotonic()
            assert c.get("/api/v1/alerts").status_code == 200
            assert time.monotonic() - started < 5
        finally:
            for s in stops:
                s.set()


def test_tile_origins_name_every_subdomain_for_the_policy():
    from console import tile_origin

    assert tile_origin("") == ""
    assert tile_origin("https://tiles.example:8443/{z}/{x}/{y}.png") == "https://tiles.example:8443"
    assert tile_origin("https://webrd0{s}.is.autonavi.com/appmaptile?x={x}&y={y}&z={z}",
                       "1234") == " ".join(f"https://webrd0{i}.is.autonavi.com" for i in "1234")
    assert tile_origin("https://{s}.tile.openstreetmap.org/{z}/{x}/{y}.png") == (
        "https://a.tile.openstreetmap.org https://b.tile.openstreetmap.org "
        "https://c.tile.openstreetmap.org")


def test_the_duty_map_outlines_the_district_of_an_office_with_nobody_yet(
        client, org: Org, session):
    """An office with no supervisees still sees its district on the map (the shipped boundary),
    and an office whose people live in the district gets it once, as their home area."""
    from store.demo import create_staff, create_unit
    from store.enums import OrgKind, Role
    from store.models import OrgUnit
    from tests.conftest import login

    district = session.get(OrgUnit, org.district_ids[JIANGAN])
    empty = create_unit(session, district, OrgKind.JUDICIAL_OFFICE, "江岸新所")
    create_staff(session, empty, "new-office-officer", Role.OFFICER, PASSWORD)
    session.commit()
    got = client.get("/api/v1/duty", params={"purpose": "duty"},
                     headers=login(client, "new-office-officer")).json()
    assert got["supervisees"] == [] and got["zones"]["features"] == []
    (b,) = got["boundaries"]["features"]
    assert (b["id"], b["properties"]["adcode"]) == (org.zone_ids[JIANGAN], JIANGAN)
    assert b["geometry"]["type"] in ("Polygon", "MultiPolygon")
    full = client.get("/api/v1/duty", params={"purpose": "duty"},
                      headers=login(client, "jiangan-officer")).json()
    assert [z["id"] for z in full["zones"]["features"]] == [org.zone_ids[JIANGAN]]
    assert full["boundaries"]["features"] == []  # the home area already draws it


def test_the_overview_sums_offices_per_district(client, org: Org, session):
    from store.demo import create_unit
    from store.enums import OrgKind
    from store.models import OrgUnit, Supervisee
    from tests.conftest import login

    district = session.get(OrgUnit, org.district_ids[JIANGAN])
    second = create_unit(session, district, OrgKind.JUDICIAL_OFFICE, "江岸二所")
    for k in range(3):
        session.add(Supervisee(office_id=second.id, full_name=f"S{k}", case_number=f"T-2-{k}",
                               supervision_type="probation"))
    session.commit()
    got = client.get("/api/v1/duty/overview", headers=login(client, "admin")).json()
    by_district = {d["district_id"]: d for d in got["districts"]}
    assert set(by_district) == {org.district_ids[JIANGAN], org.district_ids[JIANGHAN]}
    jiangan = by_district[org.district_ids[JIANGAN]]
    assert sorted(jiangan["offices"]) == sorted([org.office_ids[JIANGAN], second.id])
    assert jiangan["supervisees"] == 4 and by_district[org.district_ids[JIANGHAN]]["supervisees"] == 1
    assert got["totals"]["supervisees"] == 5


STATES = ("inside", "outside", "silent", "undecidable", "travel")


def seed_duty_states(db: psycopg.Connection, org: Org) -> dict[str, int]:
    """One Jiang'an supervisee in each state of the duty map (api/routes/duty.py `state_of`),
    each with a last position from the last hour; returns state -> supervisee id."""
    from geofence.crs import point_to_wgs84
    from geofence.model import CRS
    from tests.geo import deep_inside, near_border

    office = org.office_ids[JIANGAN]
    hx, hy = deep_inside(JIANGAN)
    # (state, name, GCJ-02 position, membership of the last fix, open alert, on a permit)
    people = [
        ("inside", "张某某", (hx, hy), "inside", None, False),
        ("outside", "李某某", near_border(JIANGAN, JIANGHAN, 800), "outside", "area_exit", False),
        ("silent", "王某某", (hx + 0.012, hy - 0.008), "inside", "communication_failure", False),
        # The accuracy circle straddles the border: the fix decides nothing.
        ("undecidable", "赵某某", near_border(JIANGAN, JIANGHAN, -20), "border", None, False),
        ("travel", "刘某某", deep_inside(JIANGHAN), "outside", None, True),
    ]
    ids: dict[str, int] = {}
    for k, (state, name, (gx, gy), membership, alert, travelling) in enumerate(people):
        (sid,) = db.execute(
            """INSERT INTO supervisees (office_id, full_name, case_number, supervision_type,
                                        home_zone_id)
               VALUES (%s, %s, %s, 'probation', %s) RETURNING id""",
            (office, name, f"DS-{k + 1:03d}", org.zone_ids[JIANGAN])).fetchone()
        ids[state] = sid
        lon, lat = point_to_wgs84(gx, gy, CRS.GCJ02)
        age = "2 hours" if state == "silent" else f"{5 + k} minutes"
        db.execute(
            f"""INSERT INTO positions (device_id, supervisee_id, fix_time, received_at, lon, lat,
                                       raw_lon, raw_lat, crs, accuracy, provider, source,
                                       membership)
                VALUES (%s, %s, now() - interval '{age}', now() - interval '{age}', %s, %s, %s,
                        %s, 'gcj02', 25, 'gps', 'owntracks', %s)""",
            (f"dev-state-{k}", sid, lon, lat, gx, gy, membership))
        if alert:
            db.execute("""INSERT INTO alerts (kind, severity, supervisee_id, office_id, lon, lat)
                          VALUES (%s, 'high', %s, %s, %s, %s)""", (alert, sid, office, lon, lat))
        if travelling:
            db.execute(
                """INSERT INTO travel_permits (supervisee_id, office_id, reason, destination_zone_id,
                                               start_at, end_at, approved_end_at, status,
                                               required_tier, profile)
                   VALUES (%s, %s, 'medical', %s, now() - interval '1 day', now() + interval '2 days',
                           now() + interval '2 days', 'approved', 'office', 'test')""",
                (sid, office, org.zone_ids[JIANGHAN]))
    return ids


def test_duty_map_reports_each_of_the_five_states(settings: Settings, org: Org,
                                                  db: psycopg.Connection):
    ids = seed_duty_states(db, org)
    with api_server(settings) as base:
        c = _console(base, "jiangan-officer")
        r = c.get("/api/v1/duty", params={"purpose": "值班监控 duty"})
        assert r.status_code == 200, r.text
        people = {p["id"]: p for p in r.json()["supervisees"]}
        assert {state: people[sid]["state"] for state, sid in ids.items()} == {s: s for s in STATES}
        assert all(people[sid]["position"] is not None for sid in ids.values())
        assert people[ids["undecidable"]]["position"]["membership"] == "border"
        assert people[ids["silent"]]["alert_kinds"] == ["communication_failure"]
        # The fixture's own supervisee has no fix in three days: silent, without a position.
        assert people[org.supervisee_id]["state"] == "silent"
        assert people[org.supervisee_id]["position"] is None
        # Another district's officer sees none of them.
        other = _console(base, "jianghan-officer").get("/api/v1/duty", params={"purpose": "duty"})
        assert not set(ids.values()) & {p["id"] for p in other.json()["supervisees"]}
        (n,) = db.execute("SELECT count(*) FROM audit_log WHERE action = 'location.read_duty'"
                          ).fetchone()
        assert n == 2


def test_a_fix_whose_accuracy_circle_straddles_the_border_decides_nothing():
    """The engine's membership vocabulary is inside / outside / border / undecidable: only a fix
    wholly inside is "inside" on the duty map."""
    from api.routes.duty import state_of

    assert state_of("inside", [], False, True) == "inside"
    assert state_of("outside", [], False, True) == "outside"
    for membership in ("border", "undecidable", None):
        assert state_of(membership, [], False, True) == "undecidable", membership
    assert state_of("border", [], True, True) == "travel"
    assert state_of("inside", ["phone_off"], False, True) == "silent"
    assert state_of("inside", [], False, False) == "silent"
    assert state_of("inside", ["area_exit", "phone_off"], True, True) == "outside"
