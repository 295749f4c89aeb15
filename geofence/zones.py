"""Zone geometry: validation of drawn zones and prepared, metric geometry for fast membership."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyproj
import shapely
from shapely.geometry import MultiPolygon, shape
from shapely.geometry.base import BaseGeometry

from geofence.model import CRS, Membership, ZoneKind

# Accuracy buckets for the fast path: a point whose circle fits the bucket is decided by a cheap
# point-in-polygon test against the eroded/dilated zone; only points near the border need the
# exact distance. Margins cover the polygonal approximation of round buffer joins.
ACCURACY_BUCKETS_M = (10.0, 25.0, 50.0, 100.0, 200.0, 500.0)
SEGMENT_DEG = 0.002  # about 200 m
_BUFFER_SAFETY = 1.01
_BUFFER_PAD_M = 0.5

# Vectorised membership codes (index into MEMBERSHIPS).
M_UNDECIDABLE, M_INSIDE, M_OUTSIDE, M_BORDER = 0, 1, 2, 3
MEMBERSHIPS = (Membership.UNDECIDABLE, Membership.INSIDE, Membership.OUTSIDE, Membership.BORDER)

MIN_ZONE_AREA_M2 = 100.0  # smaller than a room: a drawing mistake
MAX_ZONE_AREA_M2 = 2.0e12  # larger than any Chinese province


class InvalidZone(ValueError):
    """A zone geometry that cannot be accepted as drawn."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _local_projection(lon0: float, lat0: float) -> pyproj.Transformer:
    # Transverse Mercator centred on the zone: scale error < 5e-5 within 60 km of the centre,
    # so distances in metres are right at any latitude in China.
    proj = pyproj.CRS.from_proj4(
        f"+proj=tmerc +lat_0={lat0:.7f} +lon_0={lon0:.7f} +k=1 +ellps=WGS84 +units=m +no_defs"
    )
    return pyproj.Transformer.from_crs("EPSG:4326", proj, always_xy=True)


def _check_ring(ring: Any, where: str) -> None:
    if not isinstance(ring, list | tuple) or len(ring) < 4:
        raise InvalidZone("too_few_points", f"{where}: a ring needs at least 4 positions")
    for pos in ring:
        if (
            not isinstance(pos, list | tuple)
            or len(pos) < 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in pos[:2])
            or not all(math.isfinite(float(v)) for v in pos[:2])
        ):
            raise InvalidZone("bad_position", f"{where}: position {pos!r} is not [lon, lat]")
        if not (-180 <= pos[0] <= 180 and -90 <= pos[1] <= 90):
            raise InvalidZone("impossible_coordinates", f"{where}: {pos!r} is off the globe")
    if list(ring[0][:2]) != list(ring[-1][:2]):
        raise InvalidZone("open_ring", f"{where}: first and last positions differ")


def parse_zone_geojson(obj: Any, crs: CRS) -> MultiPolygon:
    """Validate a GeoJSON Polygon/MultiPolygon and return it as a WGS-84 MultiPolygon."""
    from geofence.crs import transform_geometry

    if not isinstance(obj, dict) or obj.get("type") not in ("Polygon", "MultiPolygon"):
        raise InvalidZone("bad_type", "geometry must be a GeoJSON Polygon or MultiPolygon")
    coords = obj.get("coordinates")
    polys = [coords] if obj["type"] == "Polygon" else coords
    if not isinstance(polys, list | tuple) or not polys:
        raise InvalidZone("bad_coordinates", "no polygons")
    for i, poly in enumerate(polys):
        if not isinstance(poly, list | tuple) or not poly:
            raise InvalidZone("bad_coordinates", f"polygon {i} has no rings")
        for j, ring in enumerate(poly):
            _check_ring(ring, f"polygon {i} ring {j}")
    geom = shape(obj)
    if not geom.is_valid:
        reason = shapely.is_valid_reason(geom)
        if isinstance(geom, MultiPolygon):
            # Which of the file's polygons is wrong, when one is by itself (not two overlapping).
            bad = next((i for i, g in enumerate(geom.geoms) if not g.is_valid), None)
            if bad is not None:
                reason = f"polygon {bad}: {shapely.is_valid_reason(geom.geoms[bad])}"
        raise InvalidZone("invalid_geometry", reason)
    geom = transform_geometry(geom, crs, CRS.WGS84)
    mp = geom if isinstance(geom, MultiPolygon) else MultiPolygon([geom])
    c = mp.centroid
    projected = shapely.transform(mp, _projector(_local_projection(c.x, c.y)))
    if projected.area < MIN_ZONE_AREA_M2:
        raise InvalidZone("absurd_size", f"area {projected.area:.0f} m² is too small")
    if projected.area > MAX_ZONE_AREA_M2:
        raise InvalidZone("absurd_size", f"area {projected.area / 1e6:.0f} km² is too large")
    return mp


