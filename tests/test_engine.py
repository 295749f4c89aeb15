"""The pure engine: membership with accuracy, and what changes from fix to fix."""

from __future__ import annotations

import numpy as np
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import Point, box

from geofence.crs import transform_geometry
from geofence.engine import evaluate
from geofence.model import CRS, Fix, Membership, Subject, ZoneKind
from geofence.zones import MEMBERSHIPS, PreparedZone
from tests.geo import district

JIANGAN = "420102"


def zone(zone_id: int = 1) -> PreparedZone:
    geom = transform_geometry(district(JIANGAN), CRS.GCJ02, CRS.WGS84)
    return PreparedZone(zone_id, 1, ZoneKind.HOME_AREA, geom)


ZONE = zone()


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
