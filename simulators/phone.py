"""Motion and GPS-noise model of a fleet of simulated phones: pure, vectorised, seeded.

Each phone lives in one district (its home area). It has a home point drawn uniformly inside
the district, dwells, and makes straight trips to other points of the district at walking,
cycling or driving speed. Ordinary phones keep their true position at least
`PhoneConfig.stay_margin_m` inside the district, and every trip segment is checked to stay in
that inner area, so the noise can never push a decidable fix wholly outside (see
`PhoneConfig`). A configurable share of phones are wanderers: at their departure time they
drive to the nearest point of the district boundary and on along the same line until they are
`wander_margin_m` (1–3 km) outside, and stay there.

Each fix carries an accuracy (the radius of the 68 % circle, as Android reports it) and a
position error drawn to match it: mostly GNSS fixes of 3–50 m, some network fixes of
60–1500 m, and rare glitches whose error is a few times the reported accuracy. Phones
configured for GCJ-02 (or BD-09) report their position converted with `geofence.crs`.

Motion is done in a local metric plane per district (equirectangular on the WGS-84 ellipsoid
at the district's centroid: scale error < 0.5 % across a Wuhan district). No I/O, no clock:
times are parameters, and one seed fixes every random draw.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import shapely
from shapely.geometry import MultiPolygon, shape
from shapely.geometry.base import BaseGeometry

from geofence.crs import CRS_CODE, from_wgs84, to_wgs84_mixed, transform_geometry
from geofence.model import CRS

__all__ = [
    "ACCURACY_68_SIGMAS",
    "District",
    "FixBatch",
    "Mode",
    "PhoneConfig",
    "PhoneFleet",
    "Provider",
    "district_index",
    "districts_from_geojson",
    "fix_payload",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

# Android's accuracy is the radius holding 68 % of fixes. For an isotropic 2-D Gaussian with
# per-axis sigma s, P(r <= a) = 1 - exp(-a^2 / 2 s^2), so a = s * sqrt(-2 ln 0.32).
ACCURACY_68_SIGMAS = math.sqrt(-2.0 * math.log(0.32))
# Errors are truncated at 3 sigma (98.9 % of the mass): a fix's error stays below
# 3 / 1.5096 = 1.99 times its accuracy, which bounds how far noise can carry a fix.
_TRUNC_SIGMAS = 3.0
_TRUNC_MASS = 1.0 - math.exp(-0.5 * _TRUNC_SIGMAS**2)

# WGS-84 ellipsoid, for metres per degree at a district's centroid.
_WGS_A = 6378137.0
_WGS_E2 = 0.00669437999014

_TARGET_POOL = 512  # candidate trip destinations sampled per district
_CANDIDATES = 8  # destinations compared against the wanted trip length
_TRIP_TRIES = 6  # destinations tried before a phone gives up and dwells again
_MAX_SUBSTEPS = 32  # dwell/trip transitions handled within one advance() call
_RAY_STEP_M = 50.0
_RAY_MAX_M = 100_000.0


class Mode:
    """What a phone is doing (int8 codes in the state arrays)."""

    DWELL = 0  # at a point inside its district
    TRIP = 1  # travelling to another point inside its district
    WANDER = 2  # a wanderer on its way out of the district
    OUT = 3  # a wanderer that arrived outside and stays there


class Provider:
    """Where a fix came from (int8 codes); `NAMES` gives the wire value."""

    GPS = 0
    NETWORK = 1
    NAMES = ("gps", "network")


@dataclass(frozen=True)
class PhoneConfig:
    """Knobs of the model. Ranges are (low, high) of uniform draws unless said otherwise.

    Invariant kept by the defaults: a fix with accuracy a has error below 1.99 a (GNSS and
    network fixes) or below glitch_factor[1] * a with a <= gps_accuracy_m[1] (glitches), so
    a decidable fix (a <= 200 m) never lies wholly outside the district while its true
    position is more than ~200 m inside: `stay_margin_m` must stay above that.
    """

    wander_share: float = 0.2
    gcj02_share: float = 0.3
    bd09_share: float = 0.0
    stay_margin_m: float = 300.0
    # Wanderers
    wander_margin_m: tuple[float, float] = (1000.0, 3000.0)
    wander_depart_s: tuple[float, float] = (5.0, 60.0)  # after the start time
    # Where a wanderer starts: this far inside the boundary, on the way from its home to the
    # nearest boundary point (None: it starts at home).
    wander_lead_m: tuple[float, float] | None = (50.0, 500.0)
    wander_speed_ms: tuple[float, float] = (8.0, 16.0)
    # Ordinary trips
    dwell_mean_s: float = 300.0
    go_home_share: float = 0.4
    # share, speed range (m/s), typical trip length (m; log-normal around it)
    trip_modes: tuple[tuple[float, float, float, float], ...] = (
        (0.5, 1.0, 1.8, 800.0),  # walking
        (0.25, 3.0, 6.0, 3000.0),  # cycling
        (0.25, 7.0, 15.0, 10000.0),  # driving
    )
    # Fix quality
    gps_accuracy_median_m: float = 10.0
    gps_accuracy_sigma: float = 0.6  # of the log-normal
    gps_accuracy_m: tuple[float, float] = (3.0, 50.0)  # clipped to this range
    network_share: float = 0.05
    network_accuracy_m: tuple[float, float] = (60.0, 1500.0)  # log-uniform
    glitch_share: float = 0.005
    glitch_factor: tuple[float, float] = (2.0, 4.0)  # error = factor * reported accuracy
    battery_drain_per_h: float = 2.0

    def __post_init__(self) -> None:
        for name in ("wander_share", "gcj02_share", "bd09_share", "network_share",
                     "glitch_share", "go_home_share"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name}={v!r}: must be within [0, 1]")
        if self.gcj02_share + self.bd09_share > 1.0:
            raise ValueError("gcj02_share + bd09_share must not exceed 1")
        if self.network_share + self.glitch_share > 1.0:
            raise ValueError("network_share + glitch_share must not exceed 1")
        worst = max((_TRUNC_SIGMAS / ACCURACY_68_SIGMAS - 1.0) * 200.0,
                    (self.glitch_factor[1] - 1.0) * self.gps_accuracy_m[1])
        if self.stay_margin_m <= worst:
            raise ValueError(
                f"stay_margin_m={self.stay_margin_m:g} must exceed {worst:.0f} m, the furthest "
                "noise can carry a decidable fix's circle beyond its true position"
            )


@dataclass(frozen=True)
class District:
    """A home area: its WGS-84 geometry and the same geometry in a local metric plane."""

    adcode: str
    name: str
    geom_wgs84: BaseGeometry
    lon0: float
    lat0: float
    m_per_deg_lon: float
    m_per_deg_lat: float
    plane: BaseGeometry = field(repr=False)

    @classmethod
    def from_geometry(cls, adcode: str, name: str, geom_wgs84: BaseGeometry) -> District:
        """Build the metric plane of a WGS-84 (Multi)Polygon."""
        c = geom_wgs84.centroid
        lat_r = math.radians(c.y)
        w = 1.0 - _WGS_E2 * math.sin(lat_r) ** 2
        m_lat = math.radians(_WGS_A * (1.0 - _WGS_E2) / w**1.5)
        m_lon = math.radians(_WGS_A * math.cos(lat_r) / math.sqrt(w))

        def to_plane(a: FloatArray) -> FloatArray:
            return np.column_stack([(a[:, 0] - c.x) * m_lon, (a[:, 1] - c.y) * m_lat])

        plane = shapely.transform(geom_wgs84, to_plane)
        shapely.prepare(plane)
        return cls(adcode, name, geom_wgs84, c.x, c.y, m_lon, m_lat, plane)

    def to_plane(self, lon: npt.ArrayLike, lat: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
        """WGS-84 lon/lat to metres in this district's plane."""
        return ((np.asarray(lon, dtype=np.float64) - self.lon0) * self.m_per_deg_lon,
                (np.asarray(lat, dtype=np.float64) - self.lat0) * self.m_per_deg_lat)

    def to_lonlat(self, x: npt.ArrayLike, y: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
        """Metres in this district's plane to WGS-84 lon/lat."""
        return (self.lon0 + np.asarray(x, dtype=np.float64) / self.m_per_deg_lon,
                self.lat0 + np.asarray(y, dtype=np.float64) / self.m_per_deg_lat)


def districts_from_geojson(fc: Mapping[str, Any], crs: CRS | None = None) -> list[District]:
    """The `level == "district"` features of a FeatureCollection, sorted by adcode.

    `crs` defaults to the collection's `coordinate_system` member (WGS-84 if absent); the
    geometry is converted to WGS-84 the way `store.demo.create_zone` stores zones.
    """
    src = CRS(crs or fc.get("coordinate_system", CRS.WGS84.value))
    out = []
    for f in fc["features"]:
        p = f["properties"]
        if p.get("level", "district") != "district":
            continue
        g = transform_geometry(shape(f["geometry"]), src, CRS.WGS84)
        if not isinstance(g, MultiPolygon):
            g = MultiPolygon([g])
        out.append(District.from_geometry(str(p["adcode"]), str(p.get("name_en") or p["name"]), g))
    if not out:
        raise ValueError("no district features in the collection")
    return sorted(out, key=lambda d: d.adcode)


def district_index(phone: npt.ArrayLike, n_districts: int) -> IntArray:
    """The district (index into the sorted districts) of each global phone number."""
    return np.asarray(phone, dtype=np.int64) % n_districts


@dataclass(frozen=True)
class FixBatch:
    """Fixes of several phones at one time; arrays aligned by position."""

    time: float
    phone: IntArray  # global phone number
    lon: FloatArray  # as reported, in the phone's CRS
    lat: FloatArray
    crs: npt.NDArray[np.int8]  # geofence.crs.CRS_CODE
    accuracy: FloatArray
    speed: FloatArray  # NaN: not reported
    heading: FloatArray  # NaN: not reported
    altitude: FloatArray  # NaN: not reported
    battery: FloatArray
    provider: npt.NDArray[np.int8]  # Provider codes
    seq: IntArray
    wgs_lon: FloatArray  # the reported position in WGS-84 (before any CRS conversion)
    wgs_lat: FloatArray
    true_lon: FloatArray  # where the phone really is (WGS-84)
    true_lat: FloatArray
    wanderer: BoolArray
    outside: BoolArray  # true position outside the district

    def __len__(self) -> int:
        return len(self.phone)


def _sample_inside(
    rng: np.random.Generator, geom: BaseGeometry, n: int
) -> tuple[FloatArray, FloatArray]:
    """n points uniformly inside a prepared planar geometry (rejection from its bounds)."""
    if n == 0:
        return np.empty(0), np.empty(0)
    if geom.is_empty:
        raise ValueError("cannot sample inside an empty area (is stay_margin_m too large?)")
    x0, y0, x1, y1 = geom.bounds
    xs: list[FloatArray] = []
    ys: list[FloatArray] = []
    got = 0
    while got < n:
        k = max(64, 2 * (n - got))
        x = rng.uniform(x0, x1, k)
        y = rng.uniform(y0, y1, k)
        ok = shapely.contains_xy(geom, x, y)
        xs.append(x[ok])
        ys.append(y[ok])
        got += int(ok.sum())
    return np.concatenate(xs)[:n], np.concatenate(ys)[:n]


def _shells(geom: BaseGeometry) -> BaseGeometry:
    """The exterior rings of a (Multi)Polygon: holes (enclaves of other districts) left out."""
    parts = shapely.get_parts(geom)
    return shapely.multilinestrings(shapely.get_exterior_ring(parts))


def _nearest_shell_point(
    geom: BaseGeometry, x: FloatArray, y: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """The nearest point on the outer boundary of a planar polygon to each (x, y)."""
    lines = shapely.shortest_line(_shells(geom), shapely.points(x, y))
    start = shapely.get_point(lines, 0)
    return shapely.get_x(start), shapely.get_y(start)


class PhoneFleet:
    """State of many phones, advanced together with numpy.

    `n_total` phones are defined by the seed; `phones` selects the ones this instance drives
    (e.g. one publisher process's share): a phone's home, role and CRS do not depend on the
    selection, only its later random draws do.
    """

    def __init__(
        self,
        districts: Sequence[District],
        n_total: int,
        seed: int,
        config: PhoneConfig | None = None,
        start_time: float = 0.0,
        phones: npt.ArrayLike | None = None,
    ) -> None:
        self.config = cfg = config or PhoneConfig()
        self.districts = list(districts)
        self.start_time = float(start_time)
        nd = len(self.districts)
        # What the seed alone decides for all n_total phones.
        rng = np.random.default_rng([seed, 0])
        all_phones = np.arange(n_total)
        all_dist = district_index(all_phones, nd)
        n_wander = round(cfg.wander_share * n_total)
        wanderer = np.zeros(n_total, dtype=bool)
        wanderer[rng.choice(n_total, size=n_wander, replace=False)] = True
        u = rng.random(n_total)
        crs = np.full(n_total, CRS_CODE[CRS.WGS84], dtype=np.int8)
        crs[u < cfg.gcj02_share + cfg.bd09_share] = CRS_CODE[CRS.BD09]
        crs[u < cfg.gcj02_share] = CRS_CODE[CRS.GCJ02]
        self._inner = [d.plane.buffer(-cfg.stay_margin_m) for d in self.districts]
        for g in self._inner:
            shapely.prepare(g)
        home_x = np.empty(n_total)
        home_y = np.empty(n_total)
        for k, g in enumerate(self._inner):
            sel = np.flatnonzero(all_dist == k)
            home_x[sel], home_y[sel] = _sample_inside(rng, g, sel.size)
        self._pool = [np.column_stack(_sample_inside(rng, g, _TARGET_POOL)) for g in self._inner]
        self._inner_arr = np.empty(nd, dtype=object)
        self._inner_arr[:] = self._inner

        sel = np.arange(n_total) if phones is None else np.unique(np.asarray(phones, dtype=np.int64))
        if sel.size and (sel.min() < 0 or sel.max() >= n_total):
            raise ValueError("phones must be numbers in [0, n_total)")
        self.phone = sel
        self.n = n = sel.size
        self.district = all_dist[sel]
        self.wanderer = wanderer[sel]
        self.crs = crs[sel]
        self.home_x, self.home_y = home_x[sel], home_y[sel]
        # Per-instance draws: seeded by the seed and the selection.
        self._rng = np.random.default_rng([seed, 1, n_total, *sel[:4].tolist(), n])
        r = self._rng
        self._lon0 = np.array([d.lon0 for d in self.districts])[self.district]
        self._lat0 = np.array([d.lat0 for d in self.districts])[self.district]
        self._kx = np.array([d.m_per_deg_lon for d in self.districts])[self.district]
        self._ky = np.array([d.m_per_deg_lat for d in self.districts])[self.district]

        self.x, self.y = self.home_x.copy(), self.home_y.copy()
        self.mode = np.full(n, Mode.DWELL, dtype=np.int8)
        self.until = self.start_time + r.exponential(cfg.dwell_mean_s, n)
        self.tx, self.ty = self.x.copy(), self.y.copy()
        self.speed = np.zeros(n)
        self.heading = np.full(n, np.nan)
        self.last_t = np.full(n, self.start_time)
        self.seq = np.zeros(n, dtype=np.int64)
        self.battery0 = r.uniform(30.0, 100.0, n)
        self.altitude0 = r.uniform(18.0, 45.0, n)
        self.outside = np.zeros(n, dtype=bool)

        # Wanderers: where they start, when they leave, where they go.
        w = np.flatnonzero(self.wanderer)
        self.wander_margin = np.full(n, np.nan)
        self.wander_margin[w] = r.uniform(*cfg.wander_margin_m, w.size)
        self.wander_speed = np.full(n, np.nan)
        self.wander_speed[w] = r.uniform(*cfg.wander_speed_ms, w.size)
        self.until[w] = self.start_time + r.uniform(*cfg.wander_depart_s, w.size)
        self.wander_x = np.full(n, np.nan)
        self.wander_y = np.full(n, np.nan)
        for k in np.unique(self.district[w]):
            idx = w[self.district[w] == k]
            self._plan_wander(int(k), idx)

    # ---------------------------------------------------------------------------------------

    def _plan_wander(self, k: int, idx: IntArray) -> None:
        """Start point (lead inside the border) and target (margin beyond it) of wanderers."""
        cfg = self.config
        plane = self.districts[k].plane
        hx, hy = self.home_x[idx], self.home_y[idx]
        # The outer boundary: a hole (an enclave) may be too small to be `margin` outside.
        bx, by = _nearest_shell_point(plane, hx, hy)
        dx, dy = bx - hx, by - hy
        dist = np.hypot(dx, dy)
        ux, uy = dx / dist, dy / dist
        if cfg.wander_lead_m is not None:
            lead = np.minimum(self._rng.uniform(*cfg.wander_lead_m, idx.size), dist)
            sx, sy = bx - ux * lead, by - uy * lead
            # A hole between home and the shell could swallow the start point: start at home.
            bad = ~shapely.contains_xy(plane, sx, sy)
            sx[bad], sy[bad] = hx[bad], hy[bad]
            self.x[idx], self.y[idx] = sx, sy
            self.tx[idx], self.ty[idx] = sx, sy
        # March along the ray past the boundary until the margin is reached: the polygon may
        # curve back towards the ray, so the first point at `margin` can be too close.
        margin = self.wander_margin[idx]
        s = margin.copy()
        todo = np.arange(idx.size)
        while todo.size:
            px, py = bx[todo] + ux[todo] * s[todo], by[todo] + uy[todo] * s[todo]
            d = shapely.distance(plane, shapely.points(px, py))
            ok = (d >= margin[todo]) | (s[todo] >= _RAY_MAX_M)
            # distance() is 1-Lipschitz along the ray: jumping by the shortfall skips nothing
            # that could be the first point far enough out.
            s[todo[~ok]] += np.maximum(margin[todo] - d, _RAY_STEP_M)[~ok]
            todo = todo[~ok]
        wx, wy = bx + ux * s, by + uy * s
        short = shapely.distance(plane, shapely.points(wx, wy)) < margin
        for j in np.flatnonzero(short):
            # The ray kept crossing the district: take the nearest point exactly `margin` out.
            ring = _shells(plane.buffer(margin[j]))
            p = shapely.get_point(shapely.shortest_line(ring, shapely.Point(hx[j], hy[j])), 0)
            wx[j], wy[j] = p.x, p.y
        self.wander_x[idx], self.wander_y[idx] = wx, wy

    def _start_trips(self, idx: IntArray, now: FloatArray) -> None:
        """Send dwelling phones on a trip inside their district (or keep them dwelling)."""
        cfg, r = self.config, self._rng
        w = self.wanderer[idx]
        if w.any():  # a wanderer's dwell ends with its departure
            wi = idx[w]
            self.mode[wi] = Mode.WANDER
            self.tx[wi], self.ty[wi] = self.wander_x[wi], self.wander_y[wi]
            self.speed[wi] = self.wander_speed[wi]
            idx, now = idx[~w], now[~w]
        if idx.size == 0:
            return
        tx = np.full(idx.size, np.nan)
        ty = np.full(idx.size, np.nan)
        share = np.array([m[0] for m in cfg.trip_modes])
        choice = r.choice(len(share), size=idx.size, p=share / share.sum())
        length = np.array([m[3] for m in cfg.trip_modes])[choice] * np.exp(
            r.normal(0.0, 0.5, idx.size))
        home = r.random(idx.size) < cfg.go_home_share
        at_home = (self.x[idx] == self.home_x[idx]) & (self.y[idx] == self.home_y[idx])
        pending = np.arange(idx.size)
        for attempt in range(_TRIP_TRIES):
            if pending.size == 0:
                break
            cx = np.empty(pending.size)
            cy = np.empty(pending.size)
            px, py = self.x[idx[pending]], self.y[idx[pending]]
            for k in np.unique(self.district[idx[pending]]):
                m = np.flatnonzero(self.district[idx[pending]] == k)
                # Of a few random destinations, the one closest to the wanted trip length.
                cand = self._pool[k][r.integers(0, _TARGET_POOL, (m.size, _CANDIDATES))]
                d = np.hypot(cand[:, :, 0] - px[m, None], cand[:, :, 1] - py[m, None])
                best = np.argmin(np.abs(d - length[pending[m], None]), axis=1)
                pick = cand[np.arange(m.size), best]
                cx[m], cy[m] = pick[:, 0], pick[:, 1]
            if attempt == 0:
                h = home[pending] & ~at_home[pending]
                cx[h], cy[h] = self.home_x[idx[pending[h]]], self.home_y[idx[pending[h]]]
            segs = shapely.linestrings(
                np.stack([np.column_stack([self.x[idx[pending]], self.y[idx[pending]]]),
                          np.column_stack([cx, cy])], axis=1)
            )
            inner = self._inner_arr[self.district[idx[pending]]]
            ok = shapely.contains(inner, segs)
            tx[pending[ok]], ty[pending[ok]] = cx[ok], cy[ok]
            pending = pending[~ok]
        go = ~np.isnan(tx)
        gi = idx[go]
        self.mode[gi] = Mode.TRIP
        self.tx[gi], self.ty[gi] = tx[go], ty[go]
        lo = np.array([m[1] for m in cfg.trip_modes])[choice[go]]
        hi = np.array([m[2] for m in cfg.trip_modes])[choice[go]]
        self.speed[gi] = r.uniform(lo, hi)
        stay = idx[~go]  # nowhere reachable in a straight line: dwell a while longer
        self.until[stay] = now[~go] + r.exponential(cfg.dwell_mean_s, stay.size)

    def _move(self, idx: IntArray, t: float) -> None:
        """Advance the true positions of `idx` to time t (dwells, trips, departures)."""
        cfg, r = self.config, self._rng
        cur = self.last_t[idx].copy()
        np.maximum(cur, self.start_time, out=cur)
        for _ in range(_MAX_SUBSTEPS):
            live = cur < t
            if not live.any():
                break
            # Dwelling phones whose dwell ends before t start a trip at the end of the dwell.
            dw = live & (self.mode[idx] == Mode.DWELL)
            ends = dw & (self.until[idx] <= t)
            cur[dw & ~ends] = t
            if ends.any():
                cur[ends] = np.maximum(cur[ends], self.until[idx[ends]])
                self._start_trips(idx[ends], cur[ends])
            cur[live & (self.mode[idx] == Mode.OUT)] = t
            mv = np.flatnonzero((cur < t) & ((self.mode[idx] == Mode.TRIP) | (self.mode[idx] == Mode.WANDER)))
            if mv.size == 0:
                continue
            i = idx[mv]
            dx, dy = self.tx[i] - self.x[i], self.ty[i] - self.y[i]
            dist = np.hypot(dx, dy)
            step = self.speed[i] * (t - cur[mv])
            arrive = step >= dist
            with np.errstate(invalid="ignore", divide="ignore"):
                f = np.where(arrive, 1.0, step / dist)
            moving = dist > 0
            self.heading[i[moving]] = np.degrees(np.arctan2(dx[moving], dy[moving])) % 360.0
            self.x[i] += dx * f
            self.y[i] += dy * f
            with np.errstate(divide="ignore", invalid="ignore"):
                travel = np.where(self.speed[i] > 0, dist / self.speed[i], 0.0)
            cur[mv] = np.where(arrive, cur[mv] + travel, t)
            a = i[arrive]
            at = cur[mv][arrive]
            trip = self.mode[a] == Mode.TRIP
            self.mode[a[trip]] = Mode.DWELL
            self.until[a[trip]] = at[trip] + r.exponential(cfg.dwell_mean_s, int(trip.sum()))
            self.mode[a[~trip]] = Mode.OUT
            self.speed[a] = 0.0
        self.last_t[idx] = t

    def _update_outside(self, idx: IntArray) -> None:
        w = idx[self.wanderer[idx]]
        for k in np.unique(self.district[w]):
            j = w[self.district[w] == k]
            self.outside[j] = ~shapely.contains_xy(self.districts[k].plane, self.x[j], self.y[j])

    # ---------------------------------------------------------------------------------------

    def rebase(self, start_time: float) -> None:
        """Shift every scheduled time so the fleet starts at `start_time` (before any fix)."""
        dt = float(start_time) - self.start_time
        self.start_time += dt
        self.last_t += dt
        self.until += dt

    def local_index(self, phones: npt.ArrayLike) -> IntArray:
        """Positions in this instance's arrays (sorted by phone number) of global phone numbers."""
        pos = np.searchsorted(self.phone, phones)
        if not np.array_equal(self.phone[np.clip(pos, 0, self.n - 1)], phones):
            raise KeyError("some phones are not driven by this fleet instance")
        return pos

    def advance(self, t: float, which: npt.ArrayLike | None = None) -> FixBatch:
        """Move the phones `which` (local indices; default all) to time t and take a fix each."""
        cfg, r = self.config, self._rng
        idx = np.arange(self.n) if which is None else np.asarray(which, dtype=np.int64)
        self._move(idx, t)
        self._update_outside(idx)
        m = idx.size

        # Fix quality: class, accuracy, error.
        u = r.random(m)
        glitch = u < cfg.glitch_share
        network = ~glitch & (u < cfg.glitch_share + cfg.network_share)
        lo, hi = cfg.gps_accuracy_m
        acc = np.clip(cfg.gps_accuracy_median_m * np.exp(r.normal(0.0, cfg.gps_accuracy_sigma, m)),
                      lo, hi)
        nlo, nhi = cfg.network_accuracy_m
        acc[network] = np.exp(r.uniform(math.log(nlo), math.log(nhi), int(network.sum())))
        sigma = acc / ACCURACY_68_SIGMAS
        # Rayleigh radius truncated at _TRUNC_SIGMAS (inverse CDF of the truncated law).
        err = sigma * np.sqrt(-2.0 * np.log1p(-r.random(m) * _TRUNC_MASS))
        err[glitch] = acc[glitch] * r.uniform(*cfg.glitch_factor, int(glitch.sum()))
        theta = r.uniform(0.0, 2.0 * math.pi, m)
        rx = self.x[idx] + err * np.cos(theta)
        ry = self.y[idx] + err * np.sin(theta)

        kx, ky, lon0, lat0 = self._kx[idx], self._ky[idx], self._lon0[idx], self._lat0[idx]
        true_lon, true_lat = lon0 + self.x[idx] / kx, lat0 + self.y[idx] / ky
        wgs_lon, wgs_lat = lon0 + rx / kx, lat0 + ry / ky
        lon, lat = wgs_lon.copy(), wgs_lat.copy()
        crs = self.crs[idx]
        for target in (CRS.GCJ02, CRS.BD09):
            s = crs == CRS_CODE[target]
            if s.any():
                lon[s], lat[s] = from_wgs84(wgs_lon[s], wgs_lat[s], target)

        moving = ((self.mode[idx] == Mode.TRIP) | (self.mode[idx] == Mode.WANDER)) & (self.speed[idx] > 0)
        speed = np.where(moving, self.speed[idx] * (1.0 + r.normal(0.0, 0.05, m)),
                         np.abs(r.normal(0.0, 0.2, m)))
        speed = np.maximum(speed, 0.0)
        heading = np.where(moving, self.heading[idx], np.nan)
        altitude = self.altitude0[idx] + r.normal(0.0, 1.0, m) * np.minimum(acc, 50.0) * 0.5
        speed[network] = np.nan
        heading[network] = np.nan
        altitude[network] = np.nan
        battery = np.clip(
            self.battery0[idx] - cfg.battery_drain_per_h * (t - self.start_time) / 3600.0, 1.0, 100.0
        )
        self.seq[idx] += 1
        provider = np.where(network, Provider.NETWORK, Provider.GPS).astype(np.int8)
        return FixBatch(
            time=t, phone=self.phone[idx], lon=lon, lat=lat, crs=crs, accuracy=acc, speed=speed,
            heading=heading, altitude=altitude, battery=battery, provider=provider,
            seq=self.seq[idx].copy(), wgs_lon=wgs_lon, wgs_lat=wgs_lat, true_lon=true_lon,
            true_lat=true_lat, wanderer=self.wanderer[idx].copy(),
            outside=self.outside[idx].copy(),
        )

    def wanderers_out(self) -> int:
        """Wanderers whose true position (at their last fix) is outside their district."""
        return int(self.outside.sum())


def fix_payload(batch: FixBatch, k: int, time_s: float | None = None) -> dict[str, Any]:
    """The native MQTT payload (docs/protocols.md) of fix k; `time_s` overrides the fix time."""
    msg: dict[str, Any] = {
        "time": round(batch.time if time_s is None else time_s, 3),
        "lat": round(float(batch.lat[k]), 7),
        "lon": round(float(batch.lon[k]), 7),
        "accuracy": round(float(batch.accuracy[k]), 1),
        "battery": round(float(batch.battery[k]), 1),
        "crs": _CRS_NAMES[int(batch.crs[k])],
        "provider": Provider.NAMES[int(batch.provider[k])],
        "mock": False,
        "seq": int(batch.seq[k]),
    }
    for name, arr, nd in (("speed", batch.speed, 2), ("heading", batch.heading, 1),
                          ("altitude", batch.altitude, 1)):
        v = float(arr[k])
        if not math.isnan(v):
            msg[name] = round(v, nd)
    return msg


def owntracks_payload(batch: FixBatch, k: int, time_s: int | None = None,
                      wgs84: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None = None,
                      ios: bool = False) -> dict[str, Any]:
    """Fix k as an OwnTracks app publishes a location (https://owntracks.org/booklet/tech/
    json/): WGS-84 (a phone that reports GCJ-02 in the native protocol is converted: the app
    has no CRS field), whole seconds, metres and km/h as integers, the app's own fields that
    the server ignores (`tid`, `conn`, `bs`, `m`, `t`, `vac`), `vel`, `cog` and `alt` only when
    the phone has them (`ios`: as the 2014-15 iOS app did, -1 for each it has not, and `vac` -1
    without an altitude). `time_s` is the fix time (`tst`); None leaves it out. `wgs84`: the
    batch's positions in WGS-84 when the caller has them (`to_wgs84_mixed`, one call a batch)."""
    lons, lats = wgs84 if wgs84 is not None else to_wgs84_mixed(batch.lon, batch.lat, batch.crs)
    lon, lat = float(lons[k]), float(lats[k])
    msg: dict[str, Any] = {"_type": "location", "acc": round(float(batch.accuracy[k])),
                           "batt": round(float(batch.battery[k])), "bs": 1, "conn": "m",
                           "lat": round(lat, 7), "lon": round(lon, 7), "m": 1, "t": "p",
                           "tid": "ph", "vac": 3}
    if time_s is not None:
        msg["tst"] = int(time_s)
    for name, arr, scale in (("vel", batch.speed, 3.6), ("cog", batch.heading, 1.0),
                             ("alt", batch.altitude, 1.0)):
        v = float(arr[k])
        if not math.isnan(v):
            msg[name] = round(v * scale)
        elif ios:
            msg[name] = 0 if name == "alt" else -1
    if ios:
        msg["vac"] = -1 if math.isnan(float(batch.altitude[k])) else 4
    return msg


_CRS_NAMES = {code: crs.value for crs, code in CRS_CODE.items()}
