"""Investigations: who was near a place in a period, and was this person near it (case review).

A fix counts as near when its accuracy circle reaches the place's circle: distance(fix, place)
- accuracy <= R, distances in metres on the WGS-84 spheroid (PostGIS geography). A person is
`certain` when some fix's point itself lies within R, `possible` when only accuracy circles
reached. A fix without accuracy, or with one worse than `USABLE_ACCURACY_M` (a cell-tower guess
that would put half a district "near"), counts only when its point is within R.

The search runs in SQL over the caller's jurisdiction only (the supervisees of `ctx.unit_ids`),
bounded by `fix_time` (only the daily partitions of the window are scanned) and by a box on
`geom` that holds every point that could count (a GiST index on `geom` serves it when there is
one). Every search is audited with its purpose, the place, radius, window and the people found.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.orm import Session

from api.authz import SUPERVISORS, access
from api.deps import CurrentStaff, SessionDep, StaffContext, audit, supervisee_in_jurisdiction
from api.errors import Invalid
from api.schemas import DbId, InputModel
from geofence.crs import point_to_wgs84
from geofence.model import CRS

router = APIRouter(tags=["investigations"])

MAX_WINDOW = timedelta(days=7)
MAX_RADIUS_M = 5000.0
# Worse accuracy places nobody: such a fix counts only with its point within R.
USABLE_ACCURACY_M = 1000.0
# Bounds of a degree, in metres, that keep the box around the reach a superset of it on the
# spheroid: a degree of latitude is >= 110,574 m, one of longitude >= 111,319 m x cos(lat).
_M_PER_DEG_LAT = 110_000.0
_M_PER_DEG_LON_EQUATOR = 111_000.0


class PlaceIn(InputModel):
    """A place as drawn on a map: (lon, lat) in `crs` (CGCS2000 and OSM: wgs84; AMap, Tencent:
    gcj02; Baidu: bd09); converted to WGS-84 before any distance is taken."""

    lon: float = Field(ge=-180, le=180)
    lat: float = Field(ge=-90, le=90)
    crs: CRS = CRS.WGS84


class ProximityIn(InputModel):
    """Who was within `radius_m` of `place` in [from, to), and why it is asked."""

    place: PlaceIn
    radius_m: float = Field(ge=1, le=MAX_RADIUS_M, description="metres, 1 to 5,000")
    start: datetime = Field(alias="from", description="with a timezone (e.g. 2026-11-26T08:00:00Z)")
    end: datetime = Field(alias="to", description="at most 7 days after `from`")
    purpose: str = Field(min_length=3, max_length=200,
                         description="why location data is searched (recorded in the audit log)")
    evidence_limit: int = Field(500, ge=1, le=20_000, description=(
        "the most fixes returned per person as evidence (the nearest ones); `fixes_near` "
        "always counts them all and `evidence_complete` says whether all are shown"))


class PlaceOut(BaseModel):
    lon: float
    lat: float
    crs: CRS
    wgs84_lon: float
    wgs84_lat: float


class EvidenceFix(BaseModel):
    time: datetime
    device_id: str
    lon: float = Field(description="WGS-84")
    lat: float = Field(description="WGS-84")
    accuracy: float | None = Field(description="metres (the phone's 68 % radius)")
    provider: str | None
    distance_m: float = Field(description="from the fix's point to the place, on the spheroid")
    within: bool = Field(description="the fix's point itself lies within radius_m")


class PersonNear(BaseModel):
    supervisee_id: int
    full_name: str
    case_number: str
    office_id: int
    certainty: Literal["certain", "possible"] = Field(description=(
        "certain: some fix's point lay within radius_m; possible: only accuracy circles reached"))
    closest_m: float = Field(description="the smallest distance of a near fix's point")
    first_near: datetime
    last_near: datetime
    fixes_near: int
    evidence_complete: bool
    evidence: list[EvidenceFix] = Field(description="the nearest fixes, in time order")


class ProximityOut(BaseModel):
    place: PlaceOut
    radius_m: float
    start: datetime = Field(serialization_alias="from")
    end: datetime = Field(serialization_alias="to")
    usable_accuracy_m: float = Field(description=(
        "fixes with a worse accuracy count only when their point is within radius_m"))
    people: list[PersonNear] = Field(description="certain first, then by closest distance")
    crs: Literal["wgs84"] = "wgs84"


class CaseProximityOut(ProximityOut):
    near: bool = Field(description="the person was near the place in the period")


# The jurisdiction is an array of ids computed once (an InitPlan), not a join: joined, the planner
# may loop over the people and read a GiST index on geom once per person (1.9 s instead of 53 ms
# for 2,000 people in a test of 1.4 million fixes a day); as an array, positions are read once,
# through whichever of the person-and-time and geom indexes is cheaper.
_NEAR = """
WITH near AS (
    SELECT p.supervisee_id, p.device_id, p.fix_time, p.lon, p.lat, p.accuracy, p.provider,
           ST_Distance(p.geom::geography,
                       ST_SetSRID(ST_MakePoint(:lon, :lat), 4326)::geography) AS d
      FROM positions p
     WHERE p.supervisee_id = ANY(ARRAY(SELECT id FROM supervisees WHERE office_id = ANY(:units)))
       {person}
       AND p.fix_time >= :start AND p.fix_time < :end
       AND p.geom && ST_MakeEnvelope(:x0, :y0, :x1, :y1, 4326)
       AND ST_DWithin(p.geom::geography, ST_SetSRID(ST_MakePoint(:lon, :lat), 4326)::geography,
                      :r + CASE WHEN p.accuracy <= :usable THEN p.accuracy ELSE 0 END)
), ranked AS (
    SELECT n.*,
           row_number() OVER (PARTITION BY supervisee_id ORDER BY d, fix_time) AS rank,
           count(*) OVER per AS fixes, min(d) OVER per AS closest,
           min(fix_time) OVER per AS first_near, max(fix_time) OVER per AS last_near
      FROM near n
    WINDOW per AS (PARTITION BY supervisee_id)
)
SELECT r.supervisee_id, s.full_name, s.case_number, s.office_id, r.fixes, r.closest,
       r.first_near, r.last_near, r.device_id, r.fix_time, r.lon, r.lat, r.accuracy,
       r.provider, r.d
  FROM ranked r JOIN supervisees s ON s.id = r.supervisee_id
 WHERE r.rank <= :evidence
 ORDER BY r.closest > :r, r.closest, r.supervisee_id, r.fix_time