MIN_CIRCLE_M, MAX_CIRCLE_M = 10.0, 50_000.0


def circle_zone(lon: float, lat: float, radius_m: float, crs: CRS) -> MultiPolygon:
    """A circle (centre drawn in `crs`, radius in metres) as a 128-gon in WGS-84."""
    from geofence.crs import point_to_wgs84

    if not (math.isfinite(lon) and math.isfinite(lat) and -180 <= lon <= 180 and -90 <= lat <= 90):
        raise InvalidZone("impossible_coordinates", f"centre ({lon}, {lat}) is off the globe")
    if not (math.isfinite(radius_m) and MIN_CIRCLE_M <= radius_m <= MAX_CIRCLE_M):
        raise InvalidZone("absurd_size",
                          f"radius {radius_m} m outside {MIN_CIRCLE_M:.0f}..{MAX_CIRCLE_M:.0f} m")
    wlon, wlat = point_to_wgs84(lon, lat, crs)
    tr = _local_projection(wlon, wlat)
    disc = shapely.Point(0.0, 0.0).buffer(radius_m, quad_segs=32)
    back = shapely.transform(disc, lambda a: np.column_stack(
        tr.transform(a[:, 0], a[:, 1], direction="INVERSE")))
    return MultiPolygon([back])


def _projector(tr: pyproj.Transformer) -> Any:
    def f(a: np.ndarray) -> np.ndarray:
        x, y = tr.transform(a[:, 0], a[:, 1])
        return np.column_stack([x, y])

    return f


