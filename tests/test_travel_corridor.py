"""Approved travel is not a violation on the way: the corridor between home and destination.

Engine-level tests drive `evaluate` with train journeys along the real rail routes between the
real boundaries (Wuchang district, Beijing, Shanghai; GCJ-02 as shipped). One integration test
checks that the registry builds the corridor from a stored, approved permit.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import cache

import orjson
import psycopg
import pytest
from pyproj import Geod

from geofence.corridor import (
    MAX_HALF_WIDTH_M,
    MAX_TRANSIT_S,
    MIN_HALF_WIDTH_M,
    MIN_TRANSIT_S,
    Corridor,
    build_corridor,
    corridor_zone_id,
    half_width_m,
    transit_s,
    transit_windows,
    with_corridor,
)
from geofence.engine import evaluate
from geofence.model import (
    CRS,
    Decision,
    DeviceState,
    Event,
    EventKind,
    Fix,
    Permit,
    Subject,
    ZoneKind,
)
from geofence.zones import PreparedZone, prepare_zone
from ingest.pipeline import Channel, Pipeline, RawMessage
from store.demo import create_zone, load_regions
from store.registry import Registry
from tests.conftest import JIANGAN, Org
from tests.geo import deep_inside

HOUR, DAY = 3600.0, 86400.0
WUCHANG, BEIJING, SHANGHAI = "420106", "110100", "310100"
HOME_ID, BEIJING_ID, SHANGHAI_ID = 1, 2, 3
PERMIT_ID = 41
CORRIDOR_ID = corridor_zone_id(PERMIT_ID)
GRACE = 24 * HOUR  # the national profile's return grace
DEV = "phone-1"
T0 = datetime(2024, 5, 6, 8, 0, tzinfo=UTC).timestamp()  # the permit's start
_GEOD = Geod(ellps="WGS84")

# Stations (WGS-84) of the Beijing–Guangzhou high-speed line north of Wuhan: it swings west
# through Zhengzhou, ~90 km outside the straight hull of Wuchang and Beijing.
WUHAN_STATION = (114.424, 30.607)  # in Hongshan district: already outside Wuchang
TO_BEIJING = [WUHAN_STATION,
              (113.969, 31.098), (114.100, 31.560), (114.131, 32.138),  # Xiaogan N, Dawu, Xinyang E
              (113.990, 32.985), (113.963, 33.580), (113.880, 34.030),  # Zhumadian W, Luohe W, Xuchang E
              (113.772, 34.758), (114.390, 36.100), (114.560, 36.610),  # Zhengzhou E, Anyang E, Handan E
              (114.487, 38.012), (115.050, 38.530), (115.563, 38.864),  # Shijiazhuang, Dingzhou E, Baoding E
              (116.000, 39.480), (116.322, 39.895)]  # Zhuozhou E, Beijing West
BEIJING_CENTRE = (116.397, 39.909)
# Wuhan–Hefei–Nanjing–Shanghai: east from Wuhan, away from the way to Beijing.
TO_SHANGHAI = [WUHAN_STATION,
               (114.550, 31.300), (115.050, 31.220), (115.880, 31.680),  # Hong'an W, Macheng N, Jinzhai
               (116.520, 31.740), (117.290, 31.800), (118.797, 31.969),  # Lu'an, Hefei S, Nanjing S
               (119.970, 31.860), (120.640, 31.420), (121.320, 31.194)]  # Changzhou N, Suzhou N, Hongqiao
ZHENGZHOU = (113.665, 34.757)
HEFEI_LON = 117.29

TRAIN_MPS = 300 / 3.6
ACCURACIES = (12.0, 25.0, 8.0, 40.0, 150.0, 18.0, 60.0, 350.0, 30.0, 15.0)  # 350 m: decides nothing


@cache
def _zone(adcode: str, zone_id: int) -> PreparedZone:
    for name in ("wuhan.geojson", "destinations.geojson"):
        for f in load_regions(name)["features"]:
            if f["properties"]["adcode"] == adcode:
                return prepare_zone(zone_id, f["geometry"], CRS.GCJ02)
    raise KeyError(adcode)


@cache
def beijing_corridor() -> Corridor:
    return build_corridor(CORRIDOR_ID, _zone(WUCHANG, HOME_ID), _zone(BEIJING, BEIJING_ID))


def zones() -> dict[int, PreparedZone]:
    c = beijing_corridor()
    return {HOME_ID: _zone(WUCHANG, HOME_ID), BEIJING_ID: _zone(BEIJING, BEIJING_ID),
            CORRIDOR_ID: c.zone}


def beijing_permit(start: float = T0, days: float = 5.0, corridor: bool = True) -> Permit:
    """As the registry builds it: the end carries the return grace, the corridor its windows."""
    approved_end = start + days * DAY
    p = Permit(BEIJING_ID, start, approved_end + GRACE)
    return with_corridor(p, beijing_corridor(), approved_end) if corridor else p


def subject(*permits: Permit) -> dict[str, Subject]:
    return {DEV: Subject(supervisee_id=1, home_zone_id=HOME_ID, permits=permits)}


class Trip:
    """A phone's fixes along a journey: every few minutes, some missing, mixed accuracy."""

    def __init__(self, t: float) -> None:
        self.t = t
        self.fixes: list[Fix] = []
        self._k = 0
        self.marks: dict[str, float] = {}

    def _emit(self, lon: float, lat: float, speed: float, crs: CRS = CRS.WGS84) -> None:
        self._k += 1
        if self._k % 7 == 0:  # lost: tunnel, no signal, batched upload that never came
            return
        acc = ACCURACIES[self._k % len(ACCURACIES)]
        self.fixes.append(Fix(DEV, self.t, lon, lat, crs, accuracy=acc, speed=speed,
                              provider="fused"))

    def home(self, until: float, every: float = 900.0) -> Trip:
        lon, lat = deep_inside(WUCHANG)
        while self.t < until:
            self._emit(lon, lat, 0.0, CRS.GCJ02)
            self.t += every
        return self

    def stay(self, at: tuple[float, float], until: float, every: float = 900.0) -> Trip:
        while self.t < until:
            self._emit(at[0], at[1], 0.0)
            self.t += every
        return self

    def ride(self, route: Sequence[tuple[float, float]], speed: float = TRAIN_MPS,
             every: float = 180.0) -> Trip:
        """Along `route` at `speed`, a fix every `every` seconds."""
        for (lon1, lat1), (lon2, lat2) in zip(route, route[1:], strict=False):
            az, _, leg = _GEOD.inv(lon1, lat1, lon2, lat2)
            t_leg, t_end = 0.0, leg / speed
            while t_leg < t_end:
                lon, lat, _ = _GEOD.fwd(lon1, lat1, az, t_leg * speed)
                self._emit(lon, lat, speed)
                self.t += every
                t_leg += every
        return self

    def mark(self, name: str) -> Trip:
        self.marks[name] = self.t
        return self