"""


def search_box(lon: float, lat: float, reach_m: float) -> tuple[float, float, float, float]:
    """(min lon, min lat, max lon, max lat) holding every point within `reach_m` of (lon, lat);
    the whole band of longitudes near a pole or across the antimeridian."""
    dlat = reach_m / _M_PER_DEG_LAT
    y0, y1 = max(lat - dlat, -90.0), min(lat + dlat, 90.0)
    if max(abs(y0), abs(y1)) >= 89.9:
        return -180.0, y0, 180.0, y1
    dlon = reach_m / (_M_PER_DEG_LON_EQUATOR * math.cos(math.radians(max(abs(y0), abs(y1)))))
    if lon - dlon < -180.0 or lon + dlon > 180.0:
        return -180.0, y0, 180.0, y1
    return lon - dlon, y0, lon + dlon, y1


def _check_window(body: ProximityIn) -> None:
    if body.start.tzinfo is None or body.end.tzinfo is None:
        raise Invalid("from and to need a timezone (e.g. 2026-11-26T08:00:00Z)")
    if not body.start < body.end:
        raise Invalid("need from < to")
    if body.end - body.start > MAX_WINDOW:
        raise Invalid("the period is too long: at most 7 days from `from` to `to`; "
                      "search a long period as several shorter ones",
                      code="invalid.window_too_long", extra={"max_days": MAX_WINDOW.days})


def _place(body: ProximityIn) -> PlaceOut:
    lon, lat = point_to_wgs84(body.place.lon, body.place.lat, body.place.crs)
    if not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
        raise Invalid(f"the place converts to ({lon:.6f}, {lat:.6f}) in WGS-84, off the globe")
    return PlaceOut(lon=body.place.lon, lat=body.place.lat, crs=body.place.crs,
                    wgs84_lon=lon, wgs84_lat=lat)


def near_query(unit_ids: frozenset[int], body: ProximityIn, place: PlaceOut,
               supervisee_id: int | None = None) -> tuple[str, dict[str, Any]]:
    """The search's SQL and parameters: the near fixes of the people of `unit_ids` (or of the one
    person), each row with its person's totals; at most `evidence_limit` rows per person."""
    x0, y0, x1, y1 = search_box(place.wgs84_lon, place.wgs84_lat, body.radius_m + USABLE_ACCURACY_M)
    params: dict[str, Any] = {
        "lon": place.wgs84_lon, "lat": place.wgs84_lat, "r": body.radius_m,
        "usable": USABLE_ACCURACY_M, "units": sorted(unit_ids), "start": body.start,
        "end": body.end, "x0": x0, "y0": y0, "x1": x1, "y1": y1, "evidence": body.evidence_limit}
    person = ""
    if supervisee_id is not None:
        person, params["sid"] = "AND p.supervisee_id = :sid", supervisee_id
    return _NEAR.format(person=person), params


