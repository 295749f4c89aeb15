"""The pure engine: membership with accuracy, and what changes from fix to fix."""

from __future__ import annotations

import numpy as np
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import Point, box

from geofence.crs import transform_geometry
from geofence.engine import evaluate, fold
from geofence.model import (
    CRS,
    AreaStatus,
    DeviceState,
    EventKind,
    Fix,
    Membership,
    Subject,
    ZoneKind,
)
from geofence.zones import MEMBERSHIPS, PreparedZone
from tests.geo import district

JIANGAN = "420102"


def zone(zone_id: int = 1) -> PreparedZone:
    geom = transform_geometry(district(JIANGAN), CRS.GCJ02, CRS.WGS84)
    return PreparedZone(zone_id, 1, ZoneKind.HOME_AREA, geom)


ZONE = zone()


def test_fold_raises_exit_only_on_the_change_to_outside():
    s0 = DeviceState()
    f = Fix("d", 100.0, 114.3, 30.6, accuracy=5)
    s1, e1 = fold(s0, f, Membership.OUTSIDE)
    s2, e2 = fold(s1, Fix("d", 110.0, 114.3, 30.6, accuracy=5), Membership.OUTSIDE)
    assert (s1.area, e1, e2) == (AreaStatus.OUTSIDE, EventKind.AREA_EXIT, None)
    s3, e3 = fold(s2, Fix("d", 120.0, 114.3, 30.6, accuracy=5), Membership.INSIDE)
    assert (s3.area, e3, s3.area_since, s3.last_fix_time) == (
        AreaStatus.INSIDE, EventKind.AREA_RETURN, 120.0, 120.0)


def test_fold_lets_border_and_undecidable_fixes_change_nothing_but_time():
    s = DeviceState(last_fix_time=50.0, area=AreaStatus.INSIDE, area_since=10.0)
    for m in (Membership.BORDER, Membership.UNDECIDABLE):
        new, ev = fold(s, Fix("d", 60.0, 0, 0), m)
        assert (new.area, new.area_since, new.last_fix_time, ev) == (
            AreaStatus.INSIDE, 10.0, 60.0, None)


def test_first_inside_fix_sets_state_without_an_event():
    new, ev = fold(DeviceState(), Fix("d", 1.0, 0, 0), Membership.INSIDE)
    assert (new.area, ev) == (AreaStatus.INSIDE, None)


def test_state_round_trips_through_its_stored_form():
    s = DeviceState(last_fix_time=12.5, area=AreaStatus.OUTSIDE, area_since=3.0)
    assert DeviceState.from_dict(s.to_dict()) == s
    assert DeviceState.from_dict({}) == DeviceState()


def _exact(zone: PreparedZone, lon: float, lat: float, acc: float) -> Membership:
    x, y = zone.project(np.array([lon]), np.array([lat]))
    p = Point(x[0], y[0])
    d = zone.boundary.distance(p)
    if d <= acc:
        return Membership.BORDER
    return Membership.INSIDE if zone.geom.contains(p) else Membership.OUTSIDE


@settings(max_examples=300, deadline=None)
@given(
    fx=st.floats(0, 1), fy=st.floats(0, 1), acc=st.floats(0, 600),
)
def test_fast_membership_equals_exact_distance_test(fx, fy, acc):
    # Points across the district's bounding box, many near the border; any accuracy.
    minx, miny, maxx, maxy = ZONE.geom_wgs84.bounds
    lon, lat = minx + fx * (maxx - minx), miny + fy * (maxy - miny)
    got = MEMBERSHIPS[ZONE.membership(np.array([lon]), np.array([lat]), np.array([acc]))[0]]
    want = _exact(ZONE, lon, lat, acc)
    if got != want:
        # Only a hair's breadth from the accuracy circle's edge may the two disagree.
        x, y = ZONE.project(np.array([lon]), np.array([lat]))
        assert abs(ZONE.boundary.distance(Point(x[0], y[0])) - acc) < 0.01


def test_signed_distance_is_metres_positive_outside():
    minx, miny, maxx, maxy = ZONE.geom_wgs84.bounds
    far_east = maxx + 0.01  # about 960 m east of the easternmost point
    d = ZONE.signed_distance(far_east, (miny + maxy) / 2)
    assert d > 900
    inner = shapely.maximum_inscribed_circle(ZONE.geom_wgs84).coords[0]
    assert ZONE.signed_distance(*inner) < -500


def test_batch_decides_each_device_in_fix_time_order_and_reports_changed_states():
    inner = shapely.maximum_inscribed_circle(ZONE.geom_wgs84).coords[0]
    out = (ZONE.geom_wgs84.bounds[2] + 0.02, inner[1])
    fixes = [
        Fix("a", 30.0, *inner, accuracy=10),
        Fix("a", 20.0, *out, accuracy=10),
        Fix("a", 10.0, *inner, accuracy=10),
        Fix("b", 10.0, *inner, accuracy=10),
    ]
    subjects = {"a": Subject(1, 1), "b": Subject(2, 1)}
    prior = {"b": DeviceState(5.0, AreaStatus.INSIDE, 5.0)}
    res = evaluate(fixes, subjects, {1: ZONE}, prior, now=40.0)
    assert [(e.kind, e.device_id, e.fix_time) for e in res.events] == [
        (EventKind.AREA_EXIT, "a", 20.0), (EventKind.AREA_RETURN, "a", 30.0)]
    assert res.events[0].reason.distance_m > 10
    assert res.states["a"] == DeviceState(30.0, AreaStatus.INSIDE, 30.0)
    assert res.states["b"].last_fix_time == 10.0


def test_gcj02_fix_is_compared_in_the_zones_system():
    # A point 150 m inside the WGS-84 border, reported in GCJ-02 (where it reads ~500 m away).
    inner_wgs = shapely.maximum_inscribed_circle(ZONE.geom_wgs84).coords[0]
    g = transform_geometry(Point(inner_wgs), CRS.WGS84, CRS.GCJ02)
    res = evaluate([Fix("a", 1.0, g.x, g.y, crs=CRS.GCJ02, accuracy=10)],
                   {"a": Subject(1, 1)}, {1: ZONE}, {}, now=2.0)
    d = res.decisions[0]
    assert d.membership == Membership.INSIDE
    assert abs(d.lon - inner_wgs[0]) < 1e-7 and abs(d.lat - inner_wgs[1]) < 1e-7


def test_unknown_zone_or_subject_leaves_fix_undecidable():
    res = evaluate([Fix("a", 1.0, 114.3, 30.6, accuracy=5)], {"a": Subject(1, None)}, {}, {}, 2.0)
    assert res.decisions[0].membership == Membership.UNDECIDABLE
    assert res.events == []


def test_box_zone_accuracy_buckets_agree_near_the_edge():
    # A 1 km box: points 5 m outside with accuracy 4 m are outside, with 6 m on the border.
    b = box(114.30, 30.60, 114.31, 30.61)
    z = PreparedZone(9, 1, ZoneKind.EXCLUSION, b)
    x, y = z.project(np.array([114.31]), np.array([30.605]))
    lon, lat = z.transformer.transform(x[0] + 5.0, y[0], direction="INVERSE")
    got = z.membership(np.array([lon, lon]), np.array([lat, lat]), np.array([4.0, 6.0]))
    assert [MEMBERSHIPS[g] for g in got] == [Membership.OUTSIDE, Membership.BORDER]
