"""Alert-quality benchmark: our geofence engine against a naive tracker, on known ground truth.

    python -m simulators.quality                      # 1,000 people x 10 days at 60 s
    python -m simulators.quality --quick              # 100 people x 2 days (a smoke run)
    python -m simulators.quality --people 2000 --days 5 --seed 7 --markdown out.md
    python -m simulators.quality --variant slow:exit_fixes=5,exit_span_s=240

What is simulated (all of it deterministic for a given --seed):

- People live in the 13 real Wuhan districts (their home area: the district's GCJ-02 boundary
  converted to WGS-84, exactly as the engine's zones are). A share live, and a share work,
  50-500 m inside a district border. Every day they move between home, work and a few
  regular errand places (weekends without work), by foot, bike, car or metro speed, along
  straight legs that stay inside their district.
- Real violations: on a few person-days the person leaves from wherever they are, crosses the
  nearest border and goes 0.5-20 km beyond it (foot, bike, car or metro speed), stays, and
  comes back the same way. The ground-truth interval [start, end) is exactly the time the
  TRUE position is outside the home area: from the crossing to the crossing back.
- Fixes every --interval seconds (default 60, the domain's scale assumption), with gaps
  (phone off, no signal; never within 15 min of a violation, since a silent phone is the
  communication-failure rule's business, not the area rule's). Noise: GNSS accuracy 3-50 m
  (log-normal, heavier indoors), true error Rayleigh-distributed with the accuracy as its 68 %
  radius; a few outliers at 2-4x the accuracy; urban-canyon jumps of 100-500 m on a few % of
  fixes: episodes of about a minute (exponential) during which every GNSS fix is displaced the
  same way, with the accuracy NOT growing; indoor network fixes 200-2,000 m off with provider
  "network" and a matching accuracy; phones of a share of people report GCJ-02. GNSS fixes
  carry a speed (Doppler-like: the true speed plus a little noise, even in a canyon).

Scored in the same run on the same fixes: the engine (`geofence.engine.evaluate` in
time-ordered batches of all people's fixes, state carried between calls; rules from
`DEFAULT_PROFILE.rules_for(level)` for a mix of levels) and a naive tracker (bare
point-in-polygon of each reported coordinate, no accuracy, no CRS conversion; an alert opens on
an outside fix after an inside one and closes at the next inside fix). See `score` for the
exact definitions of a false alert, a detection and the delay.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cached_property
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
import shapely
from shapely.geometry import LineString, Point
from shapely.geometry.base import BaseGeometry

from geofence.crs import CODE_CRS, CRS_CODE, from_wgs84
from geofence.engine import evaluate
from geofence.model import CRS, DeviceState, EventKind, Fix, Membership, Subject, ZoneKind
from geofence.profile import DEFAULT_PROFILE, LEVELS, validate_overrides
from geofence.zones import PreparedZone
from simulators.phone import ACCURACY_68_SIGMAS, District, districts_from_geojson

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

TZ = ZoneInfo("Asia/Shanghai")
DAY = 86_400.0
# Monday 3 March 2025, 00:00 in Wuhan: any date would do, a Monday makes weekdays obvious.
T0 = datetime(2025, 3, 3, tzinfo=TZ).timestamp()

# Noise class of each fix (int8), for the breakdowns.
CLEAN, OUTLIER, CANYON, NETWORK = 0, 1, 2, 3
CLASS_NAMES = ("gnss", "gnss outlier (2-4x accuracy)", "urban canyon (100-500 m)",
               "network (200-2,000 m)")
PROVIDERS = ("gps", "network")

# Violation modes: name, speed range (m/s).
MODES: tuple[tuple[str, float, float], ...] = (
    ("foot", 1.0, 1.6), ("bike", 3.0, 5.0), ("car", 6.0, 14.0), ("metro", 8.0, 12.0))

_M_CODE = {Membership.UNDECIDABLE: 0, Membership.INSIDE: 1, Membership.OUTSIDE: 2,
           Membership.BORDER: 3}
_M_OUTSIDE = _M_CODE[Membership.OUTSIDE]
_M_INSIDE = _M_CODE[Membership.INSIDE]

DURATION_BUCKETS_MIN: tuple[tuple[float, float], ...] = ((0, 10), (10, 30), (30, 120), (120, 1e9))


# --------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class QualityConfig:
    """Every knob of the simulation. Ranges are (low, high)."""

    people: int = 1000
    days: int = 10
    interval_s: float = 60.0
    batch_s: float = 600.0  # one engine call per this much time (all people's fixes)
    seed: int = 1
    levels: tuple[tuple[str, float], ...] = (("strict", 0.25), ("normal", 0.5), ("lenient", 0.25))
    # Where people live and go
    border_home_share: float = 0.3  # homes 50-500 m inside a district border
    work_share: float = 0.6
    border_work_share: float = 0.3  # of workers: workplace 50-500 m inside a border
    border_band_m: tuple[float, float] = (50.0, 500.0)
    min_inside_m: float = 50.0  # every home, workplace and errand place is this far inside
    errands: int = 4  # regular errand places per person
    commute_median_m: float = 4000.0
    errand_median_m: float = 1200.0
    # Violations
    violations_per_person_day: float = 0.04
    violation_minutes: tuple[float, float] = (5.0, 360.0)  # time outside, log-uniform
    violation_depth_m: tuple[float, float] = (500.0, 20_000.0)  # beyond the border, log-uniform
    # Gaps
    gaps_per_person_day: float = 0.3
    gap_minutes: tuple[float, float] = (5.0, 180.0)  # log-uniform
    # Fix quality
    gcj02_share: float = 0.3
    gps_accuracy_median_m: tuple[float, float] = (7.0, 15.0)  # outdoors, indoors
    gps_accuracy_sigma: float = 0.6
    gps_accuracy_m: tuple[float, float] = (3.0, 50.0)
    outlier_share: float = 0.01
    outlier_factor: tuple[float, float] = (2.0, 4.0)
    canyon_share: float = 0.03  # share of the time a phone's GNSS fixes are in a canyon episode
    canyon_m: tuple[float, float] = (100.0, 500.0)
    canyon_episode_s: float = 60.0  # mean duration (exponential) of one displacement episode
    speed_noise_mps: tuple[float, float] = (0.3, 1.0)  # reported (Doppler) speed: clean, canyon
    network_share: tuple[float, float] = (0.02, 0.15)  # outdoors, indoors
    network_error_m: tuple[float, float] = (200.0, 2000.0)  # log-uniform
    network_accuracy_ratio: tuple[float, float] = (1.15, 0.3)  # accuracy/error: median, sigma

    def __post_init__(self) -> None:
        if self.interval_s < 5:
            raise ValueError("interval_s must be at least 5 s")
        ratio = self.batch_s / self.interval_s
        if abs(ratio - round(ratio)) > 1e-9 or ratio < 1:
            raise ValueError("batch_s must be a whole multiple of interval_s")
        if self.canyon_episode_s <= 0:
            raise ValueError("canyon_episode_s must be positive")
        if not math.isclose(sum(s for _, s in self.levels), 1.0, abs_tol=1e-6):
            raise ValueError("level shares must add up to 1")

    @property
    def person_days(self) -> int:
        return self.people * self.days


QUICK = {"people": 100, "days": 2}


# --------------------------------------------------------------------------------------------
# Places


def _loguniform(rng: np.random.Generator, lo: float, hi: float, n: int | None = None) -> Any:
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
    inner: BaseGeometry  # at least min_inside_m inside
    deep: BaseGeometry  # at least border_band_m[1] inside
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
        return cls(index, d, inner, deep, interior, band)

    def covered(self, ax: float, ay: float, bx: FloatArray, by: FloatArray) -> BoolArray:
        """Straight legs from (ax, ay) to each (bx, by) that stay inside the district."""
        coords = np.stack([np.column_stack([np.full(len(bx), ax), np.full(len(bx), ay)]),
                           np.column_stack([bx, by])], axis=1)
        return np.asarray(shapely.covers(self.district.plane, shapely.linestrings(coords)))

    def signed_distance_plane(self, x: float, y: float) -> float:
        """Metres from the border in the simulation's plane: > 0 outside."""
        d = float(shapely.distance(self.boundary, Point(x, y)))
        return -d if shapely.contains_xy(self.district.plane, x, y) else d