def run(fixes: Sequence[Fix], subjects: dict[str, Subject],
        zs: dict[int, PreparedZone]) -> tuple[list[Event], list[Decision]]:
    """Batches of ten fixes, each judged shortly after its last fix arrived."""
    states: dict[str, DeviceState] = {}
    events: list[Event] = []
    decisions: list[Decision] = []
    for k in range(0, len(fixes), 10):
        batch = fixes[k:k + 10]
        res = evaluate(batch, subjects, zs, states, now=batch[-1].time + 5)
        states = res.carry(states)
        events += res.events
        decisions += res.decisions
    return events, decisions


def exits(events: list[Event]) -> list[Event]:
    return [e for e in events if e.kind == EventKind.AREA_EXIT]


def beijing_round_trip(start: float = T0) -> Trip:
    """Home, train to Beijing on the first day, four days there, back on the last day."""
    trip = Trip(start - 6 * HOUR).home(start + 0.5 * HOUR)
    trip.stay(WUHAN_STATION, start + 1.2 * HOUR, every=300).mark("departs")
    trip.ride(TO_BEIJING).mark("arrives").ride([TO_BEIJING[-1], BEIJING_CENTRE], speed=8.0)
    trip.stay(BEIJING_CENTRE, start + 4.6 * DAY)
    trip.stay(TO_BEIJING[-1], start + 4.7 * DAY, every=300).mark("leaves")
    trip.ride(TO_BEIJING[::-1]).mark("back").home(start + 7 * DAY)
    return trip