@dataclass
class PreparedZone:
    """A zone in its own metric projection, prepared for vectorised membership tests."""

    zone_id: int
    version: int
    kind: ZoneKind
    geom_wgs84: BaseGeometry
    transformer: pyproj.Transformer = field(init=False, repr=False)
    geom: BaseGeometry = field(init=False, repr=False)
    boundary: BaseGeometry = field(init=False, repr=False)
    _inner: dict[float, BaseGeometry] = field(default_factory=dict, init=False, repr=False)
    _outer: dict[float, BaseGeometry] = field(default_factory=dict, init=False, repr=False)
    _seg_tree: shapely.STRtree | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        c = self.geom_wgs84.centroid
        self.transformer = _local_projection(c.x, c.y)
        # GeoJSON edges are straight in lon/lat (as PostGIS geometry and web maps draw them);
        # densified to ~200 m they stay so after projection, whatever the edge length.
        dense = shapely.segmentize(self.geom_wgs84, SEGMENT_DEG)
        self.geom = shapely.transform(dense, _projector(self.transformer))
        self.boundary = self.geom.boundary
        shapely.prepare(self.geom)
        shapely.prepare(self.boundary)

    def project(self, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """WGS-84 lon/lat to this zone's metric plane."""
        x, y = self.transformer.transform(lon, lat)
        return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)

    def _band(self, bucket: float) -> tuple[BaseGeometry, BaseGeometry]:
        if bucket not in self._inner:
            d = bucket * _BUFFER_SAFETY + _BUFFER_PAD_M
            inner = self.geom.buffer(-d, quad_segs=16)
            outer = self.geom.buffer(d, quad_segs=16)
            shapely.prepare(inner)
            shapely.prepare(outer)
            self._inner[bucket], self._outer[bucket] = inner, outer
        return self._inner[bucket], self._outer[bucket]

    def membership(
        self, lon: np.ndarray, lat: np.ndarray, accuracy: np.ndarray
    ) -> np.ndarray:
        """Where each accuracy circle lies: codes M_INSIDE, M_OUTSIDE or M_BORDER (int8 array)."""
        x, y = self.project(lon, lat)
        n = len(x)
        out = np.full(n, M_BORDER, dtype=np.int8)
        acc = np.asarray(accuracy, dtype=np.float64)
        undecided = np.ones(n, dtype=bool)
        bucket_idx = np.searchsorted(np.asarray(ACCURACY_BUCKETS_M), acc, side="left")
        for b, bucket in enumerate(ACCURACY_BUCKETS_M):
            sel = np.flatnonzero(bucket_idx == b)
            if sel.size == 0:
                continue
            inner, outer = self._band(bucket)
            surely_in = shapely.contains_xy(inner, x[sel], y[sel])
            surely_out = ~shapely.contains_xy(outer, x[sel], y[sel])
            out[sel[surely_in]] = M_INSIDE
            out[sel[surely_out]] = M_OUTSIDE
            undecided[sel[surely_in | surely_out]] = False
        rest = np.flatnonzero(undecided)
        if rest.size:
            pts = shapely.points(x[rest], y[rest])
            near = shapely.dwithin(self.boundary, pts, acc[rest])
            inside = shapely.contains_xy(self.geom, x[rest], y[rest])
            out[rest] = np.where(near, M_BORDER, np.where(inside, M_INSIDE, M_OUTSIDE))
        return out

    def segments_cross(
        self, lon1: np.ndarray, lat1: np.ndarray, lon2: np.ndarray, lat2: np.ndarray,
        margin: np.ndarray, keys: np.ndarray,
    ) -> dict[tuple[int, int], bool]:
        """For each segment: does it pass through the zone deeper than `margin` metres?

        The zone is eroded by the larger accuracy of the two ends, so only a crossing that no
        position error could explain counts. Margins beyond the largest bucket decide nothing.
        """
        x1, y1 = self.project(lon1, lat1)
        x2, y2 = self.project(lon2, lat2)
        out: dict[tuple[int, int], bool] = {}
        bucket_idx = np.searchsorted(np.asarray(ACCURACY_BUCKETS_M), margin, side="left")
        for b, bucket in enumerate(ACCURACY_BUCKETS_M):
            sel = np.flatnonzero(bucket_idx == b)
            if sel.size == 0:
                continue
            inner, _ = self._band(bucket)
            coords = np.stack([np.column_stack([x1[sel], y1[sel]]),
                               np.column_stack([x2[sel], y2[sel]])], axis=1)
            # Only a pass *through*: a segment starting or ending inside is an entry (debounced
            # by its own rule), not a crossing a single jittery fix could fake.
            hits = (shapely.intersects(inner, shapely.linestrings(coords))
                    & ~shapely.contains_xy(inner, x1[sel], y1[sel])
                    & ~shapely.contains_xy(inner, x2[sel], y2[sel]))
            out.update({(int(k), self.zone_id): bool(h) for k, h in zip(keys[sel], hits, strict=True)})
        return out

    def distance(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """Metres from each point to the zone (0 inside): how far beyond its border a fix lies.

        The nearest of the border's segments, found through an STRtree: a few microseconds a
        point however long the border, where a plain polygon distance walks every vertex.
        """
        x, y = self.project(lon, lat)
        out = np.zeros(len(x), dtype=np.float64)
        outside = ~shapely.contains_xy(self.geom, x, y)
        if outside.any():
            pts = shapely.points(x[outside], y[outside])
            _, dist = self._segments().query_nearest(pts, return_distance=True, all_matches=False)
            out[outside] = dist
        return out

    def _segments(self) -> shapely.STRtree:
        if self._seg_tree is None:
            parts = shapely.get_parts(shapely.get_parts(self.boundary))
            segs = []
            for line in parts:
                c = shapely.get_coordinates(line)
                segs.append(np.stack([c[:-1], c[1:]], axis=1))
            self._seg_tree = shapely.STRtree(shapely.linestrings(np.concatenate(segs)))
        return self._seg_tree

    def signed_distance(self, lon: float, lat: float) -> float:
        """Metres from the border: positive outside the zone, negative inside."""
        if not (math.isfinite(lon) and math.isfinite(lat)):
            return float("nan")
        x, y = self.project(np.array([lon]), np.array([lat]))
        p = shapely.points(x[0], y[0])
        d = float(shapely.distance(self.boundary, p))
        return -d if shapely.contains_xy(self.geom, x[0], y[0]) else d


def prepare_zone(zone_id: int, geojson: Any, crs: CRS, kind: ZoneKind = ZoneKind.HOME_AREA,
                 version: int = 1) -> PreparedZone:
    """A zone ready for `evaluate`, from a GeoJSON Polygon/MultiPolygon drawn in `crs`.

    The same validation and conversion to WGS-84 as a zone stored through the API; raises
    `InvalidZone` (with `.reason`) for what the API would refuse.
    """
    return PreparedZone(zone_id, version, kind, parse_zone_geojson(geojson, crs))