def _pick(rng: np.random.Generator, area: Area, fx: float, fy: float, pool: tuple[FloatArray, FloatArray],
          target_m: float, k: int = 48) -> tuple[float, float] | None:
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


# --------------------------------------------------------------------------------------------
# People and their days


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
    phase: float  # offset of the fix grid


@dataclass
class Violation:
    person: int
    start: float
    end: float
    depth_m: float
    mode: str
    from_border_m: float  # how far inside the place the person left from was

    @property
    def minutes(self) -> float:
        return (self.end - self.start) / 60.0


class _Timeline:
    """Legs of one person, appended in time order: (t0, t1, x0, y0, x1, y1, indoor, outside)."""

    def __init__(self, t: float, pos: tuple[float, float]) -> None:
        self.t = t
        self.pos = pos
        self.legs: list[tuple[float, float, float, float, float, float, bool, bool]] = []

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


@dataclass
class Schedule:
    """Everyone's legs (sorted by person, then time), violations and gaps."""

    leg_person: IntArray
    leg_t0: FloatArray
    leg_t1: FloatArray
    leg_xy: FloatArray  # (n, 4): x0, y0, x1, y1
    leg_indoor: BoolArray
    leg_outside: BoolArray
    violations: list[Violation]
    gap_person: IntArray
    gap_start: FloatArray
    gap_end: FloatArray
    canyon_person: IntArray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    canyon_start: FloatArray = field(default_factory=lambda: np.empty(0))
    canyon_end: FloatArray = field(default_factory=lambda: np.empty(0))
    canyon_mag: FloatArray = field(default_factory=lambda: np.empty(0))
    canyon_dir: FloatArray = field(default_factory=lambda: np.empty(0))
    dropped_violations: int = 0

    def __post_init__(self) -> None:
        self._key = self.leg_person * _KEY_SPAN + (self.leg_t0 - T0)
        self._gap_key = self.gap_person * _KEY_SPAN + (self.gap_start - T0)
        dt = np.maximum(self.leg_t1 - self.leg_t0, 1e-9)
        self.leg_speed = np.hypot(self.leg_xy[:, 2] - self.leg_xy[:, 0],
                                  self.leg_xy[:, 3] - self.leg_xy[:, 1]) / dt

    def set_canyons(self, person: IntArray, start: FloatArray, end: FloatArray, mag: FloatArray,
                    direction: FloatArray) -> None:
        order = np.lexsort((start, person))
        self.canyon_person, self.canyon_start, self.canyon_end = person[order], start[order], end[order]
        self.canyon_mag, self.canyon_dir = mag[order], direction[order]
        self._canyon_key = self.canyon_person * _KEY_SPAN + (self.canyon_start - T0)

    def canyon_at(self, person: IntArray, t: FloatArray) -> IntArray:
        """Index of the canyon episode each (person, time) is in, -1 for none (latest wins)."""
        if self.canyon_person.size == 0:
            return np.full(len(person), -1, dtype=np.int64)
        g = np.searchsorted(self._canyon_key, person * _KEY_SPAN + (t - T0), side="right") - 1
        gc = np.clip(g, 0, None)
        hit = (g >= 0) & (self.canyon_person[gc] == person) & (t < self.canyon_end[gc])
        return np.where(hit, gc, -1)

    def leg_at(self, person: IntArray, t: FloatArray) -> IntArray:
        """Index of the leg each (person, time) falls in."""
        return np.searchsorted(self._key, person * _KEY_SPAN + (t - T0), side="right") - 1

    def in_gap(self, person: IntArray, t: FloatArray) -> BoolArray:
        """True where the phone of `person` is silent at `t` (gaps are merged per person)."""
        if self.gap_person.size == 0:
            return np.zeros(len(person), dtype=bool)
        g = np.searchsorted(self._gap_key, person * _KEY_SPAN + (t - T0), side="right") - 1
        ok = g >= 0
        gc = np.clip(g, 0, None)
        return ok & (self.gap_person[gc] == person) & (t < self.gap_end[gc])

    def position(self, leg: IntArray, t: FloatArray) -> tuple[FloatArray, FloatArray]:
        t0, t1 = self.leg_t0[leg], self.leg_t1[leg]
        f = np.clip((t - t0) / np.maximum(t1 - t0, 1e-9), 0.0, 1.0)
        xy = self.leg_xy[leg]
        return xy[:, 0] + f * (xy[:, 2] - xy[:, 0]), xy[:, 1] + f * (xy[:, 3] - xy[:, 1])


_KEY_SPAN = 1e8  # seconds: longer than any run; person * span + time is exact in float64