# --- the corridor and its windows --------------------------------------------------------------

def test_corridor_width_grows_with_distance_between_a_floor_and_a_cap():
    assert half_width_m(10_000) == MIN_HALF_WIDTH_M
    assert half_width_m(300_000) == pytest.approx(60_000)
    assert half_width_m(5_000_000) == MAX_HALF_WIDTH_M
    assert transit_s(5_000) == MIN_TRANSIT_S
    assert transit_s(600_000) == pytest.approx(12 * HOUR)  # 10 h at 60 km/h + 2 h
    assert transit_s(4_000_000) == MAX_TRANSIT_S


def test_beijing_corridor_holds_the_rail_line_and_excludes_shanghai_and_hefei():
    c = beijing_corridor()
    assert c.distance_m == pytest.approx(1_086_000, rel=0.02)
    assert c.half_width_m == MAX_HALF_WIDTH_M
    assert c.transit_s == pytest.approx(20.1 * HOUR, rel=0.02)
    for station in TO_BEIJING:  # with room to spare for GPS error and the real track
        assert c.zone.signed_distance(*station) < -20_000, station
    assert c.zone.signed_distance(121.47, 31.23) > 400_000  # Shanghai
    assert c.zone.signed_distance(HEFEI_LON, 31.80) > 50_000
    assert c.zone.zone_id == CORRIDOR_ID < 0  # never a stored zone's id


def test_transit_windows_open_at_the_start_and_before_the_end_through_the_grace():
    end = T0 + 5 * DAY
    assert transit_windows(T0, end, end + GRACE, 20 * HOUR) == (
        (T0, T0 + 20 * HOUR), (end - 20 * HOUR, end + GRACE))
    # A day trip: travelling the whole time.
    assert transit_windows(T0, T0 + 10 * HOUR, T0 + 34 * HOUR, 8 * HOUR) == ((T0, T0 + 34 * HOUR),)
    # Checked in early (the permit ends at the check-in): the return window stops there.
    assert transit_windows(T0, end, end - HOUR, 20 * HOUR) == (
        (T0, T0 + 20 * HOUR), (end - 20 * HOUR, end - HOUR))


def test_corridor_is_allowed_only_in_transit_and_within_the_permit():
    subj = subject(beijing_permit())[DEV]
    assert subj.allowed_zone_ids(T0 - 60) == [HOME_ID]
    assert subj.allowed_zone_ids(T0 + HOUR) == [HOME_ID, BEIJING_ID, CORRIDOR_ID]
    assert subj.allowed_zone_ids(T0 + 2 * DAY) == [HOME_ID, BEIJING_ID]
    assert subj.allowed_zone_ids(T0 + 5 * DAY) == [HOME_ID, BEIJING_ID, CORRIDOR_ID]
    assert subj.allowed_zone_ids(T0 + 6 * DAY + 60) == [HOME_ID]
    # The permit as other code builds it: no corridor.
    assert Permit(BEIJING_ID, T0, T0 + DAY).corridor_zone_id is None


# --- journeys through the engine ------------------------------------------------------------

def test_approved_train_trip_to_beijing_raises_no_exit_on_the_way_there_or_back():
    trip = beijing_round_trip()
    events, decisions = run(trip.fixes, subject(beijing_permit()), zones())
    assert exits(events) == []
    assert [e.kind for e in events if e.kind == EventKind.AREA_RETURN] == []
    # 300 km/h is a train, not a teleport: no suspected spoofing either.
    assert [e for e in events if e.kind == EventKind.SPOOFING] == []
    # The trip did leave the home area, and covered the whole line both ways.
    on_train = [d for d in decisions if trip.marks["departs"] < d.fix.time < trip.marks["arrives"]]
    assert len(on_train) > 60 and all(d.membership != "outside" for d in on_train)
    assert sum(d.membership == "inside" for d in on_train) > 40
    # The same fixes under a permit without a corridor: exits in transit (already at Wuhan
    # station, outside Wuchang district), both ways.
    events, _ = run(trip.fixes, subject(beijing_permit(corridor=False)), zones())
    assert any(T0 <= e.fix_time < trip.marks["arrives"] for e in exits(events))
    assert any(trip.marks["leaves"] <= e.fix_time < trip.marks["back"] for e in exits(events))


