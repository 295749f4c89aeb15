"""Editing and retiring zones (PUT /zones/{id}, POST /zones/{id}/retire) on the real database,
Redis and ingest pipeline: the engine decides against the new shape at once, the audit log keeps
the old one, and a zone in use is not retired."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from ingest.pipeline import Pipeline
from store.settings import Settings
from tests.conftest import JIANGAN, Org, login
from tests.geo import deep_inside
from tests.test_pipeline import fix, native

API = "/api/v1"


def square(centre: tuple[float, float], half: float) -> dict[str, Any]:
    """A GeoJSON Polygon: a square `2 * half` degrees wide around `centre` (lon, lat)."""
    x, y = centre
    return {"type": "Polygon", "coordinates": [[
        [x - half, y - half], [x + half, y - half], [x + half, y + half], [x - half, y + half],
        [x - half, y - half]]]}


def away_from_home(dx: float = 0.02) -> tuple[float, float]:
    x, y = deep_inside(JIANGAN)
    return x + dx, y


def create(client: TestClient, h: dict[str, str], owner: int, geometry: dict[str, Any],
           kind: str = "exclusion", **extra: Any) -> dict[str, Any]:
    r = client.post(f"{API}/zones", headers=h, json={
        "name": "网吧周边", "kind": kind, "crs": "gcj02", "owner_unit_id": owner,
        "geometry": geometry, **extra})
    assert r.status_code == 201, r.text
    return r.json()


def audits(db: psycopg.Connection, action: str, zone_id: int) -> list[dict[str, Any]]:
    return [d for (d,) in db.execute("SELECT detail FROM audit_log WHERE action = %s AND target = %s "
                                     "ORDER BY id", (action, f"zone:{zone_id}"))]


@pytest.fixture()
def pipeline(settings: Settings, db: psycopg.Connection) -> Any:
    p = Pipeline.connect(settings)
    yield p
    p.close()


def test_put_replaces_the_shape_bumps_the_version_and_audits_the_previous_shape(
        client, org: Org, db, rds, settings):
    h = login(client, "jiangan-officer")
    old = square(away_from_home(), 0.002)
    zone = create(client, h, org.office_ids[JIANGAN], old)
    config_before = rds.get(settings.redis_prefix + "config_version")
    new = square(away_from_home(), 0.004)
    r = client.put(f"{API}/zones/{zone['id']}", headers=h,
                   json={"name": "网吧周边（扩大）", "crs": "gcj02", "geometry": new})
    assert r.status_code == 200, r.text
    props = r.json()["properties"]
    assert (props["version"], props["name"], props["drawn_geometry"]) == (2, "网吧周边（扩大）", new)
    assert props["kind"] == "exclusion" and props["owner_unit_id"] == org.office_ids[JIANGAN]
    version, area_ratio, changed = db.execute(
        "SELECT version, ST_Area(geom) / %s, updated_at > created_at FROM zones WHERE id = %s",
        (0.008 ** 2, zone["id"])).fetchone()
    assert version == 2 and changed
    assert area_ratio == pytest.approx(1.0, rel=0.02)  # the new square (in WGS-84 degrees)
    [detail] = audits(db, "zone.update", zone["id"])
    assert detail["version"] == 2
    assert detail["previous_version"] == 1
    assert detail["previous_geojson"] == old
    assert detail["previous_crs"] == "gcj02"
    assert detail["previous_name"] == "网吧周边"
    assert rds.get(settings.redis_prefix + "config_version") != config_before  # workers reload

    # A circle changes its radius the same way (the drawn centre and radius are kept).
    circle = create(client, h, org.office_ids[JIANGAN],
                    {"type": "Point", "coordinates": list(away_from_home())}, radius_m=200)
    r = client.put(f"{API}/zones/{circle['id']}", headers=h, json={
        "name": "圆", "crs": "gcj02", "radius_m": 350,
        "geometry": {"type": "Point", "coordinates": list(away_from_home())}})
    assert r.status_code == 200, r.text
    assert r.json()["properties"]["drawn_geometry"]["radius_m"] == 350
    assert audits(db, "zone.update", circle["id"])[0]["previous_geojson"]["radius_m"] == 200


def test_after_an_update_the_engine_decides_against_the_new_shape(
        client, org: Org, db, pipeline: Pipeline):
    """The same place, outside the zone before the update and inside it after: no entry, then an
    entry, through the real ingest pipeline whose registry has the old version cached."""
    h = login(client, "jiangan-officer")
    here = deep_inside(JIANGAN)
    zone = create(client, h, org.office_ids[JIANGAN], square(away_from_home(), 0.002))
    r = client.post(f"{API}/supervisees/{org.supervisee_id}/zones", headers=h,
                    json={"zone_id": zone["id"], "role": "exclusion"})
    assert r.status_code == 201, r.text
    db.execute("INSERT INTO devices (id, supervisee_id, secret_hash) VALUES ('dedit', %s, 'x')",
               (org.supervisee_id,))
    now = time.time()
    pipeline.process([native("dedit", fix(here, now - 600), fix(here, now - 540))], now=now)
    assert db.execute("SELECT count(*) FROM alerts WHERE kind LIKE 'exclusion%'").fetchone() == (0,)

    r = client.put(f"{API}/zones/{zone['id']}", headers=h,
                   json={"name": "网吧周边", "crs": "gcj02", "geometry": square(here, 0.003)})
    assert r.status_code == 200, r.text
    pipeline.process([native("dedit", fix(here, now - 120), fix(here, now - 60))], now=now)
    rows = db.execute("SELECT kind, reason->>'zone_id' FROM alerts WHERE kind LIKE 'exclusion%'"
                      ).fetchall()
    assert rows == [("exclusion_entry", str(zone["id"]))]


def test_an_invalid_shape_on_put_is_refused_with_the_engines_reason_and_nothing_changes(
        client, org: Org, db):
    h = login(client, "jiangan-officer")
    old = square(away_from_home(), 0.002)
    zone = create(client, h, org.office_ids[JIANGAN], old)
    x, y = away_from_home()
    bowtie = {"type": "Polygon", "coordinates": [[
        [x, y], [x + 0.01, y + 0.01], [x + 0.01, y], [x, y + 0.01], [x, y]]]}
    r = client.put(f"{API}/zones/{zone['id']}", headers=h,
                   json={"name": "蝴蝶结", "crs": "gcj02", "geometry": bowtie})
    assert r.status_code == 422
    assert r.json()["error"] == "invalid_zone.invalid_geometry"
    assert "Self-intersection" in r.json()["detail"]
    r = client.put(f"{API}/zones/{zone['id']}", headers=h, json={
        "name": "太小", "crs": "gcj02", "radius_m": 2,
        "geometry": {"type": "Point", "coordinates": [x, y]}})
    assert (r.status_code, r.json()["error"]) == (422, "invalid_zone.absurd_size")
    assert db.execute("SELECT name, version, source_geojson FROM zones WHERE id = %s",
                      (zone["id"],)).fetchone() == ("网吧周边", 1, old)
    assert audits(db, "zone.update", zone["id"]) == []


def test_retire_is_refused_while_the_zone_is_assigned_and_allowed_once_lifted(
        client, org: Org, db):
    h = login(client, "jiangan-officer")
    zone = create(client, h, org.office_ids[JIANGAN], square(away_from_home(), 0.002))
    a = client.post(f"{API}/supervisees/{org.supervisee_id}/zones", headers=h,
                    json={"zone_id": zone["id"], "role": "exclusion"}).json()
    r = client.post(f"{API}/zones/{zone['id']}/retire", headers=h, json={"reason": "不再需要"})
    assert (r.status_code, r.json()["error"]) == (409, "zone_in_use")
    assert f"assigned to T-{JIANGAN}" in r.json()["detail"]
    assert db.execute("SELECT active FROM zones WHERE id = %s", (zone["id"],)).fetchone() == (True,)

    r = client.delete(f"{API}/supervisees/{org.supervisee_id}/zones/{a['id']}", headers=h)
    assert r.status_code == 200, r.text
    r = client.post(f"{API}/zones/{zone['id']}/retire", headers=h, json={"reason": "不再需要"})
    assert r.status_code == 200, r.text
    assert r.json()["properties"]["active"] is False
    assert audits(db, "zone.retire", zone["id"]) == [{"reason": "不再需要", "version": 1}]
    # Retired: it can neither be assigned nor changed.
    r = client.post(f"{API}/supervisees/{org.supervisee_id}/zones", headers=h,
                    json={"zone_id": zone["id"], "role": "exclusion"})
    assert (r.status_code, r.json()["error"]) == (409, "zone_retired")
    r = client.put(f"{API}/zones/{zone['id']}", headers=h,
                   json={"name": "x", "crs": "gcj02", "geometry": square(away_from_home(), 0.003)})
    assert (r.status_code, r.json()["error"]) == (409, "zone_retired")


def test_retire_is_refused_for_an_active_supervisees_home_area(client, org: Org):
    h = login(client, "jiangan-supervisor")
    r = client.post(f"{API}/zones/{org.zone_ids[JIANGAN]}/retire", headers=h,
                    json={"reason": "合并"})
    assert (r.status_code, r.json()["error"]) == (409, "zone_in_use")
    assert f"the home area of T-{JIANGAN}" in r.json()["detail"]


def test_another_districts_officer_gets_404(client, org: Org, db):
    zone = create(client, login(client, "jiangan-officer"), org.office_ids[JIANGAN],
                  square(away_from_home(), 0.002))
    h = login(client, "jianghan-officer")
    r = client.put(f"{API}/zones/{zone['id']}", headers=h,
                   json={"name": "x", "crs": "gcj02", "geometry": square(away_from_home(), 0.003)})
    assert r.status_code == 404
    r = client.post(f"{API}/zones/{zone['id']}/retire", headers=h, json={"reason": "越权"})
    assert r.status_code == 404
    assert db.execute("SELECT version, active FROM zones WHERE id = %s",
                      (zone["id"],)).fetchone() == (1, True)


def test_a_zone_of_a_unit_above_is_403_for_an_officer(client, org: Org, db):
    city_zone = create(client, login(client, "admin"), org.city_id,
                       square(away_from_home(), 0.002), kind="destination")
    h = login(client, "jiangan-officer")
    for zid in (city_zone["id"], org.zone_ids[JIANGAN]):  # the city's, the district's
        r = client.put(f"{API}/zones/{zid}", headers=h, json={
            "name": "x", "crs": "gcj02", "geometry": square(away_from_home(), 0.003)})
        assert (r.status_code, r.json()["error"]) == (403, "zone_of_unit_above"), r.text
        assert "a unit above yours" in r.json()["detail"]
        r = client.post(f"{API}/zones/{zid}/retire", headers=h, json={"reason": "越级"})
        assert r.status_code == 403
    assert client.get(f"{API}/zones/{city_zone['id']}", headers=h).status_code == 200  # still read
    assert db.execute("SELECT version FROM zones WHERE id = %s",
                      (city_zone["id"],)).fetchone() == (1,)


def test_a_precise_boundary_may_be_as_large_on_put_as_on_post(client, org: Org, settings):
    """Past the API's general body limit (CCS_MAX_BODY_BYTES) but within the zone upload's."""
    import math

    h = login(client, "jiangan-officer")
    zone = create(client, h, org.office_ids[JIANGAN], square(away_from_home(), 0.002))
    x, y = away_from_home()
    n = 12_000
    ring = [[round(x + 0.01 * math.cos(2 * math.pi * k / n), 7),
             round(y + 0.01 * math.sin(2 * math.pi * k / n), 7)] for k in range(n)]
    body = {"name": "精确边界", "crs": "gcj02", "geometry": {"type": "Polygon",
                                                          "coordinates": [[*ring, ring[0]]]}}
    assert settings.max_body_bytes < len(str(body)) < settings.max_zone_body_bytes
    r = client.put(f"{API}/zones/{zone['id']}", headers=h, json=body)
    assert r.status_code == 200, r.text[:200]
    assert r.json()["properties"]["version"] == 2