class World:
    """Districts, people, their schedules and their fixes: everything the benchmark scores."""

    def __init__(self, cfg: QualityConfig, regions: Mapping[str, Any] | None = None) -> None:
        from store.demo import load_regions

        self.cfg = cfg
        rng = np.random.default_rng([cfg.seed, 0])
        districts = districts_from_geojson(regions or load_regions())
        self.areas = [Area.build(k, d, cfg, rng) for k, d in enumerate(districts)]
        self.zones = {a.index: PreparedZone(a.index, 1, ZoneKind.HOME_AREA, a.district.geom_wgs84)
                      for a in self.areas}
        for a in self.areas:
            shapely.prepare(a.district.geom_wgs84)
        self.people = [self._person(rng, p) for p in range(cfg.people)]
        self.schedule = self._schedule(np.random.default_rng([cfg.seed, 1]))
        self._canyons(np.random.default_rng([cfg.seed, 3]))
        n = cfg.people
        self.p_area = np.array([p.area for p in self.people], dtype=np.int64)
        self.p_crs = np.array([p.crs for p in self.people], dtype=np.int8)
        self.p_phase = np.array([p.phase for p in self.people])
        self.p_lon0 = np.array([self.areas[a].district.lon0 for a in self.p_area])
        self.p_lat0 = np.array([self.areas[a].district.lat0 for a in self.p_area])
        self.p_kx = np.array([self.areas[a].district.m_per_deg_lon for a in self.p_area])
        self.p_ky = np.array([self.areas[a].district.m_per_deg_lat for a in self.p_area])
        self.device_ids = [f"q{p:06d}" for p in range(n)]
        self.n_batches = int(round(cfg.days * DAY / cfg.batch_s))

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
        phase = float(rng.uniform(2.0, cfg.interval_s - 2.0))
        return Person(p, area.index, level, crs, border_home, home, work, border_work, errands,
                      work_errands, phase)

    # -- days ------------------------------------------------------------------------------

    def _schedule(self, rng: np.random.Generator) -> Schedule:
        cfg = self.cfg
        n_pd = cfg.people * cfg.days
        n_viol = int(rng.poisson(cfg.violations_per_person_day * n_pd))
        chosen = rng.choice(n_pd, size=min(n_viol, n_pd), replace=False)
        violation_days = {int(c) for c in chosen}
        legs: list[tuple[int, tuple[float, float, float, float, float, float, bool, bool]]] = []
        violations: list[Violation] = []
        dropped = 0
        for person in self.people:
            tl = _Timeline(T0, person.home)
            for day in range(cfg.days):
                start = T0 + day * DAY
                want_violation = person.index * cfg.days + day in violation_days
                ok = self._day(rng, person, tl, start, day % 7 >= 5, want_violation, violations)
                dropped += int(want_violation and not ok)
            tl.dwell(T0 + cfg.days * DAY + DAY)  # past the end: every fix time has a leg
            legs.extend((person.index, leg) for leg in tl.legs)
        gp, gs, ge = self._gaps(rng, violations)
        arr = np.array([leg for _, leg in legs], dtype=np.float64)
        return Schedule(
            leg_person=np.array([p for p, _ in legs], dtype=np.int64),
            leg_t0=arr[:, 0].copy(), leg_t1=arr[:, 1].copy(), leg_xy=arr[:, 2:6].copy(),
            leg_indoor=arr[:, 6].astype(bool), leg_outside=arr[:, 7].astype(bool),
            violations=violations, gap_person=gp, gap_start=gs, gap_end=ge,
            dropped_violations=dropped,
        )

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
            k = int(rng.integers(1, 4))
            for t in np.sort(rng.uniform(8.0, 20.0, k)):
                e = person.errands[int(rng.integers(len(person.errands)))]
                actions.append((start + float(t) * h, 600.0, e))
                actions.append((0.0, float(rng.uniform(20, 120)) * 60, home))
        excursion = None
        if want_violation:
            excursion = self._plan_excursion(rng, person, actions, start)
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

    def _plan_excursion(self, rng: np.random.Generator, person: Person,
                        actions: list[tuple[float, float, tuple[float, float]]], start: float,
                        ) -> tuple[int, float, float, str, float, float] | None:
        """Where in the day the violation goes, its time outside, mode, speed and depth."""
        cfg = self.cfg
        minutes = float(_loguniform(rng, *cfg.violation_minutes))
        t_out = minutes * 60.0
        feasible = [m for m in MODES if m[2] * t_out / 2 >= cfg.violation_depth_m[0]]
        if not feasible:
            return None
        name, lo, hi = feasible[int(rng.integers(len(feasible)))]
        speed = float(rng.uniform(lo, hi))
        max_depth = min(cfg.violation_depth_m[1], speed * t_out / 2)
        if max_depth < cfg.violation_depth_m[0]:
            speed = cfg.violation_depth_m[0] * 2 / t_out
            max_depth = cfg.violation_depth_m[0]
        depth = float(_loguniform(rng, cfg.violation_depth_m[0], max_depth))
        latest = start + 23 * 3600.0 - t_out - 3600.0
        tv = float(rng.uniform(start + 7 * 3600.0, max(start + 7 * 3600.0, latest)))
        # Before the first action planned after tv (actions with earliest 0 follow their chain).
        pos = next((i for i, a in enumerate(actions) if a[0] > tv), len(actions))
        return pos, tv, t_out, name, speed, depth

    def _excursion(self, rng: np.random.Generator, person: Person, tl: _Timeline,
                   plan: tuple[float, float, str, float, float]) -> Violation | None:
        """Leave from where the person is, cross the nearest border, go out, stay, come back."""
        tv, t_out, mode, speed, depth = plan
        area = self.areas[person.area]
        px, py = tl.pos
        edge = shapely.get_point(shapely.shortest_line(area.boundary, Point(px, py)), 0)
        bx, by = float(shapely.get_x(edge)), float(shapely.get_y(edge))
        a = math.hypot(bx - px, by - py)
        u = ((bx - px) / a, (by - py) / a)
        q = None
        for turn in (0, 20, -20, 40, -40, 60, -60, 80, -80):
            c, s = math.cos(math.radians(turn)), math.sin(math.radians(turn))
            v = (u[0] * c - u[1] * s, u[0] * s + u[1] * c)
            reach = self._clear_ray(area, bx, by, v, depth)
            if reach >= self.cfg.violation_depth_m[0]:
                d = min(depth, reach)
                q = (bx + v[0] * d, by + v[1] * d)
                depth = d
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
        return Violation(person.index, out_start, out_end, depth, mode, a)

    @staticmethod
    def _clear_ray(area: Area, bx: float, by: float, v: tuple[float, float], depth: float) -> float:
        """How far from the border point (bx, by) along v the way stays outside the district."""
        far = LineString([(bx + v[0], by + v[1]), (bx + v[0] * depth, by + v[1] * depth)])
        hit = shapely.intersection(area.district.plane, far)
        if hit.is_empty:
            return depth
        return float(shapely.distance(Point(bx, by), hit)) - 200.0

    def _canyons(self, rng: np.random.Generator) -> None:
        """Urban-canyon episodes per person: Poisson starts, exponential durations."""
        cfg = self.cfg
        total = cfg.days * DAY + DAY
        rate = cfg.canyon_share / cfg.canyon_episode_s  # episodes per second and person
        n = rng.poisson(rate * total, cfg.people)
        person = np.repeat(np.arange(cfg.people, dtype=np.int64), n)
        start = T0 + rng.uniform(0.0, total, person.size)
        end = start + rng.exponential(cfg.canyon_episode_s, person.size)
        self.schedule.set_canyons(person, start, end, rng.uniform(*cfg.canyon_m, person.size),
                                  rng.uniform(0.0, 2 * math.pi, person.size))

    def _gaps(self, rng: np.random.Generator, violations: Sequence[Violation],
              ) -> tuple[IntArray, FloatArray, FloatArray]:
        cfg = self.cfg
        n = int(rng.poisson(cfg.gaps_per_person_day * cfg.person_days))
        person = rng.integers(0, cfg.people, n)
        start = T0 + rng.uniform(0.0, cfg.days * DAY, n)
        end = start + _loguniform(rng, *cfg.gap_minutes, n) * 60.0
        keep = np.ones(n, dtype=bool)
        by_person: dict[int, list[Violation]] = {}
        for v in violations:
            by_person.setdefault(v.person, []).append(v)
        for i in range(n):
            for v in by_person.get(int(person[i]), ()):
                if start[i] < v.end + 900.0 and end[i] > v.start - 900.0:
                    keep[i] = False
        person, start, end = person[keep], start[keep], end[keep]
        order = np.lexsort((start, person))
        person, start, end = person[order], start[order], end[order]
        # Merge overlaps per person, so that the last gap starting before t decides.
        mp: list[int] = []
        ms: list[float] = []
        me: list[float] = []
        for p, s, e in zip(person.tolist(), start.tolist(), end.tolist(), strict=True):
            if mp and mp[-1] == p and s <= me[-1]:
                me[-1] = max(me[-1], e)
            else:
                mp.append(p)
                ms.append(s)
                me.append(e)
        return np.array(mp, dtype=np.int64), np.array(ms), np.array(me)

    # -- fixes -----------------------------------------------------------------------------

    def batch(self, b: int) -> FixChunk:
        """All people's fixes in [T0 + b * batch_s, T0 + (b + 1) * batch_s), by person and time.

        The random draws depend on the seed and the batch number only, so any subset of people
        sees the same fixes whatever else is computed.
        """
        cfg, sch = self.cfg, self.schedule
        rng = np.random.default_rng([cfg.seed, 2, b])
        c0 = T0 + b * cfg.batch_s
        per = int(round(cfg.batch_s / cfg.interval_s))
        n_people = cfg.people
        person = np.repeat(np.arange(n_people, dtype=np.int64), per)
        # Each person's grid: T0 + phase + k * interval (phase in [2, interval - 2]), +-1 s jitter.
        k = np.tile(np.arange(per), n_people)
        t = c0 + self.p_phase[person] + k * cfg.interval_s + rng.uniform(-1.0, 1.0, person.size)
        m = person.size
        # Draw everything before any filtering, so the draws do not depend on the gaps.
        u_class = rng.random(m)
        z_acc = rng.normal(0.0, 1.0, m)
        u_err = rng.random(m)
        theta = rng.uniform(0.0, 2 * math.pi, m)
        u_outlier = rng.uniform(*cfg.outlier_factor, m)
        net_err = _loguniform(rng, *cfg.network_error_m, m)
        net_ratio = np.exp(rng.normal(math.log(cfg.network_accuracy_ratio[0]),
                                      cfg.network_accuracy_ratio[1], m))
        z_speed = rng.normal(0.0, 1.0, m)

        keep = ~sch.in_gap(person, t)
        idx = np.flatnonzero(keep)
        person, t = person[idx], t[idx]
        leg = sch.leg_at(person, t)
        x, y = sch.position(leg, t)
        indoor = sch.leg_indoor[leg]
        outside = sch.leg_outside[leg]
        true_speed = np.where(sch.leg_t1[leg] > sch.leg_t0[leg], sch.leg_speed[leg], 0.0)

        net_p = np.where(indoor, cfg.network_share[1], cfg.network_share[0])
        u = u_class[idx]
        network = u < net_p
        outlier = ~network & (u < net_p + cfg.outlier_share)
        acc = self._gps_accuracy(rng, z_acc[idx], indoor)
        sigma = acc / ACCURACY_68_SIGMAS
        err = sigma * np.sqrt(-2.0 * np.log1p(-u_err[idx]))  # Rayleigh, 68 % within acc
        err[outlier] = acc[outlier] * u_outlier[idx][outlier]
        ang = theta[idx]
        cls = np.where(outlier, OUTLIER, CLEAN).astype(np.int8)
        ep = sch.canyon_at(person, t)
        canyon = (ep >= 0) & ~network
        if canyon.any():
            e = ep[canyon]
            err[canyon] = np.clip(sch.canyon_mag[e] * (1.0 + 0.05 * z_acc[idx][canyon]),
                                  *cfg.canyon_m)
            ang = ang.copy()
            ang[canyon] = sch.canyon_dir[e]
            cls[canyon] = CANYON
        speed_noise = np.where(canyon, cfg.speed_noise_mps[1], cfg.speed_noise_mps[0])
        speed = np.abs(true_speed + speed_noise * z_speed[idx])
        speed[network] = np.nan
        err[network] = net_err[idx][network]
        acc[network] = np.maximum(net_err[idx][network] * net_ratio[idx][network], 1.0)
        cls[network] = NETWORK
        rx = x + err * np.cos(ang)
        ry = y + err * np.sin(ang)

        lon0, lat0 = self.p_lon0[person], self.p_lat0[person]
        kx, ky = self.p_kx[person], self.p_ky[person]
        true_lon, true_lat = lon0 + x / kx, lat0 + y / ky
        wgs_lon, wgs_lat = lon0 + rx / kx, lat0 + ry / ky
        crs = self.p_crs[person]
        lon, lat = wgs_lon.copy(), wgs_lat.copy()
        g = crs == CRS_CODE[CRS.GCJ02]
        if g.any():
            lon[g], lat[g] = from_wgs84(wgs_lon[g], wgs_lat[g], CRS.GCJ02)
        return FixChunk(b, c0, c0 + cfg.batch_s, person, t, lon, lat, crs, acc,
                        network.astype(np.int8), cls, true_lon, true_lat, outside, wgs_lon, wgs_lat,
                        speed)

    def _gps_accuracy(self, rng: np.random.Generator, z: FloatArray, indoor: BoolArray) -> FloatArray:
        cfg = self.cfg
        lo, hi = cfg.gps_accuracy_m
        med = np.where(indoor, cfg.gps_accuracy_median_m[1], cfg.gps_accuracy_median_m[0])
        acc = med * np.exp(cfg.gps_accuracy_sigma * z)
        for _ in range(20):  # truncated log-normal: redraw what falls outside [lo, hi]
            bad = (acc < lo) | (acc > hi)
            if not bad.any():
                break
            acc[bad] = med[bad] * np.exp(cfg.gps_accuracy_sigma * rng.normal(0.0, 1.0, int(bad.sum())))
        return np.clip(acc, lo, hi)

    # -- subjects --------------------------------------------------------------------------

    def subjects(self, overrides: Mapping[str, Any] | None = None,
                 people: Iterable[int] | None = None) -> dict[str, Subject]:
        chosen = range(self.cfg.people) if people is None else people
        return {
            self.device_ids[p]: Subject(p, self.people[p].area,
                                        rules=DEFAULT_PROFILE.rules_for(self.people[p].level, overrides),
                                        profile=DEFAULT_PROFILE.label)
            for p in chosen
        }

    def outside_truth(self, person: int, t: float) -> bool:
        """Whether the TRUE position of `person` at `t` is outside the home area."""
        return any(v.person == person and v.start <= t < v.end for v in self.schedule.violations)


