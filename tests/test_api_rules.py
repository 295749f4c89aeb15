"""Prohibition-order zones, curfews, circles and per-person thresholds through the API."""

from __future__ import annotations

import json
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
    assert one["explanation_zh"].startswith(f"进入禁止区域 {zone['id']}“victim's home”：")
    assert one["zone_name"] == "victim's home"
    assert one["reason"]["zone_name"] == "victim's home"  # as it was called when it decided
    assert "10 m" in one["explanation"]  # the accuracy it was judged with


def test_an_alert_names_the_zone_it_was_raised_for_or_only_its_number(client, org: Org, db):
    """The name recorded with an alert is what the zone was called when it decided (a renamed
    zone does not rename old evidence); an alert recorded before names were kept shows today's
    name; a reason whose zone is absent or malformed shows what it has, and never fails."""
    home = org.zone_ids[JIANGAN]
    reasons = [
        {"zone_id": home, "zone_name": "江岸区（旧名）"},  # recorded at the time: kept
        {"zone_id": home},  # recorded before names were kept: today's name
        {"zone_id": None}, {"zone_id": 3.5}, {"zone_id": "abc"}, {"zone_id": -1},
        {"zone_id": 10**20}, {},
    ]
    with db.transaction():
        for k, extra in enumerate(reasons):
            db.execute("""INSERT INTO alerts (kind, severity, status, supervisee_id, office_id,
                                             reason)
                          VALUES ('area_exit', 'high', 'resolved', %s, %s, %s::jsonb)""",
                       (org.supervisee_id, org.office_ids[JIANGAN], json.dumps(
                           {"rule": "area_exit.accuracy_circle_wholly_outside", "k": k,
                            **extra})))
    items = client.get(f"{API}/alerts", headers=login(client, "jiangan-officer"),
                       params={"limit": 20}).json()["items"]
    by_k = {a["reason"]["k"]: a for a in items}
    assert f"outside zone {home} “江岸区（旧名）” (" in by_k[0]["explanation"]
    assert by_k[0]["zone_name"] == "江岸区"  # what it is called now, beside the evidence's name
    assert f"outside zone {home} “江岸区” (" in by_k[1]["explanation"]
    assert by_k[1]["zone_name"] == "江岸区"
    for k, shown in ((2, "None"), (3, "3.5"), (4, "abc"), (5, "-1"), (6, str(10**20)), (7, "None")):
        assert by_k[k]["zone_name"] is None, k
        assert f"outside zone {shown} (" in by_k[k]["explanation"], (k, by_k[k]["explanation"])
