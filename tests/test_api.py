"""The staff and phone API on the real database and Redis."""

from __future__ import annotations

import base64
import math
import re
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from fastapi.testclient import TestClient

from tests.conftest import JIANGAN, JIANGHAN, Org, login
from tests.geo import deep_inside

API = "/api/v1"


def enrol(client: TestClient, headers: dict[str, str], supervisee_id: int) -> dict:
    r = client.post(f"{API}/supervisees/{supervisee_id}/devices", json={"label": "phone"},
                    headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


def basic(device_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{device_id}:{secret}".encode()).decode()}


def owntracks(lonlat: tuple[float, float], tst: float, acc: float = 10) -> dict:
    # OwnTracks reports WGS-84; the test points are GCJ-02, close enough for "deep inside".
    return {"_type": "location", "lat": lonlat[1], "lon": lonlat[0], "tst": int(tst), "acc": acc}


def test_login_with_wrong_password_is_refused_and_audited(client, org, db):
    r = client.post(f"{API}/auth/token", data={"username": "admin", "password": "nope"})
    assert r.status_code == 401
    assert db.execute("SELECT action FROM audit_log").fetchall() == [("auth.login_failed",)]


def test_requests_without_a_token_are_refused(client, org):
    assert client.get(f"{API}/supervisees").status_code == 401
    r = client.get(f"{API}/supervisees", headers={"Authorization": "Bearer forged"})
    assert (r.status_code, r.json()["error"]) == (401, "unauthorized")


def test_logout_revokes_the_token_at_once(client, org):
    h = login(client, "jiangan-officer")
    assert client.get(f"{API}/auth/me", headers=h).json()["username"] == "jiangan-officer"
    assert client.post(f"{API}/auth/logout", headers=h).status_code == 204
    assert client.get(f"{API}/auth/me", headers=h).status_code == 401


def test_officer_sees_only_their_own_office(client, org: Org):
    h = login(client, "jiangan-officer")
    ids = [s["id"] for s in client.get(f"{API}/supervisees", headers=h).json()]
    assert ids == [org.supervisee_id]
    # Another office's supervisee looks exactly like a missing one.
    assert client.get(f"{API}/supervisees/{org.other_supervisee_id}", headers=h).status_code == 404
    units = {u["id"] for u in client.get(f"{API}/org/units", headers=h).json()}
    assert units == {org.office_ids[JIANGAN]}


def test_district_supervisor_and_city_admin_see_their_subtrees(client, org: Org):
    sup = login(client, "jianghan-supervisor")
    ids = [s["id"] for s in client.get(f"{API}/supervisees", headers=sup).json()]
    assert ids == [org.other_supervisee_id]
    admin = login(client, "admin")
    ids = sorted(s["id"] for s in client.get(f"{API}/supervisees", headers=admin).json())
    assert ids == sorted([org.supervisee_id, org.other_supervisee_id])


def test_create_supervisee_only_in_an_office_of_ones_jurisdiction(client, org: Org):
    h = login(client, "jiangan-officer")
    body = {"office_id": org.office_ids[JIANGAN], "full_name": "Li Si", "case_number": "C-1",
            "supervision_type": "parole", "level": "strict", "home_zone_id": org.zone_ids[JIANGAN]}
    r = client.post(f"{API}/supervisees", json=body, headers=h)
    assert r.status_code == 201, r.text
    assert (r.json()["level"], r.json()["home_zone_id"]) == ("strict", org.zone_ids[JIANGAN])
    again = client.post(f"{API}/supervisees", json=body, headers=h)
    assert again.status_code == 409
    other = {**body, "case_number": "C-2", "office_id": org.office_ids[JIANGHAN]}
    assert client.post(f"{API}/supervisees", json=other, headers=h).status_code == 404
    admin = login(client, "admin")
    at_bureau = {**body, "case_number": "C-3", "office_id": org.district_ids[JIANGAN]}
    assert client.post(f"{API}/supervisees", json=at_bureau, headers=admin).status_code == 422
    bad_type = {**body, "case_number": "C-4", "supervision_type": "holiday"}
    assert client.post(f"{API}/supervisees", json=bad_type, headers=h).status_code == 422


SQUARE_GCJ = {"type": "Polygon", "coordinates": [[[114.30, 30.60], [114.31, 30.60],
                                                   [114.31, 30.61], [114.30, 30.61],
                                                   [114.30, 30.60]]]}


def test_zone_drawn_in_gcj02_is_stored_in_wgs84_and_kept_as_drawn(client, org: Org):
    h = login(client, "jiangan-supervisor")
    r = client.post(f"{API}/zones", headers=h, json={
        "name": "victim's street", "kind": "exclusion", "crs": "gcj02",
        "owner_unit_id": org.district_ids[JIANGAN], "geometry": SQUARE_GCJ})
    assert r.status_code == 201, r.text
    f = r.json()
    assert f["properties"]["drawn_geometry"] == SQUARE_GCJ
    lon0, lat0 = f["geometry"]["coordinates"][0][0][0]
    # GCJ-02 is offset from WGS-84 by a few hundred metres (mostly eastward) in Wuhan.
    offset_m = math.hypot((114.30 - lon0) * 95_900, (30.60 - lat0) * 110_900)
    assert 300 < offset_m < 900 and lon0 < 114.30


@pytest.mark.parametrize(
    ("geometry", "code"),
    [
        ({"type": "Polygon", "coordinates": [[[114.30, 30.60], [114.31, 30.61], [114.31, 30.60],
                                             [114.30, 30.61], [114.30, 30.60]]]},
         "invalid_zone.invalid_geometry"),  # a bow tie: self-intersection
        ({"type": "Polygon", "coordinates": [[[114.30, 30.60], [114.31, 30.60], [114.31, 30.61],
                                             [114.30, 30.61]]]}, "invalid_zone.open_ring"),
        ({"type": "Polygon", "coordinates": [[[114.30, 30.60], [114.31, 30.60],
                                             [114.30, 30.60]]]}, "invalid_zone.too_few_points"),
        ({"type": "Polygon", "coordinates": [[[70, 10], [140, 10], [140, 55], [70, 55],
                                             [70, 10]]]}, "invalid_zone.absurd_size"),
        ({"type": "Point", "coordinates": [114.3, 30.6]}, "invalid_zone.bad_type"),
    ],
)
def test_invalid_zone_is_refused_not_repaired(client, org: Org, geometry, code):
    h = login(client, "jiangan-supervisor")
    r = client.post(f"{API}/zones", headers=h, json={
        "name": "z", "kind": "exclusion", "owner_unit_id": org.district_ids[JIANGAN],
        "geometry": geometry})
    assert (r.status_code, r.json()["error"]) == (422, code)


def test_home_area_must_be_a_visible_home_area_zone(client, org: Org):
    h = login(client, "jiangan-officer")
    ok = client.put(f"{API}/supervisees/{org.supervisee_id}/home-area", headers=h,
                    json={"zone_id": org.zone_ids[JIANGAN]})
    assert ok.status_code == 200
    # Jianghan's boundary belongs to another district bureau: not usable here.
    other = client.put(f"{API}/supervisees/{org.supervisee_id}/home-area", headers=h,
                       json={"zone_id": org.zone_ids[JIANGHAN]})
    assert other.status_code == 404


def test_enrolment_returns_credentials_once_and_stores_only_a_hash(client, org: Org, db):
    h = login(client, "jiangan-officer")
    cred = enrol(client, h, org.supervisee_id)
    assert cred["mqtt"]["location_topic"].endswith(f"devices/{cred['device_id']}/location")
    assert cred["http"]["traccar_client_url"].endswith("/api/v1/ingest/osmand/" + cred["secret"])
    stored = db.execute("SELECT secret_hash FROM devices").fetchone()[0]
    assert cred["secret"] not in stored
    listed = client.get(f"{API}/supervisees/{org.supervisee_id}/devices", headers=h).json()
    assert [d["id"] for d in listed] == [cred["device_id"]]
    assert "secret" not in listed[0] and "secret_hash" not in listed[0]
    other = client.post(f"{API}/supervisees/{org.other_supervisee_id}/devices", json={},
                        headers=h)
    assert other.status_code == 404


def test_owntracks_http_stores_fix_and_answers_with_a_list(client, org: Org, db):
    cred = enrol(client, login(client, "jiangan-officer"), org.supervisee_id)
    r = client.post(f"{API}/ingest/owntracks", headers=basic(cred["device_id"], cred["secret"]),
                    json=owntracks(deep_inside(JIANGAN), time.time() - 5))
    assert (r.status_code, r.json()) == (200, [])
    assert db.execute("SELECT device_id, source FROM positions").fetchall() == [
        (cred["device_id"], "owntracks_http")]


def test_owntracks_http_with_wrong_secret_is_refused_and_dead_lettered(client, org: Org, db):
    cred = enrol(client, login(client, "jiangan-officer"), org.supervisee_id)
    r = client.post(f"{API}/ingest/owntracks", headers=basic(cred["device_id"], "guess"),
                    json=owntracks(deep_inside(JIANGAN), time.time()))
    assert r.status_code == 401
    assert db.execute("SELECT reason, source FROM dead_letters").fetchall() == [
        ("unknown_device", "owntracks_http")]
    assert db.execute("SELECT count(*) FROM positions").fetchone() == (0,)


def test_traccar_client_query_form_with_secret_in_path(client, org: Org, db):
    cred = enrol(client, login(client, "jiangan-officer"), org.supervisee_id)
    lon, lat = deep_inside(JIANGAN)
    params = {"id": cred["device_id"], "lat": lat, "lon": lon, "timestamp": int(time.time()),
              "accuracy": 8, "speed": 2, "batt": 77}
    r = client.post(f"{API}/ingest/osmand/{cred['secret']}", params=params)
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 1, "duplicates": 0}
    row = db.execute("SELECT source, battery, accuracy FROM positions").fetchone()
    assert row == ("osmand_http", 77.0, 8.0)


def test_traccar_client_json_body(client, org: Org, db):
    cred = enrol(client, login(client, "jiangan-officer"), org.supervisee_id)
    lon, lat = deep_inside(JIANGAN)
    body = {"device_id": cred["device_id"], "location": {
        "timestamp": datetime.now(UTC).isoformat(), "is_moving": False,
        "coords": {"latitude": lat, "longitude": lon, "accuracy": 12, "speed": 0, "heading": -1,
                   "altitude": 20},
        "battery": {"level": 0.5, "is_charging": False}}}
    r = client.post(f"{API}/ingest/osmand/{cred['secret']}", json=body)
    assert r.status_code == 200, r.text
    assert db.execute("SELECT accuracy, battery FROM positions").fetchone() == (12.0, 50.0)


def test_a_phone_cannot_speak_for_another_device(client, org: Org, db):
    h = login(client, "jiangan-officer")
    mine, other = enrol(client, h, org.supervisee_id), enrol(client, h, org.supervisee_id)
    lon, lat = deep_inside(JIANGAN)
    r = client.post(f"{API}/ingest/osmand/{mine['secret']}",
                    params={"id": other["device_id"], "lat": lat, "lon": lon,
                            "timestamp": int(time.time())})
    # Recorded (as a dead letter): answered 200 so that the app's queue moves on.
    assert (r.status_code, r.json()["dead_letter"]["reason"]) == (200, "device_mismatch")
    assert r.headers["x-ccs-dead-letter"] == "device_mismatch"
    assert db.execute("SELECT reason FROM dead_letters").fetchall() == [("device_mismatch",)]
    bad = client.post(f"{API}/ingest/osmand/not-a-secret", params={"id": "x", "lat": 1, "lon": 1})
    assert bad.status_code == 401


def test_oversized_http_body_is_kept_truncated_as_a_dead_letter(client, org: Org, db):
    cred = enrol(client, login(client, "jiangan-officer"), org.supervisee_id)
    body = b"[" + b" " * (100 * 1024) + b"]"
    r = client.post(f"{API}/ingest/owntracks", headers=basic(cred["device_id"], cred["secret"]),
                    content=body)
    # Like an oversized MQTT payload: the first max_payload_bytes kept with the full size, and
    # answered 200 (recorded) so that the app does not send it again and again.
    assert (r.status_code, r.json(), r.headers["x-ccs-dead-letter"]) == (200, [], "oversized")
    [(reason, device, raw, size, detail)] = db.execute(
        "SELECT reason, device_id, raw, raw_size, detail FROM dead_letters").fetchall()
    assert (reason, device, bytes(raw), size) == ("oversized", cred["device_id"],
                                                  body[:64 * 1024], len(body))
    assert f"{len(body)} bytes > limit 65536" in detail
    assert db.execute("SELECT count(*) FROM positions").fetchone() == (0,)


def test_location_reads_are_audited_with_purpose(client, org: Org, db: psycopg.Connection):
    h = login(client, "jiangan-officer")
    cred = enrol(client, h, org.supervisee_id)
    now = time.time()
    for k in range(3):
        client.post(f"{API}/ingest/owntracks", headers=basic(cred["device_id"], cred["secret"]),
                    json=owntracks(deep_inside(JIANGAN), now - 60 + k * 10))
    latest = client.get(f"{API}/supervisees/{org.supervisee_id}/position", headers=h,
                        params={"purpose": "home visit planning"})
    assert latest.status_code == 200
    assert latest.json()["properties"]["fix_time"].startswith(
        datetime.fromtimestamp(int(now - 40), UTC).isoformat()[:19])
    start = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    end = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    track = client.get(f"{API}/supervisees/{org.supervisee_id}/track", headers=h,
                       params={"from": start, "to": end, "purpose": "routine supervision"}).json()
    kinds = [f["geometry"]["type"] for f in track["features"]]
    assert kinds == ["LineString", "Point", "Point", "Point"]
    rows = db.execute("""SELECT action, purpose, target FROM audit_log
                         WHERE action LIKE 'location.%' ORDER BY id""").fetchall()
    assert rows == [
        ("location.read_latest", "home visit planning", f"supervisee:{org.supervisee_id}"),
        ("location.read_track", "routine supervision", f"supervisee:{org.supervisee_id}"),
    ]
    # Another office cannot read it, and the attempt reveals nothing.
    other = login(client, "jianghan-officer")
    assert client.get(f"{API}/supervisees/{org.supervisee_id}/position",
                      headers=other, params={"purpose": "curiosity"}).status_code == 404
    # No stated purpose, no read.
    assert client.get(f"{API}/supervisees/{org.supervisee_id}/position",
                      headers=h).status_code == 422


def test_alert_lifecycle_through_the_api(client, org: Org, db):
    h = login(client, "jiangan-officer")
    cred = enrol(client, h, org.supervisee_id)
    now = time.time()
    # Home, then (a realistic 20 minutes later) three fixes across the river.
    track = [(deep_inside(JIANGAN), now - 1500)] + [
        (deep_inside(JIANGHAN), now - 300 + k * 60) for k in range(3)]
    for p, t in track:
        client.post(f"{API}/ingest/owntracks", headers=basic(cred["device_id"], cred["secret"]),
                    json=owntracks(p, t))
    page = client.get(f"{API}/alerts", headers=h, params={"status": "open"}).json()
    assert page["total"] == 1
    alert = page["items"][0]
    assert (alert["kind"], alert["supervisee_id"]) == ("area_exit", org.supervisee_id)
    assert alert["reason"]["rule"].startswith("area_exit")
    assert alert["reason"]["zone_id"] == org.zone_ids[JIANGAN]
    # Another office neither lists nor touches it.
    other = login(client, "jianghan-officer")
    assert client.get(f"{API}/alerts", headers=other).json()["total"] == 0
    assert client.post(f"{API}/alerts/{alert['id']}/acknowledge", headers=other).status_code == 404
    ack = client.post(f"{API}/alerts/{alert['id']}/acknowledge", headers=h)
    assert (ack.status_code, ack.json()["status"]) == (200, "acknowledged")
    assert client.post(f"{API}/alerts/{alert['id']}/acknowledge", headers=h).status_code == 409
    assert client.post(f"{API}/alerts/{alert['id']}/resolve", headers=h,
                       json={"note": "", "disposition": "authorised"}).status_code == 422
    assert client.post(f"{API}/alerts/{alert['id']}/resolve", headers=h,
                       json={"note": "no disposition given"}).status_code == 422
    done = client.post(f"{API}/alerts/{alert['id']}/resolve", headers=h, json={
        "disposition": "authorised", "note": "called him; he was at hospital, permit to follow"})
    assert (done.json()["status"], done.json()["resolved_by"], done.json()["disposition"]) == (
        "resolved", org.staff["jiangan-officer"], "authorised")
    history = client.get(f"{API}/alerts/{alert['id']}/history", headers=h).json()
    assert [(e["action"], e["staff_id"]) for e in history] == [
        ("acknowledged", org.staff["jiangan-officer"]), ("resolved", org.staff["jiangan-officer"])]


def test_unacknowledged_alert_escalates_office_district_city_on_time(client, org: Org, db):
    from alerts.service import escalate_overdue

    db.execute("""INSERT INTO alerts (kind, severity, supervisee_id, office_id, opened_at)
                  VALUES ('area_exit', 'high', %s, %s, now())""",
               (org.supervisee_id, org.office_ids[JIANGAN]))
    deadline = db.execute("SELECT ack_deadline - opened_at FROM alerts").fetchone()[0]
    assert deadline == timedelta(minutes=15)  # high severity: a quarter of an hour
    now = time.time()
    assert escalate_overdue(db, now=now + 14 * 60) == 0
    assert escalate_overdue(db, now=now + 16 * 60) == 1
    assert escalate_overdue(db, now=now + 17 * 60) == 0  # the district gets its own 15 minutes
    assert escalate_overdue(db, now=now + 32 * 60) == 1
    assert escalate_overdue(db, now=now + 99 * 60) == 0  # the city bureau is the top
    level, = db.execute("SELECT escalation_level FROM alerts").fetchone()
    topics = [t for (t,) in db.execute("SELECT topic FROM outbox ORDER BY id")]
    assert (level, topics) == (2, ["alert.escalated", "alert.escalated"])
    h = login(client, "jiangan-supervisor")
    [alert] = client.get(f"{API}/alerts", headers=h).json()["items"]
    history = client.get(f"{API}/alerts/{alert['id']}/history", headers=h).json()
    assert [e["detail"]["to_level"] for e in history] == [1, 2]
    # An acknowledged alert stops climbing; escalating by hand beyond the city is refused.
    assert client.post(f"{API}/alerts/{alert['id']}/escalate", headers=h).status_code == 409


def test_dead_letters_are_visible_to_city_admin_only(client, org: Org):
    client.post(f"{API}/ingest/osmand/bogus", params={"id": "x"})
    assert client.get(f"{API}/dead-letters", headers=login(client, "jiangan-officer")).status_code == 403
    rows = client.get(f"{API}/dead-letters", headers=login(client, "admin")).json()
    assert [r["reason"] for r in rows] == ["unknown_device"]


def test_openapi_documents_every_route(client):
    spec = client.get("/openapi.json").json()
    paths = set(spec["paths"])
    for p in ("/api/v1/alerts/stream/live", "/api/v1/ingest/owntracks",
              "/api/v1/ingest/osmand/{secret}", "/api/v1/supervisees/{supervisee_id}/track"):
        assert p in paths


def test_suspended_notifications_still_record_the_alert_marked_suppressed(
        client, org: Org, db, rds, settings):
    from alerts.worker import feed_key, relay_once

    h = login(client, "jiangan-officer")
    now = datetime.now(UTC)
    r = client.post(f"{API}/supervisees/{org.supervisee_id}/suspensions", headers=h, json={
        "kind": "area_exit", "starts_at": (now - timedelta(minutes=1)).isoformat(),
        "ends_at": (now + timedelta(days=3)).isoformat(), "reason": "in hospital (Union Hospital)"})
    assert r.status_code == 201, r.text
    cred = enrol(client, h, org.supervisee_id)
    t = time.time()
    track = [(deep_inside(JIANGAN), t - 1500)] + [(deep_inside(JIANGHAN), t - 300 + k * 60)
                                                  for k in range(3)]
    for p, ts in track:
        client.post(f"{API}/ingest/owntracks", headers=basic(cred["device_id"], cred["secret"]),
                    json=owntracks(p, ts))
    [alert] = client.get(f"{API}/alerts", headers=h).json()["items"]
    assert (alert["kind"], alert["suppressed"]) == ("area_exit", True)
    with psycopg.connect(settings.psycopg_dsn) as conn:
        relay_once(conn, rds, settings)
    assert rds.xlen(feed_key(settings)) == 0  # recorded, not announced
    # Another kind is not suspended; a suspension elsewhere is refused.
    other = login(client, "jianghan-officer")
    assert client.post(f"{API}/supervisees/{org.supervisee_id}/suspensions", headers=other, json={
        "starts_at": now.isoformat(), "ends_at": (now + timedelta(hours=1)).isoformat(),
        "reason": "nope"}).status_code == 404
    bad = client.post(f"{API}/supervisees/{org.supervisee_id}/suspensions", headers=h, json={
        "kind": "holiday", "starts_at": now.isoformat(),
        "ends_at": (now + timedelta(hours=1)).isoformat(), "reason": "typo kind"})
    assert bad.status_code == 422


def test_prometheus_metrics_count_alerts_acknowledgements_and_time_to_acknowledge(client, org: Org,
                                                                                 db):
    db.execute("""INSERT INTO alerts (kind, severity, supervisee_id, office_id, opened_at)
                  VALUES ('area_exit', 'high', %s, %s, now() - interval '10 minutes')""",
               (org.supervisee_id, org.office_ids[JIANGAN]))
    h = login(client, "jiangan-officer")
    [alert] = client.get(f"{API}/alerts", headers=h).json()["items"]
    client.post(f"{API}/alerts/{alert['id']}/acknowledge", headers=h)
    text = client.get(f"{API}/metrics").text
    assert 'ccs_alerts_opened_total{kind="area_exit"} 1.0' in text
    assert "ccs_alerts_acknowledged_total 1.0" in text
    # Acknowledged ten minutes after opening: in the 15-minute bucket, not the 5-minute one.
    assert 'ccs_alert_time_to_acknowledge_seconds_bucket{le="300.0"} 0.0' in text
    assert 'ccs_alert_time_to_acknowledge_seconds_bucket{le="900.0"} 1.0' in text


def test_probes_and_the_audit_chain_metric(client, org: Org, db, settings):
    """/livez answers without touching anything; /readyz needs the database and Redis; the
    scheduler's recomputation of the audit chain shows in /metrics as ccs_audit_chain_ok, and a
    row edited behind the chain's back turns it to 0."""
    import redis as redis_lib

    from alerts.scheduler import verify_audit_chain

    assert client.get(f"{API}/livez").json() == {"status": "ok"}
    assert client.get(f"{API}/readyz").json() == {"status": "ok"}
    assert "ccs_audit_chain_ok" not in client.get(f"{API}/metrics").text  # not yet computed
    h = login(client, "jiangan-officer")
    client.get(f"{API}/supervisees/{org.supervisee_id}", headers=h)  # an audited read
    r = redis_lib.Redis.from_url(settings.redis_url)
    try:
        assert verify_audit_chain(db, r, settings) is True
        text = client.get(f"{API}/metrics").text
        assert "ccs_audit_chain_ok 1.0" in text
        rows = re.search(r"^ccs_audit_chain_rows (\S+)$", text, re.M)
        assert rows is not None and float(rows.group(1)) >= 1
        with db.transaction():
            db.execute("SET LOCAL session_replication_role = replica")
            db.execute("UPDATE audit_log SET purpose = 'rewritten' WHERE seq = 1")
        assert verify_audit_chain(db, r, settings) is False
        assert "ccs_audit_chain_ok 0.0" in client.get(f"{API}/metrics").text
    finally:
        r.delete(settings.redis_prefix + "audit:verified")
        r.close()