def test_same_trip_ending_in_shanghai_raises_an_exit_before_hefei():
    trip = Trip(T0 - 6 * HOUR).home(T0 + 0.5 * HOUR)
    trip.stay(WUHAN_STATION, T0 + 1.2 * HOUR, every=300).mark("departs")
    trip.ride(TO_SHANGHAI).stay((121.47, 31.23), T0 + 2 * DAY)
    events, _ = run(trip.fixes, subject(beijing_permit()), zones())
    [first, *_] = exits(events)
    # Caught on the way, after Lu'an, before Hefei: ~345 km and about 70 min after Wuhan.
    assert first.lon < HEFEI_LON
    assert first.fix_time - trip.marks["departs"] < 90 * 60
    assert beijing_corridor().zone.signed_distance(first.lon, first.lat) > 0
    assert HOME_ID in dict(first.reason.detail)["allowed_zones"]


def test_stopping_in_zhengzhou_on_a_beijing_permit_is_caught_when_transit_ends():
    trip = Trip(T0 - 6 * HOUR).home(T0 + 0.5 * HOUR)
    trip.stay(WUHAN_STATION, T0 + 1.2 * HOUR, every=300)
    trip.ride(TO_BEIJING[:8]).stay(ZHENGZHOU, T0 + 3 * DAY)
    events, _ = run(trip.fixes, subject(beijing_permit()), zones())
    [first, *_] = exits(events)
    closes = T0 + beijing_corridor().transit_s
    assert closes <= first.fix_time < closes + HOUR  # allowed while plausibly travelling, no more
    assert first.since is not None and first.since >= closes


def test_staying_in_beijing_past_the_end_and_the_grace_raises_an_exit():
    start = T0
    trip = Trip(start - 6 * HOUR).home(start + 0.5 * HOUR)
    trip.stay(WUHAN_STATION, start + 1.2 * HOUR, every=300)
    trip.ride(TO_BEIJING).stay(BEIJING_CENTRE, start + 8 * DAY)
    permit = beijing_permit(start)
    events, _ = run(trip.fixes, subject(permit), zones())
    [first, *_] = exits(events)
    assert permit.end == start + 5 * DAY + GRACE
    assert permit.end <= first.fix_time < permit.end + HOUR


def test_travelling_before_the_permit_starts_raises_an_exit():
    starts = T0 + DAY  # the person leaves a day early
    trip = Trip(T0 - 6 * HOUR).home(T0 + 0.5 * HOUR)
    trip.stay(WUHAN_STATION, T0 + 1.2 * HOUR, every=300).ride(TO_BEIJING)
    trip.stay(BEIJING_CENTRE, T0 + 3 * DAY)
    events, _ = run(trip.fixes, subject(beijing_permit(starts)), zones())
    [first, *_] = exits(events)
    assert first.fix_time < T0 + 2 * HOUR  # at the station or on the first stretch of line


# --- the registry on the real database ---------------------------------------------------------

def _approved_beijing_permit(db: psycopg.Connection, session, org: Org, start: datetime,
                             days: float) -> tuple[int, int]:
    from store.models import OrgUnit

    f = next(f for f in load_regions("destinations.geojson")["features"]
             if f["properties"]["adcode"] == BEIJING)
    city = session.get(OrgUnit, org.city_id)
    dest = create_zone(session, city, "北京市", f["geometry"], CRS.GCJ02, kind=ZoneKind.DESTINATION)
    session.commit()
    pid = db.execute(
        """INSERT INTO travel_permits (supervisee_id, office_id, reason, destination_zone_id,
                  start_at, end_at, approved_end_at, status, required_tier, profile)
           VALUES (%s, %s, 'family', %s, %s, %s, %s, 'approved', 'office', 'test')
           RETURNING id""",
        (org.supervisee_id, org.office_ids[JIANGAN], dest.id, start,
         start + timedelta(days=days), start + timedelta(days=days))).fetchone()[0]
    return pid, dest.id


