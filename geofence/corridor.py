"""Travel corridors (外出途中): the way between the home area and an approved destination. Pure.

An approved permit allows the destination; the journey there and back crosses everything in
between. Without a corridor every trip raises area exits in transit. The corridor is allowed
only while the person is plausibly travelling (a transit window at each end of the permit), so
someone who stops half-way, goes elsewhere, or stays away past the return is still caught.

The shape: the convex hull of the home area and the destination, buffered by a half-width that
grows with the distance, in one transverse Mercator plane centred on the corridor. Real routes
are not straight lines: the Wuhan → Beijing high-speed line runs through Zhengzhou, ~90 km
outside the hull of Wuchang district and Beijing, and motorways wander similarly. A fifth of
the distance covers such detours with room to spare; the cap keeps long trips from allowing half
a province. Wuhan (Wuchang) → Beijing, 1,086 km: 150 km, so Zhengzhou East station lies ~60 km
inside, while on the way to Shanghai Lu'an lies ~7 km and Hefei ~78 km outside: a Shanghai trip
on a Beijing permit is caught about 345 km (~70 min by high-speed train) after leaving Wuhan.
The 20 km floor covers the way to a nearby station or airport (Tianhe airport lies ~7 km outside
the hull of Wuchang and Beijing). A tighter shape (e.g. the detour ellipse |HP| + |PD| ≤ (1+ε)
|HD|, narrow near both ends) would catch a wrong direction sooner; not worth its complexity yet.

The transit window: distance / 60 km/h + 2 h, clamped to [3 h, 36 h]: a car, a bus or a slow
overnight train, plus getting to the station. It opens at the permit's start (outbound) and
before the approved end (return), the return window running through the return grace.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import shapely
from pyproj import Geod
from shapely.geometry import MultiPolygon
from shapely.geometry.base import BaseGeometry

from geofence.model import Permit, ZoneKind
from geofence.zones import PreparedZone, _local_projection, _projector

MIN_HALF_WIDTH_M = 20_000.0
WIDTH_FRACTION = 0.20  # of the distance between the home area and the destination
MAX_HALF_WIDTH_M = 150_000.0
TRANSIT_SPEED_MPS = 60_000.0 / 3600.0  # 60 km/h door to door
TRANSIT_SLACK_S = 2 * 3600.0  # to the station, waiting, changing trains
MIN_TRANSIT_S = 3 * 3600.0
MAX_TRANSIT_S = 36 * 3600.0

_GEOD = Geod(ellps="WGS84")


def corridor_zone_id(permit_id: int) -> int:
    """Synthetic zone id of a permit's corridor: negative, so it never collides with a stored zone."""
    if permit_id <= 0:
        raise ValueError(f"permit id {permit_id} must be positive")
    return -permit_id


def trip_distance_m(home: BaseGeometry, destination: BaseGeometry) -> float:
    """Geodesic distance in metres between the centroids of two WGS-84 zones."""
    a, b = home.centroid, destination.centroid
    return float(_GEOD.inv(a.x, a.y, b.x, b.y)[2])


def half_width_m(distance_m: float) -> float:
    """How far beyond the hull of both zones the way may stray: max(20 km, 20 %), at most 150 km."""
    return min(MAX_HALF_WIDTH_M, max(MIN_HALF_WIDTH_M, WIDTH_FRACTION * distance_m))


def transit_s(distance_m: float) -> float:
    """Time allowed for one way: distance at 60 km/h plus 2 h, clamped to [3 h, 36 h]."""
    return min(MAX_TRANSIT_S, max(MIN_TRANSIT_S, distance_m / TRANSIT_SPEED_MPS + TRANSIT_SLACK_S))


def corridor_geometry(home: BaseGeometry, destination: BaseGeometry,
                      half_width: float) -> MultiPolygon:
    """The hull of both WGS-84 zones buffered by `half_width` metres, as a WGS-84 MultiPolygon.

    Buffered in a transverse Mercator plane centred on the hull: within ~1,000 km of its centre
    (further than the capped corridor reaches across) the scale error stays below 0.3 %.
    """
    hull = shapely.union(home, destination).convex_hull
    c = hull.centroid
    tr = _local_projection(c.x, c.y)
    wide = shapely.transform(hull, _projector(tr)).buffer(half_width, quad_segs=16)
    back = shapely.transform(wide, lambda a: np.column_stack(
        tr.transform(a[:, 0], a[:, 1], direction="INVERSE")))
    return back if isinstance(back, MultiPolygon) else MultiPolygon([back])


@dataclass(frozen=True, slots=True)
class Corridor:
    """A permit's corridor zone and the figures it was built from (for the officer and tests)."""

    zone: PreparedZone
    distance_m: float
    half_width_m: float
    transit_s: float


def build_corridor(zone_id: int, home: PreparedZone, destination: PreparedZone,
                   version: int = 1) -> Corridor:
    """The corridor between a home area and a destination, ready for `evaluate` as `zone_id`."""
    distance = trip_distance_m(home.geom_wgs84, destination.geom_wgs84)
    width = half_width_m(distance)
    geom = corridor_geometry(home.geom_wgs84, destination.geom_wgs84, width)
    zone = PreparedZone(zone_id, version, ZoneKind.DESTINATION, geom)
    return Corridor(zone, distance, width, transit_s(distance))


def transit_windows(start: float, approved_end: float, end: float,
                    transit: float) -> tuple[tuple[float, float], ...]:
    """[from, until) spans in which the corridor is allowed: after the start, and before the end.

    `approved_end` is the approved end of the trip, `end` the permit's end in the engine (the
    approved end plus the return grace, or the return check-in if earlier). The return window
    opens `transit` before the approved end, so a person who leaves the destination on the last
    day is covered, and runs through the grace: travelling home is what the grace is for.
    """
    out_until = min(start + transit, end)
    back_from = max(start, approved_end - transit)
    if back_from <= out_until:  # a short trip: travelling the whole time
        return ((start, end),) if start < end else ()
    spans = [(start, out_until), (back_from, end)]
    return tuple((a, b) for a, b in spans if a < b)


def with_corridor(permit: Permit, corridor: Corridor, approved_end: float) -> Permit:
    """`permit` with its corridor allowed during the transit windows."""
    return replace(permit, corridor_zone_id=corridor.zone.zone_id,
                   transit=transit_windows(permit.start, approved_end, permit.end,
                                           corridor.transit_s))