@dataclass
class FixChunk:
    """The fixes of one batch, sorted by person then time; lon/lat as reported."""

    batch: int
    start: float
    end: float
    person: IntArray
    time: FloatArray
    lon: FloatArray
    lat: FloatArray
    crs: npt.NDArray[np.int8]
    accuracy: FloatArray
    provider: npt.NDArray[np.int8]  # 0 gps, 1 network
    cls: npt.NDArray[np.int8]
    true_lon: FloatArray
    true_lat: FloatArray
    outside: BoolArray  # ground truth: true position outside the home area
    wgs_lon: FloatArray
    wgs_lat: FloatArray
    speed: FloatArray  # reported speed (m/s), NaN: none (network fixes)

    def __len__(self) -> int:
        return len(self.person)

    def select(self, keep: BoolArray) -> FixChunk:
        return FixChunk(self.batch, self.start, self.end, *(getattr(self, f)[keep] for f in (
            "person", "time", "lon", "lat", "crs", "accuracy", "provider", "cls", "true_lon",
            "true_lat", "outside", "wgs_lon", "wgs_lat", "speed")))


# --------------------------------------------------------------------------------------------
# The two trackers


@dataclass
class AlertLog:
    """Area-exit alerts: who, first evidence, triggering fix time, when it closed (inf: never)."""

    person: list[int] = field(default_factory=list)
    since: list[float] = field(default_factory=list)
    time: list[float] = field(default_factory=list)
    closed: list[float] = field(default_factory=list)

    def add(self, person: int, since: float, t: float, closed: float = math.inf) -> None:
        self.person.append(person)
        self.since.append(since)
        self.time.append(t)
        self.closed.append(closed)

    def extend(self, other: AlertLog) -> None:
        for name in ("person", "since", "time", "closed"):
            getattr(self, name).extend(getattr(other, name))

    def __len__(self) -> int:
        return len(self.person)


