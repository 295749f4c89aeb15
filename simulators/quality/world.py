"""The ground truth: districts, people, their days and their violations.

People live in the 13 real Wuhan districts (their home area: the district's GCJ-02 boundary,
prepared by `geofence.zones.prepare_zone` exactly as the API stores a zone). A share live, and a
share work, 50-500 m inside a district border. Every day they move between home, work and a few
errand places (weekends without work) along straight legs that stay inside their district.
On a few person-days the person leaves from wherever they are, crosses the nearest border, goes
beyond it (0.5-20 km, or only 200-500 m for a share of shallow ones; on foot, slowly on foot, by
bike, car or metro), stays, and comes back the same way. A violation's interval [start, end) is
exactly the time the TRUE position is outside the home area. Nothing here knows about phones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt
import shapely
from shapely.geometry import LineString, Point
from shapely.geometry.base import BaseGeometry

from geofence.crs import CRS_CODE
from geofence.model import CRS
from geofence.zones import PreparedZone, prepare_zone
from simulators.phone import District, districts_from_geojson
from simulators.quality.config import DAY, MODES, SLOW_FOOT, T0, QualityConfig

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

KEY_SPAN = 1e8  # seconds: longer than any run; person * span + time is exact in float64


def loguniform(rng: np.random.Generator, lo: float, hi: float, n: int | None = None) -> Any:
    """Log-uniform draws in [lo, hi]."""
    return np.exp(rng.uniform(math.log(lo), math.log(hi), n))


def _sample(rng: np.random.Generator, ok: Any, bounds: tuple[float, float, float, float],
            n: int) -> tuple[FloatArray, FloatArray]:
    """n points uniform in the region where `ok(x, y)` holds (rejection from `bounds`)."""
    x0, y0, x1, y1 = bounds
    xs, ys, got = [], [], 0
    while got < n:
        x = rng.uniform(x0, x1, 4 * n)
        y = rng.uniform(y0, y1, 4 * n)
        keep = ok(x, y)
        xs.append(x[keep])
        ys.append(y[keep])
        got += int(keep.sum())
    return np.concatenate(xs)[:n], np.concatenate(ys)[:n]


@dataclass
class Area:
    """A district with what the simulation needs of it, in its metric plane."""

    index: int
    district: District
    interior: tuple[FloatArray, FloatArray]  # pool of places anywhere (min_inside_m inside)
    band: tuple[FloatArray, FloatArray]  # pool of places 50-500 m inside a border

    @cached_property
    def boundary(self) -> BaseGeometry:
        b = self.district.plane.boundary
        shapely.prepare(b)
        return b

    @classmethod
    def build(cls, index: int, d: District, cfg: QualityConfig, rng: np.random.Generator,
              pool: int = 3000) -> Area:
        inner = d.plane.buffer(-cfg.min_inside_m)
        deep = d.plane.buffer(-cfg.border_band_m[1])
        lo_band = d.plane.buffer(-cfg.border_band_m[0])
        for g in (inner, deep, lo_band):
            shapely.prepare(g)
        interior = _sample(rng, lambda x, y: shapely.contains_xy(inner, x, y), d.plane.bounds, pool)
        band = _sample(rng, lambda x, y: shapely.contains_xy(lo_band, x, y)
                       & ~shapely.contains_xy(deep, x, y), d.plane.bounds, pool)
        return cls(index, d, interior, band)

    def covered(self, ax: float, ay: float, bx: FloatArray, by: FloatArray) -> BoolArray:
        """Straight legs from (ax, ay) to each (bx, by) that stay inside the district."""
        coords = np.stack([np.column_stack([np.full(len(bx), ax), np.full(len(bx), ay)]),
                           np.column_stack([bx, by])], axis=1)
        return np.asarray(shapely.covers(self.district.plane, shapely.linestrings(coords)))


def _pick(rng: np.random.Generator, area: Area, fx: float, fy: float,
          pool: tuple[FloatArray, FloatArray], target_m: float, k: int = 48) -> tuple[float, float] | None:
    """A place from `pool` about `target_m` from (fx, fy), reachable on a straight inside leg."""
    idx = rng.integers(0, len(pool[0]), k)
    cx, cy = pool[0][idx], pool[1][idx]
    d = np.hypot(cx - fx, cy - fy)
    order = np.argsort(np.abs(np.log(np.maximum(d, 1.0) / target_m)))
    for part in np.array_split(order, 4):
        ok = area.covered(fx, fy, cx[part], cy[part])
        good = part[ok & (d[part] > 100.0)]
        if good.size:
            return float(cx[good[0]]), float(cy[good[0]])
    return None


@dataclass
class Person:
    index: int
    area: int
    level: str
    crs: int  # CRS_CODE of what the phone reports
    border_home: bool
    home: tuple[float, float]
    work: tuple[float, float] | None
    border_work: bool
    errands: list[tuple[float, float]]
    work_errands: list[int]  # errands reachable straight from work

    @property
    def near_border(self) -> bool:
        """Lives or works 50-500 m inside a border."""
        return self.border_home or self.border_work


@dataclass
class Violation:
    person: int
    start: float  # the true crossing out
    end: float  # the true crossing back
    depth_m: float
    mode: str
    from_border_m: float  # how far inside the place the person left from was
    shallow: bool = False

    @property
    def minutes(self) -> float:
        return (self.end - self.start) / 60.0


Leg = tuple[float, float, float, float, float, float, bool, bool]


class _Timeline:
    """Legs of one person, appended in time order: (t0, t1, x0, y0, x1, y1, indoor, outside)."""

    def __init__(self, t: float, pos: tuple[float, float]) -> None:
        self.t = t
        self.pos = pos
        self.legs: list[Leg] = []

    def dwell(self, until: float, indoor: bool = True, outside: bool = False) -> None:
        if until > self.t:
            x, y = self.pos
            self.legs.append((self.t, until, x, y, x, y, indoor, outside))
            self.t = until

    def travel(self, to: tuple[float, float], speed: float, outside: bool = False) -> None:
        d = math.hypot(to[0] - self.pos[0], to[1] - self.pos[1])
        dt = max(d / speed, 1.0)
        self.legs.append((self.t, self.t + dt, *self.pos, *to, False, outside))
        self.t += dt
        self.pos = to


def _trip_speed(rng: np.random.Generator, d: float) -> float:
    if d < 1200:
        return float(rng.uniform(1.0, 1.6))
    if d < 5000:
        return float(rng.uniform(3.0, 5.0) if rng.random() < 0.6 else rng.uniform(5.0, 9.0))
    return float(rng.uniform(6.0, 14.0) if rng.random() < 0.6 else rng.uniform(8.0, 12.0))


class Schedule:
    """Everyone's legs (sorted by person, then time), violations and gaps, with fast lookups."""

    def __init__(self, legs: Sequence[tuple[int, Leg]], violations: list[Violation],
                 gaps: tuple[IntArray, FloatArray, FloatArray], dropped: int) -> None:
        arr = np.array([leg for _, leg in legs], dtype=np.float64)
        self.leg_person = np.array([p for p, _ in legs], dtype=np.int64)
        self.leg_t0, self.leg_t1 = arr[:, 0].copy(), arr[:, 1].copy()
        self.leg_xy = arr[:, 2:6].copy()
        self.leg_indoor, self.leg_outside = arr[:, 6].astype(bool), arr[:, 7].astype(bool)
        self.violations = violations
        self.gap_person, self.gap_start, self.gap_end = gaps
        self.dropped_violations = dropped
        self._key = self.leg_person * KEY_SPAN + (self.leg_t0 - T0)
        self._gap_key = self.gap_person * KEY_SPAN + (self.gap_start - T0)
        dt = np.maximum(self.leg_t1 - self.leg_t0, 1e-9)
        self.leg_speed = np.hypot(self.leg_xy[:, 2] - self.leg_xy[:, 0],
                                  self.leg_xy[:, 3] - self.leg_xy[:, 1]) / dt
        order = sorted(range(len(violations)), key=lambda k: (violations[k].person, violations[k].start))
        self._v_order = np.array(order, dtype=np.int64)
        self._v_person = np.array([violations[k].person for k in order], dtype=np.int64)
        self._v_end = np.array([violations[k].end for k in order])
        self._v_key = self._v_person * KEY_SPAN + (np.array([violations[k].start for k in order]) - T0)

    def leg_at(self, person: IntArray, t: FloatArray) -> IntArray:
        """Index of the leg each (person, time) falls in."""
        return np.searchsorted(self._key, person * KEY_SPAN + (t - T0), side="right") - 1

    def in_gap(self, person: IntArray, t: FloatArray) -> BoolArray:
        """True where the phone of `person` is off at `t` (gaps are merged per person)."""
        if self.gap_person.size == 0:
            return np.zeros(len(person), dtype=bool)
        g = np.searchsorted(self._gap_key, person * KEY_SPAN + (t - T0), side="right") - 1
        gc = np.clip(g, 0, None)
        return (g >= 0) & (self.gap_person[gc] == person) & (t < self.gap_end[gc])

    def violation_at(self, person: IntArray, t: FloatArray) -> IntArray:
        """Index (into `violations`) of the violation each (person, time) is in, -1 for none."""
        if self._v_person.size == 0:
            return np.full(len(person), -1, dtype=np.int64)
        g = np.searchsorted(self._v_key, person * KEY_SPAN + (t - T0), side="right") - 1
        gc = np.clip(g, 0, None)
        hit = (g >= 0) & (self._v_person[gc] == person) & (t < self._v_end[gc])
        return np.where(hit, self._v_order[gc], -1)

    def truth(self, person: IntArray, t: FloatArray,
              ) -> tuple[FloatArray, FloatArray, BoolArray, BoolArray, FloatArray]:
        """True plane position, indoor, outside the home area and speed of each (person, time)."""
        leg = self.leg_at(person, t)
        t0, t1 = self.leg_t0[leg], self.leg_t1[leg]
        f = np.clip((t - t0) / np.maximum(t1 - t0, 1e-9), 0.0, 1.0)
        xy = self.leg_xy[leg]
        x = xy[:, 0] + f * (xy[:, 2] - xy[:, 0])
        y = xy[:, 1] + f * (xy[:, 3] - xy[:, 1])
        speed = np.where(t1 > t0, self.leg_speed[leg], 0.0)
        return x, y, self.leg_indoor[leg], self.leg_outside[leg], speed


