"""Investigations: who was near a place in a period (accuracy-aware, jurisdiction, purpose,
audit), and the case review for one person."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from pyproj import Geod
from sqlalchemy import text
from sqlalchemy.orm import Session

from api.routes.investigations import PlaceOut, ProximityIn, near_query
from geofence.crs import point_to_wgs84
from geofence.model import CRS
from tests.conftest import JIANGAN, PASSWORD, Org, login
from tests.geo import deep_inside
from tests.test_api import API

GEOD = Geod(ellps="WGS84")
T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
WINDOW = {"from": T0.isoformat(), "to": (T0 + timedelta(hours=1)).isoformat()}
R = 100.0
# The place: the most interior point of Jiang'an, drawn on an AMap (GCJ-02) and in WGS-84.
PLACE_GCJ = deep_inside(JIANGAN)
PLACE = point_to_wgs84(*PLACE_GCJ, CRS.GCJ02)


def at(metres: float, bearing: float = 0.0) -> tuple[float, float]:
    """The WGS-84 point `metres` from the place on the geodesic at `bearing` (degrees)."""
    lon, lat, _ = GEOD.fwd(PLACE[0], PLACE[1], bearing, metres)
    return lon, lat


def add_fix(db: psycopg.Connection, supervisee_id: int, when: datetime, lonlat: tuple[float, float],
            accuracy: float | None, provider: str = "gps") -> None:
    lon, lat = lonlat
    db.execute("""INSERT INTO positions (device_id, supervisee_id, fix_time, received_at, lon, lat,
                      raw_lon, raw_lat, crs, accuracy, provider, source)
                  VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'wgs84', %s, %s, 'owntracks_http')""",
               (f"dev-{supervisee_id}", supervisee_id, when, when, lon, lat, lon, lat, accuracy,
                provider))


def body(purpose: str = "案件调查 case 2026-117", radius_m: float = R, **kw: Any) -> dict[str, Any]:
    return {"place": {"lon": PLACE[0], "lat": PLACE[1], "crs": "wgs84"}, "radius_m": radius_m,
            **WINDOW, "purpose": purpose, **kw}


@dataclass
class Scene:
    certain: int  # Jiang'an: fixes whose points lie within R
    possible: int  # Jiang'an: only an accuracy circle reaches
    far: int  # Jiang'an: near but not near enough, and a cell-tower fix
    early: int  # Jiang'an: at the place, but outside the window
    other: int  # Jianghan's supervisee, within R of the place in Jiang'an


def _person(session: Session, office_id: int, case: str) -> int:
    from store.models import Supervisee

    sup = Supervisee(office_id=office_id, full_name=f"Person {case}", case_number=case,
                     supervision_type="probation")
    session.add(sup)
    session.flush()
    return sup.id


@pytest.fixture()
def scene(org: Org, session: Session, db: psycopg.Connection) -> Scene:
    office = org.office_ids[JIANGAN]
    s = Scene(certain=org.supervisee_id, possible=_person(session, office, "P-2"),
              far=_person(session, office, "P-3"), early=_person(session, office, "P-4"),
              other=org.other_supervisee_id)
    session.commit()
    m = timedelta(minutes=1)
    add_fix(db, s.certain, T0 + 10 * m, at(80), 20)
    add_fix(db, s.certain, T0 + 20 * m, at(300, 90), 20)  # 300 - 20 > R: not near
    add_fix(db, s.certain, T0 + 30 * m, at(40, 180), None, "network")
    add_fix(db, s.possible, T0 + 15 * m, at(150, 45), 60)  # 150 - 60 = 90 <= R
    add_fix(db, s.far, T0 + 5 * m, at(150, 270), 40)  # 150 - 40 = 110 > R
    add_fix(db, s.far, T0 + 6 * m, at(120, 270), None)  # no accuracy: only its point counts
    add_fix(db, s.far, T0 + 7 * m, at(600, 270), 1500)  # a circle that reaches, but a guess
    add_fix(db, s.early, T0 - m, at(10), 5)  # before `from`
    add_fix(db, s.early, T0 + 60 * m, at(10), 5)  # at `to`: the period is [from, to)
    add_fix(db, s.other, T0 + 40 * m, at(30, 300), 10)
    return s


def search(client: TestClient, user: str, **kw: Any) -> Any:
    r = client.post(f"{API}/investigations/proximity", headers=login(client, user), json=body(**kw))
    assert r.status_code == 200, r.text
    return r.json()


def test_certain_and_possible_people_with_their_evidence(client: TestClient, scene: Scene):
    out = search(client, "jiangan-officer")
    people = out["people"]
    assert [(p["supervisee_id"], p["certainty"]) for p in people] == [
        (scene.certain, "certain"), (scene.possible, "possible")]
    certain, possible = people
    assert certain["closest_m"] == pytest.approx(40, abs=0.2)
    assert certain["fixes_near"] == 2 and certain["evidence_complete"]
    assert datetime.fromisoformat(certain["first_near"]) == T0 + timedelta(minutes=10)
    assert datetime.fromisoformat(certain["last_near"]) == T0 + timedelta(minutes=30)
    ev = certain["evidence"]
    assert [datetime.fromisoformat(e["time"]) for e in ev] == [
        T0 + timedelta(minutes=10), T0 + timedelta(minutes=30)]
    assert [e["distance_m"] for e in ev] == [pytest.approx(80, abs=0.2), pytest.approx(40, abs=0.2)]
    assert [(e["accuracy"], e["provider"], e["within"]) for e in ev] == [
        (20, "gps", True), (None, "network", True)]
    assert (ev[0]["lon"], ev[0]["lat"]) == pytest.approx(at(80))
    assert possible["closest_m"] == pytest.approx(150, abs=0.2)
    assert [(e["accuracy"], e["within"]) for e in possible["evidence"]] == [(60, False)]
    assert out["place"]["wgs84_lon"] == pytest.approx(PLACE[0])
    assert out["radius_m"] == R and out["from"] and out["to"]


def test_a_wider_radius_finds_the_far_fixes_a_narrower_one_misses(client: TestClient, scene: Scene):
    """The same scene at R = 115: the 150 m fix of accuracy 40 now reaches, the 120 m fix without
    accuracy still does not; the 1,500 m-accuracy fix never counts."""
    people = {p["supervisee_id"]: p for p in search(client, "jiangan-officer", radius_m=115)["people"]}
    assert set(people) == {scene.certain, scene.possible, scene.far}
    far = people[scene.far]
    assert far["certainty"] == "possible" and far["fixes_near"] == 1
    assert far["evidence"][0]["accuracy"] == 40
    people = {p["supervisee_id"]: p for p in search(client, "jiangan-officer", radius_m=125)["people"]}
    assert people[scene.far]["certainty"] == "certain" and people[scene.far]["fixes_near"] == 2


def test_jurisdiction_decides_who_is_returned(client: TestClient, scene: Scene):
    ids = [p["supervisee_id"] for p in search(client, "jianghan-officer")["people"]]
    assert ids == [scene.other]
    admin = search(client, "admin")["people"]
    assert [p["supervisee_id"] for p in admin] == [scene.other, scene.certain, scene.possible]
    assert admin[0]["closest_m"] == pytest.approx(30, abs=0.2)


def test_outside_the_window_is_not_near(client: TestClient, scene: Scene, db: psycopg.Connection):
    ids = {p["supervisee_id"] for p in search(client, "admin")["people"]}
    assert scene.early not in ids
    wider = {**WINDOW, "from": (T0 - timedelta(minutes=5)).isoformat()}
    r = client.post(f"{API}/investigations/proximity", headers=login(client, "admin"),
                    json={**body(), **wider})
    early = [p for p in r.json()["people"] if p["supervisee_id"] == scene.early]
    assert len(early) == 1 and early[0]["fixes_near"] == 1  # the fix at `to` stays out


def test_a_place_drawn_in_gcj02_is_converted(client: TestClient, org: Org, db: psycopg.Connection):
    add_fix(db, org.supervisee_id, T0 + timedelta(minutes=1), PLACE, 5)
    h = login(client, "jiangan-officer")
    gcj = {**body(radius_m=20), "place": {"lon": PLACE_GCJ[0], "lat": PLACE_GCJ[1], "crs": "gcj02"}}
    out = client.post(f"{API}/investigations/proximity", headers=h, json=gcj).json()
    assert [p["supervisee_id"] for p in out["people"]] == [org.supervisee_id]
    assert out["people"][0]["closest_m"] < 0.1
    assert (out["place"]["wgs84_lon"], out["place"]["wgs84_lat"]) == pytest.approx(PLACE)
    # The same numbers taken as WGS-84 name a place hundreds of metres away.
    as_wgs = {**gcj, "place": {**gcj["place"], "crs": "wgs84"}}
    assert client.post(f"{API}/investigations/proximity", headers=h, json=as_wgs).json()[
        "people"] == []


def test_the_search_is_audited_with_purpose_place_radius_window_and_people(
        client: TestClient, scene: Scene, db: psycopg.Connection):
    search(client, "jiangan-officer", purpose="盗窃案调查 theft inquiry")
    row = db.execute("""SELECT a.action, a.purpose, a.target, a.detail, s.username
                          FROM audit_log a JOIN staff s ON s.id = a.staff_id
                         WHERE a.action LIKE 'location.%'""").fetchall()
    assert len(row) == 1
    action, purpose, target, detail, who = row[0]
    assert (action, purpose, who) == ("location.proximity_search", "盗窃案调查 theft inquiry",
                                      "jiangan-officer")
    assert target == f"place:{PLACE[0]:.6f},{PLACE[1]:.6f}"
    assert detail["place"]["crs"] == "wgs84" and detail["place"]["wgs84"] == pytest.approx(PLACE)
    assert detail["radius_m"] == R
    assert datetime.fromisoformat(detail["start"]) == T0
    assert datetime.fromisoformat(detail["end"]) == T0 + timedelta(hours=1)
    assert detail["people"] == 2 and detail["supervisee_ids"] == sorted([scene.certain,
                                                                         scene.possible])


@pytest.mark.parametrize("change", [
    {"purpose": None}, {"purpose": "x"}, {"radius_m": 0.5}, {"radius_m": 5001},
    {"place": {"lon": 114.3, "lat": 95, "crs": "wgs84"}}, {"place": {"lon": 114.3, "lat": 30.6,
                                                                      "crs": "epsg3857"}},
    {"from": "2026-03-02T02:00:00"},  # no timezone
    {"to": T0.isoformat()},  # to == from
    {"to": (T0 + timedelta(days=7, seconds=1)).isoformat()},
])
def test_bad_requests_are_refused_and_not_audited(client: TestClient, org: Org,
                                                  db: psycopg.Connection, change: dict[str, Any]):
    b = {**body(), **change}
    if change.get("purpose", "") is None:
        del b["purpose"]
    r = client.post(f"{API}/investigations/proximity", headers=login(client, "jiangan-officer"),
                    json=b)
    assert r.status_code == 422, r.text
    assert db.execute("SELECT count(*) FROM audit_log WHERE action LIKE 'location.%'"
                      ).fetchone() == (0,)


def test_a_window_over_seven_days_is_refused_clearly_seven_days_is_not(
        client: TestClient, scene: Scene):
    h = login(client, "jiangan-officer")
    long = {**body(), "to": (T0 + timedelta(days=7, seconds=1)).isoformat()}
    r = client.post(f"{API}/investigations/proximity", headers=h, json=long)
    assert r.status_code == 422
    assert r.json()["error"] == "invalid.window_too_long" and r.json()["max_days"] == 7
    assert "7 days" in r.json()["detail"]
    week = {**body(), "to": (T0 + timedelta(days=7)).isoformat()}
    r = client.post(f"{API}/investigations/proximity", headers=h, json=week)
    assert r.status_code == 200
    # The week holds the early person's fix at the hour's end too.
    assert {p["supervisee_id"] for p in r.json()["people"]} == {scene.certain, scene.possible,
                                                                 scene.early}


def test_auditors_see_no_positions(client: TestClient, org: Org, session: Session,
                                   db: psycopg.Connection):
    from store.demo import create_staff
    from store.enums import Role
    from store.models import OrgUnit

    city = session.get(OrgUnit, org.city_id)
    assert city is not None
    create_staff(session, city, "auditor", Role.AUDITOR, PASSWORD)
    session.commit()
    h = login(client, "auditor")
    r = client.post(f"{API}/investigations/proximity", headers=h, json=body())
    assert r.status_code == 403 and r.json()["error"] == "role_not_allowed"
    r = client.post(f"{API}/supervisees/{org.supervisee_id}/proximity", headers=h, json=body())
    assert r.status_code == 403
    assert db.execute("SELECT count(*) FROM audit_log WHERE action LIKE 'location.%'"
                      ).fetchone() == (0,)


def test_evidence_is_the_nearest_fixes_and_says_when_it_is_not_all(
        client: TestClient, org: Org, db: psycopg.Connection):
    for i, d in enumerate((50, 10, 70, 30, 90)):
        add_fix(db, org.supervisee_id, T0 + timedelta(minutes=i), at(d), 5)
    [p] = search(client, "jiangan-officer", evidence_limit=2)["people"]
    assert p["fixes_near"] == 5 and not p["evidence_complete"]
    assert [round(e["distance_m"]) for e in p["evidence"]] == [10, 30]  # nearest, in time order
    assert datetime.fromisoformat(p["first_near"]) == T0
    assert datetime.fromisoformat(p["last_near"]) == T0 + timedelta(minutes=4)


def test_case_review_for_one_person(client: TestClient, scene: Scene, db: psycopg.Connection):
    h = login(client, "jiangan-officer")
    url = f"{API}/supervisees/{{}}/proximity"
    r = client.post(url.format(scene.certain), headers=h, json=body(purpose="复查 case review"))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["near"] is True
    [p] = out["people"]
    assert (p["supervisee_id"], p["certainty"], p["fixes_near"]) == (scene.certain, "certain", 2)
    assert p["closest_m"] == pytest.approx(40, abs=0.2)
    r = client.post(url.format(scene.far), headers=h, json=body())
    assert r.status_code == 200 and r.json()["near"] is False and r.json()["people"] == []
    # Another district's person: 404 for this officer (nothing said, nothing recorded) ...
    r = client.post(url.format(scene.other), headers=h, json=body())
    assert r.status_code == 404
    # ... and found by the city administrator.
    r = client.post(url.format(scene.other), headers=login(client, "admin"), json=body())
    assert r.status_code == 200 and r.json()["near"] is True
    rows = db.execute("""SELECT target, purpose, (detail->>'near')::bool, (detail->>'fixes')::int,
                                (detail->>'radius_m')::float
                           FROM audit_log WHERE action = 'location.proximity_check' ORDER BY id
                      """).fetchall()
    assert rows == [(f"supervisee:{scene.certain}", "复查 case review", True, 2, R),
                    (f"supervisee:{scene.far}", "案件调查 case 2026-117", False, 0, R),
                    (f"supervisee:{scene.other}", "案件调查 case 2026-117", True, 1, R)]


def test_only_the_days_of_the_window_are_scanned(session: Session, org: Org):
    """The plan names the daily partition of the window, not the days around it."""
    days = ["2020-01-01", "2020-01-02", "2020-01-03"]
    try:
        session.execute(text("SELECT partman.create_partition_time('public.positions', "
                             "CAST(:days AS timestamptz[]), false)"),
                        {"days": [f"{d} 00:00:00+00" for d in days]})
        session.commit()
        b = ProximityIn.model_validate({**body(), "from": "2020-01-02T08:00:00Z",
                                        "to": "2020-01-02T10:00:00Z"})
        place = PlaceOut(lon=PLACE[0], lat=PLACE[1], crs=CRS.WGS84, wgs84_lon=PLACE[0],
                         wgs84_lat=PLACE[1])
        sql, params = near_query(frozenset(org.office_ids.values()), b, place)
        plan = "\n".join(r[0] for r in session.execute(text("EXPLAIN " + sql), params))
        assert "positions_p2020_01_02" in plan
        assert "positions_p2020_01_01" not in plan and "positions_p2020_01_03" not in plan
        assert "positions_default" not in plan
        assert "geom &&" in plan  # the box on geom, which a GiST index on geom would serve
    finally:
        session.rollback()
        for d in days:
            session.execute(text(f"DROP TABLE IF EXISTS positions_p{d.replace('-', '_')}"))
        session.commit()


@pytest.mark.parametrize(("change", "status"), [
    ({"place": {"lon": 180, "lat": 89.99, "crs": "bd09"}}, 200),
    ({"place": {"lon": -180, "lat": -90, "crs": "bd09"}}, 422),  # converts off the globe
    ({"place": {"lon": -180, "lat": -90, "crs": "wgs84"}, "radius_m": 5000}, 200),
    ({"place": {"lon": 179.999, "lat": 0, "crs": "gcj02"}, "radius_m": 5000}, 200),
    ({"from": "0001-01-01T00:00:00+05:00", "to": "0001-01-02T00:00:00+05:00"}, 200),
    ({"from": "9999-12-30T00:00:00-05:00", "to": "9999-12-31T23:59:59-05:00"}, 200),
])
def test_edges_of_the_globe_and_of_time_answer_without_a_server_error(
        client: TestClient, org: Org, change: dict[str, Any], status: int):
    r = client.post(f"{API}/investigations/proximity", headers=login(client, "admin"),
                    json={**body(), **change})
    assert r.status_code == status, r.text
    if status == 422:
        assert "off the globe" in r.json()["detail"]
    else:
        assert r.json()["people"] == []
