"""Prohibition-order zones, curfews, circles and per-person thresholds through the API."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from geofence.crs import point_to_wgs84
from geofence.model import CRS
from tests.conftest import JIANGAN, Org, login
from tests.geo import deep_inside
from tests.test_api import API, basic, enrol, owntracks


def _exclusion_circle(client, h, org: Org, radius: float = 300.0) -> dict:
    lon, lat = deep_inside(JIANGAN)
    r = client.post(f"{API}/zones", headers=h, json={
        "name": "victim's home", "kind": "exclusion", "crs": "gcj02", "radius_m": radius,
        "owner_unit_id": org.district_ids[JIANGAN],
        "geometry": {"type": "Point", "coordinates": [lon, lat]}})
    assert r.status_code == 201, r.text
    return r.json()


def test_circle_zone_is_stored_as_a_polygon_and_kept_as_drawn(client, org: Org):
    h = login(client, "jiangan-supervisor")
    f = _exclusion_circle(client, h, org, radius=250)
    assert f["geometry"]["type"] == "MultiPolygon"
    assert f["properties"]["drawn_geometry"]["radius_m"] == 250
    bad = client.post(f"{API}/zones", headers=h, json={
        "name": "x", "kind": "exclusion", "radius_m": 1, "owner_unit_id": org.district_ids[JIANGAN],
        "geometry": {"type": "Point", "coordinates": [114.3, 30.6]}})
    assert (bad.status_code, bad.json()["error"]) == (422, "invalid_zone.absurd_size")


def test_entering_a_prohibited_zone_raises_an_explained_critical_alert(client, org: Org, db):
    zone = _exclusion_circle(client, login(client, "jiangan-supervisor"), org)
    h = login(client, "jiangan-officer")
    r = client.post(f"{API}/supervisees/{org.supervisee_id}/zones", headers=h,
                    json={"zone_id": zone["id"], "role": "exclusion", "buffer_m": 500})
    assert r.status_code == 201, r.text
    cred = enrol(client, h, org.supervisee_id)
    # The zone was drawn in GCJ-02; OwnTracks reports WGS-84: the same place in both systems.
    lon, lat = point_to_wgs84(*deep_inside(JIANGAN), CRS.GCJ02)
    now = time.time()
    track = [((lon, lat + 400 / 110_574), now - 600)]  # 100 m outside the circle: a warning
    track += [((lon, lat), now - 300 + k * 60) for k in range(3)]  # at the protected address
    for p, t in track:
        res = client.post(f"{API}/ingest/owntracks", json={**owntracks(p, t), "acc": 10},
                          headers=basic(cred["device_id"], cred["secret"]))
        assert res.status_code == 200, res.text
    page = client.get(f"{API}/alerts", headers=h).json()
    got = {a["kind"]: a for a in page["items"]}
    assert set(got) == {"exclusion_approach", "exclusion_entry"}
    assert got["exclusion_approach"]["severity"] == "medium"
    entry = got["exclusion_entry"]
    assert entry["severity"] == "critical"
    assert entry["reason"]["rule"] == "exclusion_entry.accuracy_circle_wholly_inside"
    assert entry["reason"]["zone_id"] == zone["id"]
    assert entry["reason"]["distance_m"] < -250  # metres inside the zone's border
    assert entry["first_fix_time"].startswith(
        datetime.fromtimestamp(int(now - 300), UTC).isoformat()[:19])


def test_assignments_are_checked_and_listed(client, org: Org):
    h = login(client, "jiangan-officer")
    home = client.post(f"{API}/supervisees/{org.supervisee_id}/zones", headers=h,
                       json={"zone_id": org.zone_ids[JIANGAN], "role": "exclusion"})
    assert home.status_code == 422  # a home area is not a prohibition-order zone
    no_hours = client.post(f"{API}/supervisees/{org.supervisee_id}/zones", headers=h,
                           json={"zone_id": org.zone_ids[JIANGAN], "role": "curfew"})
    assert no_hours.status_code == 422
    ok = client.post(f"{API}/supervisees/{org.supervisee_id}/zones", headers=h, json={
        "zone_id": org.zone_ids[JIANGAN], "role": "curfew", "curfew_start": "22:00",
        "curfew_end": "06:00"})
    assert ok.status_code == 201, ok.text
    bad_tz = client.post(f"{API}/supervisees/{org.supervisee_id}/zones", headers=h, json={
        "zone_id": org.zone_ids[JIANGAN], "role": "curfew", "curfew_start": "22:00",
        "curfew_end": "06:00", "timezone": "Mars/Olympus"})
    assert bad_tz.status_code == 422
    listed = client.get(f"{API}/supervisees/{org.supervisee_id}/zones", headers=h).json()
    assert [(a["role"], a["curfew_start"], a["active"]) for a in listed] == [("curfew", "22:00", True)]
    ended = client.delete(f"{API}/supervisees/{org.supervisee_id}/zones/{listed[0]['id']}",
                          headers=h)
    assert ended.json()["active"] is False
    other = login(client, "jianghan-officer")
    assert client.get(f"{API}/supervisees/{org.supervisee_id}/zones",
                      headers=other).status_code == 404


def test_person_rule_overrides_are_validated_and_audited(client, org: Org, db):
    h = login(client, "jiangan-officer")
    r = client.put(f"{API}/supervisees/{org.supervisee_id}/rules", headers=h,
                   json={"overrides": {"exit_fixes": 4, "exit_span_s": 300},
                         "reason": "works on the district border (port)"})
    assert r.status_code == 200, r.text
    assert r.json()["rule_overrides"] == {"exit_fixes": 4, "exit_span_s": 300.0}
    bad = client.put(f"{API}/supervisees/{org.supervisee_id}/rules", headers=h,
                     json={"overrides": {"exit_fxes": 4}, "reason": "typo"})
    assert (bad.status_code, bad.json()["error"]) == (422, "invalid.rule_override")
    assert db.execute("SELECT action FROM audit_log WHERE action = 'supervisee.set_rules'"
                      ).fetchall() == [("supervisee.set_rules",)]


def test_every_alert_carries_a_readable_explanation(client, org: Org):
    zone = _exclusion_circle(client, login(client, "jiangan-supervisor"), org)
    h = login(client, "jiangan-officer")
    client.post(f"{API}/supervisees/{org.supervisee_id}/zones", headers=h,
                json={"zone_id": zone["id"], "role": "exclusion"})
    cred = enrol(client, h, org.supervisee_id)
    lon, lat = point_to_wgs84(*deep_inside(JIANGAN), CRS.GCJ02)
    now = time.time()
    for k in range(3):
        client.post(f"{API}/ingest/owntracks", headers=basic(cred["device_id"], cred["secret"]),
                    json={**owntracks((lon, lat), now - 300 + k * 60), "acc": 10})
    [alert] = client.get(f"{API}/alerts", headers=h).json()["items"]
    one = client.get(f"{API}/alerts/{alert['id']}", headers=h).json()
    # The zone by its number and the name the supervisor gave it, in both languages.
    assert one["explanation"].startswith(f"Entered prohibited zone {zone['id']} “victim's home”:")
    assert one["explanation_zh"].startswith(f"进入禁止区域 {zone['id']}「victim's home」：")
    assert one["zone_name"] == "victim's home"
    assert "10 m" in one["explanation"]  # the accuracy it was judged with