def people_near(session: Session, ctx: StaffContext, body: ProximityIn, place: PlaceOut,
                supervisee_id: int | None = None) -> list[PersonNear]:
    """The people of the caller's jurisdiction (or the one person) near the place, with their
    near fixes as evidence."""
    sql, params = near_query(ctx.unit_ids, body, place, supervisee_id)
    people: dict[int, PersonNear] = {}
    for (sid, name, case, office, fixes, closest, first, last, dev, fix_time, lon, lat, acc,
         provider, d) in session.execute(text(sql), params):
        person = people.get(sid)
        if person is None:
            person = people[sid] = PersonNear(
                supervisee_id=sid, full_name=name, case_number=case, office_id=office,
                certainty="certain" if closest <= body.radius_m else "possible",
                closest_m=round(closest, 1), first_near=first, last_near=last, fixes_near=fixes,
                evidence_complete=fixes <= body.evidence_limit, evidence=[])
        person.evidence.append(EvidenceFix(
            time=fix_time, device_id=dev, lon=lon, lat=lat, accuracy=acc, provider=provider,
            distance_m=round(d, 1), within=d <= body.radius_m))
    return list(people.values())


def _audit_detail(body: ProximityIn, place: PlaceOut) -> dict[str, Any]:
    return {"place": {"lon": body.place.lon, "lat": body.place.lat, "crs": body.place.crs.value,
                      "wgs84": [place.wgs84_lon, place.wgs84_lat]},
            "radius_m": body.radius_m, "start": body.start.isoformat(),
            "end": body.end.isoformat()}


@router.post("/investigations/proximity", response_model=ProximityOut, **access(SUPERVISORS))
def proximity(body: ProximityIn, ctx: CurrentStaff, session: SessionDep,
              request: Request) -> ProximityOut:
    """Who of the caller's jurisdiction was within `radius_m` of `place` in [from, to) (at most
    7 days), counting a fix whose accuracy circle reaches the place; each person with the
    closest distance, first and last time near, and their near fixes as evidence. Audited."""
    _check_window(body)
    place = _place(body)
    people = people_near(session, ctx, body, place)
    audit(session, ctx, request, "location.proximity_search",
          f"place:{place.wgs84_lon:.6f},{place.wgs84_lat:.6f}", body.purpose,
          **_audit_detail(body, place), people=len(people),
          supervisee_ids=sorted(p.supervisee_id for p in people))
    session.commit()
    return ProximityOut(place=place, radius_m=body.radius_m, start=body.start, end=body.end,
                        usable_accuracy_m=USABLE_ACCURACY_M, people=people)


@router.post("/supervisees/{supervisee_id}/proximity", response_model=CaseProximityOut,
             **access(SUPERVISORS))
def case_proximity(supervisee_id: DbId, body: ProximityIn, ctx: CurrentStaff,
                   session: SessionDep, request: Request) -> CaseProximityOut:
    """Case review: was this person within `radius_m` of `place` in [from, to); the same
    answer as `POST /investigations/proximity` for one person. Audited."""
    supervisee_in_jurisdiction(session, ctx, supervisee_id)
    _check_window(body)
    place = _place(body)
    people = people_near(session, ctx, body, place, supervisee_id)
    audit(session, ctx, request, "location.proximity_check", f"supervisee:{supervisee_id}",
          body.purpose, **_audit_detail(body, place), people=len(people),
          near=bool(people), fixes=sum(p.fixes_near for p in people))
    session.commit()
    return CaseProximityOut(place=place, radius_m=body.radius_m, start=body.start, end=body.end,
                            usable_accuracy_m=USABLE_ACCURACY_M, people=people, near=bool(people))