class NaiveTracker:
    """Bare point-in-polygon per fix on the reported coordinates, as open-source trackers do.

    The zone is the same WGS-84 home area the engine uses; the phone's coordinates are taken
    as they come (a GCJ-02 phone's are not converted), accuracy and provider are ignored. An
    alert opens when a fix is outside and the previous one was inside (the first fix counts as
    coming after "inside"), and closes at the next inside fix: one open alert at a time.
    """

    def __init__(self, areas: Sequence[Area], people_area: IntArray) -> None:
        self.geoms = [a.district.geom_wgs84 for a in areas]
        self.p_area = people_area
        self.prev_out: dict[int, bool] = {}
        self.open_at: dict[int, int] = {}  # person -> index in log
        self.log = AlertLog()
        self.wrong_side = Counter[int]()  # noise class -> fixes outside while truly inside
        self.missed_side = 0  # fixes inside while truly outside

    def outside(self, chunk: FixChunk) -> BoolArray:
        out = np.zeros(len(chunk), dtype=bool)
        area = self.p_area[chunk.person]
        for k in np.unique(area):
            sel = area == k
            out[sel] = ~shapely.contains_xy(self.geoms[int(k)], chunk.lon[sel], chunk.lat[sel])
        return out

    def feed(self, chunk: FixChunk) -> None:
        out = self.outside(chunk)
        for c, n in Counter(chunk.cls[out & ~chunk.outside].tolist()).items():
            self.wrong_side[c] += n
        self.missed_side += int((~out & chunk.outside).sum())
        person = chunk.person
        if len(person) == 0:
            return
        first = np.r_[True, person[1:] != person[:-1]]
        prev = np.r_[False, out[:-1]]
        firsts = np.flatnonzero(first)
        prev[firsts] = [self.prev_out.get(int(p), False) for p in person[firsts]]
        changes = np.flatnonzero(out != prev)
        for i in changes.tolist():
            p = int(person[i])
            if out[i]:
                self.open_at[p] = len(self.log)
                self.log.add(p, float(chunk.time[i]), float(chunk.time[i]))
            elif p in self.open_at:
                self.log.closed[self.open_at.pop(p)] = float(chunk.time[i])
        lasts = np.r_[firsts[1:] - 1, len(person) - 1]
        for i in lasts.tolist():
            self.prev_out[int(person[i])] = bool(out[i])


@dataclass
class EngineRun:
    """One engine variant (a set of rule overrides) fed the same fixes as everyone else."""

    name: str
    overrides: dict[str, Any]
    subjects: dict[str, Subject]
    people: IntArray
    states: dict[str, DeviceState] = field(default_factory=dict)
    log: AlertLog = field(default_factory=AlertLog)
    open_at: dict[int, int] = field(default_factory=dict)
    other: Counter[str] = field(default_factory=Counter)  # other events by rule
    wrong_side: Counter[int] = field(default_factory=Counter)
    missed_side: int = 0
    # Fixes judged wholly outside while truly inside: (person, time, class, lon, lat, accuracy)
    evidence: list[tuple[int, float, int, float, float, float]] = field(default_factory=list)
    seconds: float = 0.0
    fixes: int = 0

    def feed(self, chunk: FixChunk, fixes: list[Fix], pid: dict[str, int]) -> None:
        t = time.perf_counter()
        res = evaluate(fixes, self.subjects, _ZONES, self.states, now=chunk.end)
        self.seconds += time.perf_counter() - t
        self.fixes += len(fixes)
        self.states.update(res.states)
        dec = res.decisions
        if len(dec) != len(fixes) or (dec and (dec[0].fix is not fixes[0] or dec[-1].fix is not fixes[-1])):
            pos = {id(f): i for i, f in enumerate(fixes)}
            dec = sorted(dec, key=lambda d: pos[id(d.fix)])
        codes = np.fromiter((_M_CODE[d.membership] for d in dec), dtype=np.int8, count=len(dec))
        wrong = (codes == _M_OUTSIDE) & ~chunk.outside
        for c, n in Counter(chunk.cls[wrong].tolist()).items():
            self.wrong_side[c] += n
        self.missed_side += int(((codes == _M_INSIDE) & chunk.outside).sum())
        for i in np.flatnonzero(wrong).tolist():
            self.evidence.append((int(chunk.person[i]), float(chunk.time[i]), int(chunk.cls[i]),
                                  float(chunk.true_lon[i]), float(chunk.true_lat[i]),
                                  float(chunk.accuracy[i])))
        for e in res.events:
            p = pid[e.device_id]
            if e.kind == EventKind.AREA_EXIT:
                self.open_at[p] = len(self.log)
                self.log.add(p, float(e.since if e.since is not None else e.fix_time), e.fix_time)
            elif e.kind == EventKind.AREA_RETURN:
                if p in self.open_at:
                    self.log.closed[self.open_at.pop(p)] = e.fix_time
            else:
                self.other[e.reason.rule] += 1


_ZONES: dict[int, PreparedZone] = {}
_WORLD: World | None = None


def _fix_objects(world: World, chunk: FixChunk) -> list[Fix]:
    crs_of = [CODE_CRS[c] for c in sorted(CODE_CRS)]
    dev = world.device_ids
    speed = [None if math.isnan(v) else round(v, 2) for v in chunk.speed.tolist()]
    return [
        Fix(dev[p], t, x, y, crs_of[c], a, speed=sp, provider=PROVIDERS[v])
        for p, t, x, y, c, a, sp, v in zip(
            chunk.person.tolist(), chunk.time.tolist(), chunk.lon.tolist(), chunk.lat.tolist(),
            chunk.crs.tolist(), chunk.accuracy.tolist(), speed, chunk.provider.tolist(), strict=True)
    ]


@dataclass
class PartResult:
    """What one worker (a share of the people) found."""

    engines: list[EngineRun]
    naive_log: AlertLog
    naive_wrong: Counter[int]
    naive_missed: int
    class_counts: Counter[int]
    fixes: int
    truth_outside_fixes: int
    gen_s: float
    fix_obj_s: float
    naive_s: float