class World:
    """Districts, people, their schedules and violations: the truth every scenario is scored on."""

    def __init__(self, cfg: QualityConfig, regions: Mapping[str, Any] | None = None) -> None:
        from store.demo import load_regions

        self.cfg = cfg
        fc = regions or load_regions()
        rng = np.random.default_rng([cfg.seed, 0])
        districts = districts_from_geojson(fc)
        self.areas = [Area.build(k, d, cfg, rng) for k, d in enumerate(districts)]
        self.zones = _zones(fc, districts)
        self.people = [self._person(rng, p) for p in range(cfg.people)]
        self.schedule = self._schedule(np.random.default_rng([cfg.seed, 1]))
        self.p_area = np.array([p.area for p in self.people], dtype=np.int64)
        self.p_crs = np.array([p.crs for p in self.people], dtype=np.int8)
        self.device_ids = [f"q{p:06d}" for p in range(cfg.people)]

    def to_lonlat(self, person: int, x: FloatArray, y: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Plane metres of a person's district to WGS-84."""
        return self.areas[self.people[person].area].district.to_lonlat(x, y)

    def outside_truth(self, person: int, t: float) -> bool:
        """Whether the TRUE position of `person` at `t` is outside the home area."""
        return any(v.person == person and v.start <= t < v.end for v in self.schedule.violations)

    # -- people ----------------------------------------------------------------------------

    def _person(self, rng: np.random.Generator, p: int) -> Person:
        cfg = self.cfg
        area = self.areas[p % len(self.areas)]
        names = [n for n, _ in cfg.levels]
        level = str(rng.choice(names, p=[s for _, s in cfg.levels]))
        crs = CRS_CODE[CRS.GCJ02] if rng.random() < cfg.gcj02_share else CRS_CODE[CRS.WGS84]
        border_home = bool(rng.random() < cfg.border_home_share)
        pool = area.band if border_home else area.interior
        j = int(rng.integers(0, len(pool[0])))
        home = (float(pool[0][j]), float(pool[1][j]))
        work, border_work = None, False
        if rng.random() < cfg.work_share:
            border_work = bool(rng.random() < cfg.border_work_share)
            target = cfg.commute_median_m * math.exp(rng.normal(0.0, 0.8))
            work = _pick(rng, area, *home, area.band if border_work else area.interior, target)
            border_work = border_work and work is not None
        errands: list[tuple[float, float]] = []
        for _ in range(cfg.errands):
            pool = area.band if rng.random() < 0.25 else area.interior
            target = cfg.errand_median_m * math.exp(rng.normal(0.0, 0.8))
            e = _pick(rng, area, *home, pool, target)
            if e is not None:
                errands.append(e)
        if not errands:  # a tiny district corner: the home's surroundings will do
            errands.append(home)
        work_errands: list[int] = []
        if work is not None:
            ok = area.covered(*work, np.array([e[0] for e in errands]), np.array([e[1] for e in errands]))
            work_errands = [i for i, o in enumerate(ok) if o]
        return Person(p, area.index, level, crs, border_home, home, work, border_work, errands,
                      work_errands)

    # -- days ------------------------------------------------------------------------------

    def _schedule(self, rng: np.random.Generator) -> Schedule:
        cfg = self.cfg
        n_pd = cfg.people * cfg.days
        n_viol = int(rng.poisson(cfg.violations_per_person_day * n_pd))
        chosen = rng.choice(n_pd, size=min(n_viol, n_pd), replace=False)
        violation_days = {int(c) for c in chosen}
        legs: list[tuple[int, Leg]] = []
        violations: list[Violation] = []
        dropped = 0
        for person in self.people:
            tl = _Timeline(T0, person.home)
            for day in range(cfg.days):
                start = T0 + day * DAY
                want = person.index * cfg.days + day in violation_days
                ok = self._day(rng, person, tl, start, day % 7 >= 5, want, violations)
                dropped += int(want and not ok)
            tl.dwell(T0 + cfg.days * DAY + DAY)  # past the end: every fix time has a leg
            legs.extend((person.index, leg) for leg in tl.legs)
        return Schedule(legs, violations, self._gaps(rng, violations), dropped)

    def _day(self, rng: np.random.Generator, person: Person, tl: _Timeline, start: float,
             weekend: bool, want_violation: bool, violations: list[Violation]) -> bool:
        """Append one day (home at both ends); returns whether a wanted violation happened."""
        h = 3600.0
        home = person.home
        # Actions: (earliest start, minimum dwell before it, destination)
        actions: list[tuple[float, float, tuple[float, float]]] = []
        if person.work is not None and not weekend:
            depart = start + float(np.clip(rng.normal(7.75, 0.6), 6.0, 10.0)) * h
            leave = start + float(np.clip(rng.normal(17.5, 0.75), 15.0, 21.0)) * h
            actions.append((depart, 0.0, person.work))
            if person.work_errands and rng.random() < 0.4:
                e = person.errands[int(rng.choice(person.work_errands))]
                actions.append((leave, 4 * h, e))
                actions.append((0.0, float(rng.uniform(15, 90)) * 60, home))
            else:
                actions.append((leave, 4 * h, home))
            if rng.random() < 0.25:
                e = person.errands[int(rng.integers(len(person.errands)))]
                actions.append((start + float(rng.normal(19.75, 0.5)) * h, 1800.0, e))
                actions.append((0.0, float(rng.uniform(20, 90)) * 60, home))
        else:
            for t in np.sort(rng.uniform(8.0, 20.0, int(rng.integers(1, 4)))):
                e = person.errands[int(rng.integers(len(person.errands)))]
                actions.append((start + float(t) * h, 600.0, e))
                actions.append((0.0, float(rng.uniform(20, 120)) * 60, home))
        excursion = self._plan_excursion(rng, actions, start) if want_violation else None
        happened = False
        for i, (earliest, min_dwell, dest) in enumerate(actions + [(0.0, 0.0, home)]):
            if excursion is not None and excursion[0] == i:
                v = self._excursion(rng, person, tl, excursion[1:])
                if v is not None:
                    violations.append(v)
                    happened = True
            if i == len(actions) and tl.pos == home:
                break
            tl.dwell(max(earliest, tl.t + min_dwell))
            tl.travel(dest, _trip_speed(rng, math.hypot(dest[0] - tl.pos[0], dest[1] - tl.pos[1])))
        tl.dwell(start + DAY)
        return happened

    def _plan_excursion(self, rng: np.random.Generator,
                        actions: list[tuple[float, float, tuple[float, float]]], start: float,
                        ) -> tuple[int, float, float, str, float, float, bool] | None:
        """Where in the day the violation goes, its time outside, mode, speed and depth."""
        cfg = self.cfg
        shallow = bool(rng.random() < cfg.shallow_share)
        d_lo, d_hi = cfg.shallow_depth_m if shallow else cfg.violation_depth_m
        t_out = float(loguniform(rng, *cfg.violation_minutes)) * 60.0
        if rng.random() < cfg.slow_walker_share:
            modes = [SLOW_FOOT]
        else:
            modes = [m for m in MODES if m[2] * t_out / 2 >= d_lo] or [MODES[0]]
        name, lo, hi = modes[int(rng.integers(len(modes)))]
        speed = float(rng.uniform(lo, hi))
        if name == SLOW_FOOT[0]:  # a slow walker takes the time it needs, never hurries
            t_out = max(t_out, 2 * d_lo / speed)
        max_depth = min(d_hi, speed * t_out / 2)
        if max_depth < d_lo:  # too short a time for this depth at this speed: hurry a little
            speed = d_lo * 2 / t_out
            max_depth = d_lo
        depth = float(loguniform(rng, d_lo, max_depth))
        latest = start + 23 * 3600.0 - t_out - 3600.0
        tv = float(rng.uniform(start + 7 * 3600.0, max(start + 7 * 3600.0, latest)))
        # Before the first action planned after tv (actions with earliest 0 follow their chain).
        pos = next((i for i, a in enumerate(actions) if a[0] > tv), len(actions))
        return pos, tv, t_out, name, speed, depth, shallow

    def _excursion(self, rng: np.random.Generator, person: Person, tl: _Timeline,
                   plan: tuple[float, float, str, float, float, bool]) -> Violation | None:
        """Leave from where the person is, cross the nearest border, go out, stay, come back."""
        tv, t_out, mode, speed, depth, shallow = plan
        d_lo = (self.cfg.shallow_depth_m if shallow else self.cfg.violation_depth_m)[0]
        area = self.areas[person.area]
        px, py = tl.pos
        # The segment to the nearest border point stays inside (no border point is nearer).
        edge = shapely.get_point(shapely.shortest_line(area.boundary, Point(px, py)), 0)
        bx, by = float(shapely.get_x(edge)), float(shapely.get_y(edge))
        a = math.hypot(bx - px, by - py)
        u = ((bx - px) / a, (by - py) / a)
        q = None
        for turn in (0, 20, -20, 40, -40, 60, -60, 80, -80):
            c, s = math.cos(math.radians(turn)), math.sin(math.radians(turn))
            v = (u[0] * c - u[1] * s, u[0] * s + u[1] * c)
            reach = _clear_ray(area, bx, by, v, depth)
            if reach >= d_lo:
                depth = min(depth, reach)
                q = (bx + v[0] * depth, by + v[1] * depth)
                break
        if q is None:  # no clear way out from here (rare): this violation does not happen
            return None
        tl.dwell(max(tv, tl.t))
        tl.travel((bx, by), max(_trip_speed(rng, a), 1.0))
        out_start = tl.t
        tl.travel(q, speed, outside=True)
        stay = max(0.0, t_out - 2 * depth / speed)
        tl.dwell(tl.t + stay, indoor=bool(rng.random() < 0.5), outside=True)
        tl.travel((bx, by), speed, outside=True)
        out_end = tl.t
        tl.travel((px, py), max(_trip_speed(rng, a), 1.0))
        return Violation(person.index, out_start, out_end, depth, mode, a, shallow)

    def _gaps(self, rng: np.random.Generator, violations: Sequence[Violation],
              ) -> tuple[IntArray, FloatArray, FloatArray]:
        cfg = self.cfg
        n = int(rng.poisson(cfg.gaps_per_person_day * cfg.person_days))
        person = rng.integers(0, cfg.people, n)
        start = T0 + rng.uniform(0.0, cfg.days * DAY, n)
        end = start + loguniform(rng, *cfg.gap_minutes, n) * 60.0
        by_person: dict[int, list[Violation]] = {}
        for v in violations:
            by_person.setdefault(v.person, []).append(v)
        keep = np.array([all(not (s < v.end + 900.0 and e > v.start - 900.0)
                             for v in by_person.get(int(p), ()))
                         for p, s, e in zip(person, start, end, strict=True)], dtype=bool)
        person, start, end = person[keep], start[keep], end[keep]
        order = np.lexsort((start, person))
        mp: list[int] = []
        ms: list[float] = []
        me: list[float] = []
        for p, s, e in zip(person[order].tolist(), start[order].tolist(), end[order].tolist(),
                           strict=True):
            if mp and mp[-1] == p and s <= me[-1]:  # merge overlaps: the last gap before t decides
                me[-1] = max(me[-1], e)
            else:
                mp.append(p)
                ms.append(s)
                me.append(e)
        return np.array(mp, dtype=np.int64), np.array(ms), np.array(me)


def _clear_ray(area: Area, bx: float, by: float, v: tuple[float, float], depth: float) -> float:
    """How far from the border point (bx, by) along v the way stays outside the district."""
    far = LineString([(bx + v[0], by + v[1]), (bx + v[0] * depth, by + v[1] * depth)])
    hit = shapely.intersection(area.district.plane, far)
    if hit.is_empty:
        return depth
    return float(shapely.distance(Point(bx, by), hit)) - 200.0


def _zones(fc: Mapping[str, Any], districts: Sequence[District]) -> dict[int, PreparedZone]:
    """The home areas as the engine gets them: `prepare_zone` on the districts' own GeoJSON."""
    crs = CRS(fc.get("coordinate_system", CRS.WGS84.value))
    by_code = {str(f["properties"]["adcode"]): f["geometry"] for f in fc["features"]
               if f["properties"].get("level", "district") == "district"}
    return {k: prepare_zone(k, by_code[d.adcode], crs) for k, d in enumerate(districts)}
