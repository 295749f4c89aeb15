"""Points in and around the real Wuhan districts, for tests."""

from __future__ import annotations

from functools import cache

from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from store.demo import load_regions


@cache
def district(adcode: str) -> BaseGeometry:
    """A district boundary as shipped (GCJ-02)."""
    f = next(f for f in load_regions()["features"] if f["properties"]["adcode"] == adcode)
    return shape(f["geometry"])


def deep_inside(adcode: str) -> tuple[float, float]:
    """A GCJ-02 point well inside the district (its most interior point)."""
    from shapely import maximum_inscribed_circle

    p = maximum_inscribed_circle(district(adcode)).coords[0]
    return p[0], p[1]


def near_border(home: str, toward: str, metres: float) -> tuple[float, float]:
    """A GCJ-02 point `metres` beyond `home`'s border on the way to `toward` (negative: inside)."""
    import math

    from shapely.geometry import Point
    from shapely.ops import nearest_points

    target = Point(deep_inside(toward))
    edge = nearest_points(district(home).boundary, target)[0]
    dx, dy = target.x - edge.x, target.y - edge.y
    # Local metres per degree at this latitude (precise enough for a test fixture).
    mx, my = 111_320 * math.cos(math.radians(edge.y)), 110_574
    norm = math.hypot(dx * mx, dy * my)
    return edge.x + dx * metres / norm, edge.y + dy * metres / norm