def run_part(world: World, variants: Sequence[tuple[str, dict[str, Any]]], people: IntArray,
             progress: bool = False) -> PartResult:
    """Feed every batch of the given people's fixes to the engine variants and the naive rule."""
    global _ZONES
    _ZONES = world.zones
    mine = np.zeros(world.cfg.people, dtype=bool)
    mine[people] = True
    engines = [EngineRun(name, ov, world.subjects(ov, people.tolist()), people)
               for name, ov in variants]
    naive = NaiveTracker(world.areas, world.p_area)
    pid = {world.device_ids[p]: int(p) for p in people}
    classes: Counter[int] = Counter()
    n_fix = truth_out = 0
    gen_s = obj_s = naive_s = 0.0
    t_start = time.perf_counter()
    for b in range(world.n_batches):
        t = time.perf_counter()
        chunk = world.batch(b)
        chunk = chunk.select(mine[chunk.person])
        gen_s += time.perf_counter() - t
        n_fix += len(chunk)
        truth_out += int(chunk.outside.sum())
        classes.update(chunk.cls.tolist())
        t = time.perf_counter()
        naive.feed(chunk)
        naive_s += time.perf_counter() - t
        t = time.perf_counter()
        fixes = _fix_objects(world, chunk)
        obj_s += time.perf_counter() - t
        for eng in engines:
            eng.feed(chunk, fixes, pid)
        if progress and (b + 1) % max(1, world.n_batches // 20) == 0:
            el = time.perf_counter() - t_start
            print(f"  ... batch {b + 1}/{world.n_batches}, {n_fix:,} fixes, {el:.0f} s",
                  file=sys.stderr, flush=True)
    return PartResult(engines, naive.log, naive.wrong_side, naive.missed_side, classes, n_fix,
                      truth_out, gen_s, obj_s, naive_s)


def _worker(args: tuple[Sequence[tuple[str, dict[str, Any]]], IntArray]) -> PartResult:
    assert _WORLD is not None
    return run_part(_WORLD, args[0], args[1])


# --------------------------------------------------------------------------------------------
# Scoring


@dataclass
class Score:
    """How one tracker did against the ground truth (see `score` for the definitions)."""

    person_days: float
    alerts: int
    false_alerts: int
    violations: int
    detected: int
    covered: int  # not detected, but an earlier alert of the person was still open at the start
    violations_10: int
    detected_10: int
    delays_s: FloatArray  # per detected violation
    delays_10_s: FloatArray
    detected_ids: set[int] = field(default_factory=set)
    false_ids: list[int] = field(default_factory=list)  # indices into the alert log

    @property
    def false_per_person_day(self) -> float:
        return self.false_alerts / self.person_days if self.person_days else math.nan

    @property
    def share(self) -> float:
        return self.detected / self.violations if self.violations else math.nan

    @property
    def share_10(self) -> float:
        return self.detected_10 / self.violations_10 if self.violations_10 else math.nan

    def delay(self, q: float, ten: bool = False) -> float:
        d = self.delays_10_s if ten else self.delays_s
        return float(np.percentile(d, q)) if d.size else math.nan


def score(log: AlertLog, violations: Sequence[Violation], person_days: float) -> Score:
    """Score area-exit alerts against the ground-truth violation intervals.

    - An alert's evidence window is [first evidence fix time, triggering fix time] (the naive
      rule's window is its single fix). The alert is TRUE when that window overlaps a violation
      interval [start, end) of the same person (first evidence < end and trigger >= start);
      otherwise it is FALSE. False alerts per person-day = false alerts / (people x days).
    - A violation is DETECTED by the earliest true alert overlapping it; the detection delay is
      the triggering fix time minus the violation's true start.
    - A violation not detected while an earlier alert of the person was still open at its
      start is counted as "covered" (not as detected).
    """
    by_person: dict[int, list[int]] = {}
    for k, v in enumerate(violations):
        by_person.setdefault(v.person, []).append(k)
    first: dict[int, float] = {}
    false_ids: list[int] = []
    for i in range(len(log)):
        p, s, t = log.person[i], log.since[i], log.time[i]
        hit = False
        for k in by_person.get(p, ()):
            v = violations[k]
            if s < v.end and t >= v.start:
                hit = True
                if k not in first or t < first[k]:
                    first[k] = t
        if not hit:
            false_ids.append(i)
    covered = 0
    for k, v in enumerate(violations):
        if k in first:
            continue
        if any(log.person[i] == v.person and log.time[i] < v.start < log.closed[i]
               for i in range(len(log))):
            covered += 1
    ten = [k for k, v in enumerate(violations) if v.end - v.start >= 600.0]
    delays = np.array([first[k] - violations[k].start for k in sorted(first)])
    delays_10 = np.array([first[k] - violations[k].start for k in ten if k in first])
    return Score(person_days, len(log), len(false_ids), len(violations), len(first), covered,
                 len(ten), sum(1 for k in ten if k in first), delays, delays_10,
                 set(first), false_ids)


# --------------------------------------------------------------------------------------------
# Report


def _fmt(v: float, spec: str = ".4f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _minutes(s: float) -> str:
    return "n/a" if math.isnan(s) else f"{s / 60:.1f} min"


def main_table(scores: Sequence[tuple[str, Score]]) -> list[list[str]]:
    """Rows of the headline table: metric, one column per tracker, target."""
    rows = [["metric", *[n for n, _ in scores], "target"]]

    def row(name: str, f: Any, target: str = "") -> None:
        rows.append([name, *[f(s) for _, s in scores], target])

    row("false area-exit alerts / person-day", lambda s: _fmt(s.false_per_person_day), "≤ 0.01")
    row("false area-exit alerts", lambda s: f"{s.false_alerts:,}")
    row("area-exit alerts (all)", lambda s: f"{s.alerts:,}")
    row("violations detected (all)", lambda s: f"{s.detected}/{s.violations} "
        f"({100 * s.share:.1f} %)")
    row("violations ≥ 10 min detected", lambda s: f"{s.detected_10}/{s.violations_10} "
        f"({100 * s.share_10:.1f} %)", "100 %")
    row("missed, but an earlier alert still open", lambda s: f"{s.covered}")
    row("detection delay p50 (all detected)", lambda s: _minutes(s.delay(50)), "≤ 3 min")
    row("detection delay p95 (all detected)", lambda s: _minutes(s.delay(95)))
    row("detection delay p50 / p95 (≥ 10 min)",
        lambda s: f"{_minutes(s.delay(50, True))} / {_minutes(s.delay(95, True))}")
    return rows


def render(rows: Sequence[Sequence[str]], markdown: bool) -> str:
    if markdown:
        out = ["| " + " | ".join(rows[0]) + " |",
               "|" + "|".join("---" if i == 0 else "---:" for i in range(len(rows[0]))) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
        return "\n".join(out)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, r in enumerate(rows):
        lines.append("  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i])
                               for i, c in enumerate(r)))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _bucket_rows(violations: Sequence[Violation], scores: Sequence[tuple[str, Score]]) -> list[list[str]]:
    rows = [["true violation length", "count", *[f"{n} detected" for n, _ in scores],
             *[f"{n} delay p50" for n, _ in scores]]]
    for lo, hi in DURATION_BUCKETS_MIN:
        ids = [k for k, v in enumerate(violations) if lo <= v.minutes < hi]
        label = f"{lo:g}–{hi:g} min" if hi < 1e8 else f"≥ {lo:g} min"
        r = [label, str(len(ids))]
        for _, s in scores:
            r.append(f"{sum(1 for k in ids if k in s.detected_ids)}")
        for _, s in scores:
            d = [s.delays_s[sorted(s.detected_ids).index(k)] for k in ids if k in s.detected_ids]
            r.append(_minutes(float(np.median(d))) if d else "n/a")
        rows.append(r)
    return rows


@dataclass
class Report:
    cfg: QualityConfig
    world: World
    result: PartResult
    scores: list[tuple[str, Score]]
    wall_s: float
    setup_s: float

    def text(self) -> str:
        cfg, w, r = self.cfg, self.world, self.result
        v = w.schedule.violations
        total = sum(r.class_counts.values())
        levels = Counter(p.level for p in w.people)
        out = []
        out.append(f"Alert-quality benchmark: {cfg.people:,} people x {cfg.days} days = "
                   f"{cfg.person_days:,} person-days, a fix every {cfg.interval_s:g} s, seed {cfg.seed}")
        out.append(f"  fixes: {r.fixes:,} (true position outside the home area: "
                   f"{r.truth_outside_fixes:,}); by noise class: " + ", ".join(
                       f"{CLASS_NAMES[c]} {100 * r.class_counts[c] / max(total, 1):.2f} %"
                       for c in sorted(r.class_counts)))
        gcj = int((w.p_crs == CRS_CODE[CRS.GCJ02]).sum())
        out.append(f"  people: {sum(p.border_home for p in w.people)} live and "
                   f"{sum(p.border_work for p in w.people)} work 50-500 m inside a border; "
                   f"{gcj} phones report GCJ-02; levels "
                   + ", ".join(f"{lv} {levels[lv]}" for lv in LEVELS if levels[lv]))
        modes = Counter(x.mode for x in v)
        out.append(f"  true violations: {len(v)} ({len(v) / cfg.person_days * 100:.1f} per 100 "
                   f"person-days; {w.schedule.dropped_violations} planned ones found no way out), "
                   f"{sum(x.minutes >= 10 for x in v)} lasting ≥ 10 min; by "
                   + ", ".join(f"{m} {modes[m]}" for m, *_ in MODES)
                   + f"; depth {min((x.depth_m for x in v), default=0):.0f}-"
                   f"{max((x.depth_m for x in v), default=0):.0f} m")
        out.append(f"  gaps: {len(w.schedule.gap_start)} (phone off / no signal, "
                   f"{cfg.gap_minutes[0]:g}-{cfg.gap_minutes[1]:g} min)")
        out.append("  engine: geofence.engine.evaluate, one call per "
                   f"{cfg.batch_s:g} s of all people's fixes, rules DEFAULT_PROFILE "
                   f"({DEFAULT_PROFILE.label}).rules_for(level)")
        for e in r.engines:
            if e.overrides:
                out.append(f"    variant {e.name}: overrides {e.overrides}")
        out.append("  naive: point-in-polygon of each reported coordinate in the WGS-84 home area, "
                   "no accuracy, no CRS conversion; opens on inside->outside, closes when inside")
        out.append("")
        out.append("A false alert: an area-exit alert whose evidence window [first evidence fix, "
                   "triggering fix] overlaps no true violation [start, end) of that person. "
                   "Delay: triggering fix time - true start.")
        out.append("")
        out.append(render(main_table(self.scores), markdown=False))
        out.append("")
        out.append(render(_bucket_rows(v, self.scores), markdown=False))
        out.append("")
        out.append(self._levels())
        out.append("")
        out.append(self._noise())
        out.append("")
        out.append(self._false_causes())
        missed = self._missed()
        if missed:
            out.append("")
            out.append(missed)
        out.append("")
        out.append(self._timing())
        return "\n".join(out)

    def markdown(self) -> str:
        cfg = self.cfg
        head = (f"Alert quality ({cfg.people:,} people × {cfg.days} days = {cfg.person_days:,} "
                f"person-days, a fix every {cfg.interval_s:g} s, seed {cfg.seed}; "
                f"`python -m simulators.quality`):\n\n")
        return (head + render(main_table(self.scores), markdown=True) + "\n\n"
                + render(_bucket_rows(self.world.schedule.violations, self.scores), markdown=True))

    def _levels(self) -> str:
        w = self.world
        rows = [["engine by level", "people", "false alerts", "/ person-day", "≥10 min detected",
                 "delay p50", "delay p95"]]
        for e in self.result.engines:
            for lv in LEVELS:
                ppl = {p.index for p in w.people if p.level == lv}
                if not ppl:
                    continue
                log = AlertLog()
                for i in range(len(e.log)):
                    if e.log.person[i] in ppl:
                        log.add(e.log.person[i], e.log.since[i], e.log.time[i], e.log.closed[i])
                vs = [x for x in w.schedule.violations if x.person in ppl]
                s = score(log, vs, len(ppl) * self.cfg.days)
                rows.append([f"{e.name} / {lv}", str(len(ppl)), str(s.false_alerts),
                             _fmt(s.false_per_person_day), f"{s.detected_10}/{s.violations_10}",
                             _minutes(s.delay(50)), _minutes(s.delay(95))])
        return render(rows, markdown=False)

    def _noise(self) -> str:
        r = self.result
        rows = [["fixes judged outside while truly inside", "fixes", *[e.name for e in r.engines],
                 "naive"]]
        for c in sorted(r.class_counts):
            rows.append([CLASS_NAMES[c], f"{r.class_counts[c]:,}",
                         *[f"{e.wrong_side[c]:,}" for e in r.engines], f"{r.naive_wrong[c]:,}"])
        rows.append(["(judged inside while truly outside)", f"{r.truth_outside_fixes:,}",
                     *[f"{e.missed_side:,}" for e in r.engines], f"{r.naive_missed:,}"])
        return render(rows, markdown=False)

    def _false_causes(self) -> str:
        """What the wholly-outside evidence of each false engine alert was made of."""
        w, lines = self.world, []
        for (name, s), e in zip(self.scores, self.result.engines, strict=False):
            if not s.false_ids:
                lines.append(f"{name}: no false alerts")
                continue
            ev: dict[int, list[tuple[int, float, int, float, float, float]]] = {}
            for item in e.evidence:
                ev.setdefault(item[0], []).append(item)
            causes: Counter[str] = Counter()
            examples: list[str] = []
            for i in s.false_ids:
                p, since, t = e.log.person[i], e.log.since[i], e.log.time[i]
                items = [x for x in ev.get(p, []) if since <= x[1] <= t]
                kinds = sorted({CLASS_NAMES[x[2]].split(" (")[0] for x in items})
                key = " + ".join(kinds) or "unknown"
                causes[key] += 1
                if len(examples) < 8:
                    zone = w.zones[w.people[p].area]
                    dist = [zone.signed_distance(x[3], x[4]) for x in items]
                    examples.append(
                        f"    person {p} ({w.people[p].level}, {w.areas[w.people[p].area].district.name}"
                        f"{', GCJ-02' if w.p_crs[p] else ''}): {len(items)} outside fixes over "
                        f"{(t - since) / 60:.1f} min, true position {min(dist, default=0):.0f}.."
                        f"{max(dist, default=0):.0f} m from the border, accuracy "
                        + "/".join(f"{x[5]:.0f}" for x in items) + " m, classes "
                        + "/".join(str(x[2]) for x in items))
            lines.append(f"{name}: {s.false_alerts} false alerts; evidence made of: "
                         + ", ".join(f"{k} {n}" for k, n in causes.most_common()))
            lines.extend(examples)
        return "\n".join(lines)

    def _missed(self) -> str:
        lines = []
        v = self.world.schedule.violations
        for name, s in self.scores:
            if name == "naive":
                continue
            miss = [x for k, x in enumerate(v) if k not in s.detected_ids and x.minutes >= 10]
            slow = sorted(((s.delays_s[j], v[k]) for j, k in enumerate(sorted(s.detected_ids))),
                          key=lambda d: -d[0])[:5]
            if miss:
                lines.append(f"{name}: missed violations ≥ 10 min:")
                lines.extend(f"    person {x.person} ({self.world.people[x.person].level}): "
                             f"{x.minutes:.1f} min, {x.mode}, {x.depth_m:.0f} m deep" for x in miss[:10])
            if slow:
                lines.append(f"{name}: slowest detections: " + "; ".join(
                    f"{d / 60:.1f} min ({x.minutes:.0f} min {x.mode} {x.depth_m:.0f} m, "
                    f"{self.world.people[x.person].level})" for d, x in slow))
        return "\n".join(lines)

    def _timing(self) -> str:
        r = self.result
        lines = [f"Run time: {self.wall_s:.1f} s wall (setup: districts, people and schedules "
                 f"{self.setup_s:.1f} s; fix generation {r.gen_s:.1f} s; Fix objects "
                 f"{r.fix_obj_s:.1f} s; naive rule {r.naive_s:.1f} s)"]
        for e in r.engines:
            rate = e.fixes / e.seconds if e.seconds else math.nan
            lines.append(f"  engine {e.name}: evaluate() {e.seconds:.1f} s for {e.fixes:,} fixes = "
                         f"{rate:,.0f} fixes/s (one core); other events: "
                         + (", ".join(f"{k} {n}" for k, n in sorted(e.other.items())) or "none"))
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Entry point


def run(cfg: QualityConfig, variants: Sequence[tuple[str, dict[str, Any]]] = (("engine", {}),),
        workers: int = 1, progress: bool = False) -> Report:
    """Build the world, run every tracker over it and score them."""
    global _WORLD
    t0 = time.perf_counter()
    world = World(cfg)
    setup_s = time.perf_counter() - t0
    people = np.arange(cfg.people)
    if workers <= 1:
        result = run_part(world, variants, people, progress)
    else:
        _WORLD = world
        parts_in = [(variants, people[i::workers]) for i in range(workers)]
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_worker, parts_in)
        result = _merge(parts)
    scores = [(e.name, score(e.log, world.schedule.violations, cfg.person_days)) for e in result.engines]
    scores.append(("naive", score(result.naive_log, world.schedule.violations, cfg.person_days)))
    return Report(cfg, world, result, scores, time.perf_counter() - t0, setup_s)


def _merge(parts: Sequence[PartResult]) -> PartResult:
    first = parts[0]
    for other in parts[1:]:
        for e, o in zip(first.engines, other.engines, strict=True):
            e.log.extend(o.log)
            e.other.update(o.other)
            e.wrong_side.update(o.wrong_side)
            e.missed_side += o.missed_side
            e.evidence.extend(o.evidence)
            e.seconds += o.seconds
            e.fixes += o.fixes
        first.naive_log.extend(other.naive_log)
        first.naive_wrong.update(other.naive_wrong)
        first.naive_missed += other.naive_missed
        first.class_counts.update(other.class_counts)
        first.fixes += other.fixes
        first.truth_outside_fixes += other.truth_outside_fixes
        first.gen_s += other.gen_s
        first.fix_obj_s += other.fix_obj_s
        first.naive_s += other.naive_s
    return first


def _parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    name, _, spec = text.partition(":")
    overrides: dict[str, Any] = {}
    for item in filter(None, spec.split(",")):
        k, _, v = item.partition("=")
        overrides[k.strip()] = float(v)
    return name, validate_overrides(overrides)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m simulators.quality", description=__doc__.split("\n")[0])
    ap.add_argument("--people", type=int, default=QualityConfig.people)
    ap.add_argument("--days", type=int, default=QualityConfig.days)
    ap.add_argument("--interval", type=float, default=QualityConfig.interval_s, help="seconds between fixes")
    ap.add_argument("--batch", type=float, default=QualityConfig.batch_s,
                    help="seconds of all people's fixes per evaluate() call")
    ap.add_argument("--seed", type=int, default=QualityConfig.seed)
    ap.add_argument("--quick", action="store_true", help="100 people x 2 days")
    ap.add_argument("--level", choices=LEVELS, help="everyone at this level (default: a mix)")
    ap.add_argument("--canyon-episode", type=float, default=QualityConfig.canyon_episode_s,
                    help="mean seconds an urban-canyon displacement lasts")
    ap.add_argument("--canyon-share", type=float, default=QualityConfig.canyon_share)
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VAL,...",
                    help="also run the engine with these rule overrides (on every level)")
    ap.add_argument("--no-default", action="store_true", help="run only the --variant engines")
    ap.add_argument("--workers", type=int, default=1,
                    help="processes, each running a share of the people (default 1)")
    ap.add_argument("--markdown", metavar="FILE", help="also write the markdown tables to FILE")
    ap.add_argument("--progress", action="store_true")
    a = ap.parse_args(argv)
    kw: dict[str, Any] = {"people": a.people, "days": a.days}
    if a.quick:
        kw.update(QUICK)
    cfg = QualityConfig(**kw, interval_s=a.interval, batch_s=a.batch, seed=a.seed,
                        canyon_episode_s=a.canyon_episode, canyon_share=a.canyon_share)
    if a.level:
        cfg = replace(cfg, levels=((a.level, 1.0),))
    variants: list[tuple[str, dict[str, Any]]] = [] if a.no_default else [("engine", {})]
    variants += [_parse_variant(v) for v in a.variant]
    if not variants:
        ap.error("nothing to run")
    report = run(cfg, variants, a.workers, a.progress)
    print(report.text())
    md = report.markdown()
    print("\nMarkdown for BENCHMARKS.md:\n")
    print(md)
    if a.markdown:
        with open(a.markdown, "w", encoding="utf-8") as f:
            f.write(md + "\n")
    return 0


__all__ = ["AlertLog", "FixChunk", "NaiveTracker", "QualityConfig", "Score", "Violation",
           "World", "main", "run", "score"]

if __name__ == "__main__":
    raise SystemExit(main())