def test_registry_builds_the_corridor_and_a_fix_on_the_way_is_judged_inside(
        db: psycopg.Connection, session, org: Org, settings, rds):
    start = datetime.now(UTC) - timedelta(hours=2)  # on the train now
    pid, dest = _approved_beijing_permit(db, session, org, start, 5)
    db.execute("INSERT INTO devices (id, supervisee_id, secret_hash) VALUES ('dtrip', %s, 'x')",
               (org.supervisee_id,))
    reg = Registry(rds, settings.redis_prefix)
    reg.refresh_if_changed()
    info = reg.lookup(db, ["dtrip"])["dtrip"]
    [permit] = info.subject.permits
    cid = corridor_zone_id(pid)
    assert (permit.zone_id, permit.corridor_zone_id) == (dest, cid)
    assert cid in reg.zones and reg.zones[cid].zone_id == cid
    # Jiang'an → Beijing: the outbound window is about 20 h from the start.
    (a, b), (c, d) = permit.transit
    assert a == start.timestamp() and b - a == pytest.approx(20 * HOUR, rel=0.05)
    assert d == permit.end == pytest.approx((start + timedelta(days=6)).timestamp())
    assert reg.zones[cid].signed_distance(*TO_BEIJING[7]) < 0  # Zhengzhou East

    # Through the pipeline: a fix near Xinyang now is inside; the same fix is outside the
    # Jiang'an home area, so only the corridor can make it so.
    now = time.time()
    p = Pipeline.connect(settings)
    try:
        body = [{"time": now - 120 + 40 * k, "lon": TO_BEIJING[3][0], "lat": TO_BEIJING[3][1],
                 "accuracy": 20, "crs": "wgs84", "speed": 80} for k in range(4)]
        p.process([RawMessage(Channel.NATIVE_MQTT, orjson.dumps(body), "dtrip", "t")], now=now)
    finally:
        p.close()
    rows = db.execute("SELECT membership FROM positions ORDER BY fix_time").fetchall()
    assert rows == [("inside",)] * 4
    assert db.execute("SELECT count(*) FROM alerts WHERE kind = 'area_exit'").fetchone() == (0,)
    assert reg.zones[org.zone_ids[JIANGAN]].signed_distance(*TO_BEIJING[3]) > 100_000


def test_registry_reuses_a_corridor_and_drops_it_once_the_permit_is_gone(
        db: psycopg.Connection, session, org: Org, settings, rds):
    from store.registry import bump_config_version

    start = datetime.now(UTC) - timedelta(hours=2)
    pid, _ = _approved_beijing_permit(db, session, org, start, 5)
    db.execute("INSERT INTO devices (id, supervisee_id, secret_hash) VALUES ('dtrip', %s, 'x')",
               (org.supervisee_id,))
    cid = corridor_zone_id(pid)
    reg = Registry(rds, settings.redis_prefix)
    reg.refresh_if_changed()
    reg.lookup(db, ["dtrip"])
    built = reg.zones[cid]
    bump_config_version(rds, settings.redis_prefix)  # an unrelated change: reloaded, not rebuilt
    reg.refresh_if_changed()
    [permit] = reg.lookup(db, ["dtrip"])["dtrip"].subject.permits
    assert permit.corridor_zone_id == cid and reg.zones[cid] is built
    db.execute("UPDATE travel_permits SET status = 'revoked' WHERE id = %s", (pid,))
    for _ in range(2):  # unused for a whole generation: gone
        bump_config_version(rds, settings.redis_prefix)
        reg.refresh_if_changed()
        assert reg.lookup(db, ["dtrip"])["dtrip"].subject.permits == ()
    assert cid not in reg.zones
    assert org.zone_ids[JIANGAN] in reg.zones  # stored zones stay cached
