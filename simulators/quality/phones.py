"""What each phone reports about the ground truth: when, how wrong, how late, and its answers.

Per phone (deterministic per seed, scenario and person): a reporting interval (a mix of 1, 5
and 15 min, or the profile's interval for the person's level), OS jitter with power-saver
stretches (1.5-3x), speed or not, provider or not, GCJ-02 or WGS-84, and whether it ever answers
a location request. Per report: ~10 % lost; a clean GNSS fix (accuracy 3-50 m, error Rayleigh
with the accuracy as its 68 % radius, rare 2-4x outliers); or an indoor network fix 200-2,000 m
off with an accuracy that roughly matches (sometimes smaller); or part of a multipath episode:
1-3 consecutive GNSS reports all displaced 100-500 m the same way with a SMALL accuracy (5-30 m),
still or moving, while the reported (Doppler) speed stays the true one (the `stranger` scenario:
bursts of up to 4, each report, and each answer during one, thrown its own way). Offline bursts: the
phone keeps its fixes for 10-120 min, then at reconnect sends a fresh fix and the backlog.
"""

from __future__ import annotations

import bisect
import math
import zlib
from dataclasses import dataclass, fields

import numpy as np
import numpy.typing as npt

from geofence.crs import CRS_CODE, from_wgs84
from geofence.model import CRS
from geofence.profile import CheckinRules
from simulators.phone import ACCURACY_68_SIGMAS
from simulators.quality.config import CLEAN, DAY, MULTIPATH, NETWORK, OUTLIER, T0, QualityConfig, Scenario
from simulators.quality.world import KEY_SPAN, World, loguniform

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
I8 = npt.NDArray[np.int8]

GPS, NET, NO_PROVIDER = 0, 1, -1
PROVIDER_NAMES = {GPS: "gps", NET: "network", NO_PROVIDER: None}


@dataclass
class FixTable:
    """Fixes as reported, with their truth, as columns (one row per fix)."""

    person: IntArray
    time: FloatArray  # fix time
    arrival: FloatArray  # when the server receives it: the engine's `now` is after this
    lon: FloatArray  # as reported, in the phone's CRS
    lat: FloatArray
    crs: I8
    accuracy: FloatArray
    speed: FloatArray  # NaN: the phone sent none
    provider: I8  # GPS, NET or NO_PROVIDER (the phone does not say)
    cls: I8  # noise class: CLEAN, OUTLIER, MULTIPATH, NETWORK
    wgs_lon: FloatArray  # reported position before any CRS shift
    wgs_lat: FloatArray
    true_lon: FloatArray
    true_lat: FloatArray
    outside: BoolArray  # ground truth: true position outside the home area
    viol: IntArray  # the violation the true position is in, -1 none
    episode: IntArray  # multipath episode (per phone, numbered), -1 none
    offline: BoolArray  # kept on the phone and delivered at reconnect
    answer: BoolArray  # an answer to a location request

    def __len__(self) -> int:
        return len(self.person)

    def take(self, idx: IntArray | BoolArray) -> FixTable:
        return FixTable(*(getattr(self, f.name)[idx] for f in fields(self)))

    @classmethod
    def cat(cls, parts: list[FixTable]) -> FixTable:
        if not parts:
            return empty_table()
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)))


def empty_table() -> FixTable:
    f, i, b, s = np.empty(0), np.empty(0, np.int64), np.empty(0, bool), np.empty(0, np.int8)
    return FixTable(i, f, f, f, f, s, f, f, s, s, f, f, f, f, b, i, i, b, b)


def scenario_key(s: Scenario) -> int:
    """A stable number per scenario name, for seeding (a replay draws the reports of the
    scenario it replays)."""
    return zlib.crc32((s.phones_of or s.name).encode())


@dataclass
class Traits:
    """Per-phone properties in one scenario (index: person)."""

    interval: FloatArray
    speed: BoolArray
    provider: BoolArray
    answers: BoolArray  # False: never answers a location request


def traits(world: World, scen: Scenario) -> Traits:
    """The phones of a scenario. Speed, provider and answering are the same phone in every
    scenario (one draw per person, compared with the scenario's shares)."""
    cfg = world.cfg
    n = cfg.people
    rng = np.random.default_rng([cfg.seed, 10])
    u_speed, u_prov, u_ans = rng.random(n), rng.random(n), rng.random(n)
    u_int = rng.random(n)
    if scen.intervals:
        values = np.array([i for i, _ in scen.intervals])
        cum = np.cumsum([s for _, s in scen.intervals])
        interval = values[np.minimum(np.searchsorted(cum, u_int, side="right"), len(values) - 1)]
    else:
        rules = CheckinRules()
        interval = np.array([rules.interval(p.level, False) for p in world.people])
    return Traits(interval.astype(np.float64), u_speed < scen.speed_share,
                  u_prov < scen.provider_share, u_ans >= scen.never_answer_share)


class PhoneStream:
    """One phone in one scenario: its reports day by day, and its answers to requests."""

    def __init__(self, world: World, scen: Scenario, tr: Traits, person: int) -> None:
        cfg = world.cfg
        self.world, self.scen, self.cfg, self.p = world, scen, cfg, person
        key = scenario_key(scen)
        self.rng = np.random.default_rng([cfg.seed, key, person, 1])
        self.interval = float(tr.interval[person])
        self.has_speed, self.has_provider = bool(tr.speed[person]), bool(tr.provider[person])
        self.answers = bool(tr.answers[person])
        self.crs = int(world.p_crs[person])
        self.next_t = T0 + float(self.rng.uniform(0.0, self.interval))
        n = int(self.rng.poisson(scen.offline_per_day * cfg.days))
        s = np.sort(T0 + self.rng.uniform(0.0, cfg.days * DAY, n))
        e = s + loguniform(self.rng, *scen.offline_minutes, n) * 60.0
        keep = np.r_[True, s[1:] >= e[:-1]] if n else np.empty(0, bool)  # no overlapping bursts
        self.off_start, self.off_end = s[keep], e[keep]
        self.mp_left, self.mp_id, self.mp_dx, self.mp_dy = 0, -1, 0.0, 0.0
        self.n_episodes = 0
        # Multipath episodes in time, for answers: (start, end, dx, dy, id) sorted by start.
        self.ep_start: list[float] = []
        self.ep: list[tuple[float, float, float, float, int]] = []

    # -- scheduled reports ---------------------------------------------------------------

    def _times(self, end: float) -> FloatArray:
        scen, rng = self.scen, self.rng
        out = []
        t = self.next_t
        while t < end:
            k = int((end - t) / self.interval) + 8
            step = self.interval * (1.0 + rng.uniform(-scen.interval_jitter, scen.interval_jitter, k))
            late = rng.random(k) < scen.late_share
            step[late] *= rng.uniform(*scen.late_factor, int(late.sum()))
            ts = t + np.r_[0.0, np.cumsum(step)]
            out.append(ts[ts < end])
            t = float(ts[ts >= end][0]) if (ts >= end).any() else float(ts[-1])
        self.next_t = t
        return np.concatenate(out) if out else np.empty(0)

    def offline_at(self, t: FloatArray) -> IntArray:
        """Index of the offline burst each time is in, -1 for none."""
        g = np.searchsorted(self.off_start, t, side="right") - 1
        gc = np.clip(g, 0, None)
        hit = (g >= 0) & (t < self.off_end[gc]) if self.off_end.size else np.zeros(len(t), bool)
        return np.where(hit, gc, -1)

    def day(self, d: int) -> FixTable:
        """The reports this phone takes during day d (fix time), with their arrival times."""
        cfg, scen, rng, w = self.cfg, self.scen, self.rng, self.world
        start, end = T0 + d * DAY, T0 + (d + 1) * DAY
        t = self._times(end)
        # At reconnect the phone sends a fresh fix first, then its backlog.
        recon = self.off_end[(self.off_end >= start) & (self.off_end < end)]
        t = np.sort(np.r_[t, recon])
        u_missing = rng.random(len(t))
        person = np.full(len(t), self.p, dtype=np.int64)
        keep = (u_missing >= scen.missing) & ~w.schedule.in_gap(person, t)
        keep |= np.isin(t, recon)
        t, person = t[keep], person[keep]
        n = len(t)
        x, y, indoor, outside, tspeed = w.schedule.truth(person, t)
        network = rng.random(n) < np.where(indoor, scen.network_share[1], scen.network_share[0])
        episode, dx, dy = self._multipath(t, ~network, tspeed)
        ex, ey, acc, cls, speed = self._noise(rng, indoor, tspeed, network, dx, dy)
        off = self.offline_at(t)
        arrival = t + loguniform(rng, *cfg.latency_s, n)
        stored = off >= 0
        if stored.any():  # the backlog, in fix order, a few seconds after the fresh fix
            arrival[stored] = (self.off_end[off[stored]] + rng.uniform(5.0, 20.0)
                               + 0.01 * np.arange(int(stored.sum())))
        viol = w.schedule.violation_at(person, t)
        return self._table(person, t, arrival, x, y, ex, ey, acc, cls, speed, network, outside,
                           viol, episode, stored, np.zeros(n, bool))

    def _multipath(self, t: FloatArray, gnss: BoolArray, tspeed: FloatArray,
                   ) -> tuple[IntArray, FloatArray, FloatArray]:
        """Episodes of 1-3 (the scenario's lengths) consecutive GNSS reports displaced the same
        way, or each its own way (`multipath_scatter`); carried over days."""
        scen, rng = self.scen, self.rng
        n = len(t)
        episode = np.full(n, -1, dtype=np.int64)
        dx, dy = np.zeros(n), np.zeros(n)
        g = np.flatnonzero(gnss)
        u = rng.random(len(g))
        starts = set(np.flatnonzero(u < scen.multipath_start).tolist())
        lens = rng.choice(np.arange(1, len(scen.multipath_len) + 1), size=len(g),
                          p=list(scen.multipath_len))
        mags = rng.uniform(*scen.multipath_m, len(g))
        dirs = rng.uniform(0.0, 2 * math.pi, len(g))
        holds = rng.uniform(*scen.multipath_hold_s, len(g))
        last = -1
        for j in sorted(starts | ({0} if self.mp_left and len(g) else set())):
            if j <= last:
                continue  # a start inside a running episode changes nothing
            if j == 0 and self.mp_left:
                left = self.mp_left
            else:
                left = int(lens[j])
                self.mp_id = self.n_episodes
                self.n_episodes += 1
                self.mp_dx = float(mags[j] * math.cos(dirs[j]))
                self.mp_dy = float(mags[j] * math.sin(dirs[j]))
            sel = g[j:j + left]
            episode[sel], dx[sel], dy[sel] = self.mp_id, self.mp_dx, self.mp_dy
            if scen.multipath_scatter:  # each report its own way
                m, a = rng.uniform(*scen.multipath_m, len(sel)), rng.uniform(0.0, 2 * math.pi, len(sel))
                dx[sel], dy[sel] = m * np.cos(a), m * np.sin(a)
            self.mp_left = left - len(sel)
            last = j + len(sel) - 1
            # In time: until the next report, or the hold (a still phone keeps its error).
            i_last = int(sel[-1])
            hold = float(holds[j]) if tspeed[i_last] < 0.3 else 15.0
            t_end = t[i_last] + hold
            if i_last + 1 < n:
                t_end = min(t_end, float(t[i_last + 1]))
            self._add_episode(float(t[int(sel[0])]), t_end)
        return episode, dx, dy

    def _add_episode(self, s: float, e: float) -> None:
        if self.ep and self.ep[-1][4] == self.mp_id:  # the same episode continuing into a new day
            s = self.ep[-1][0]
            self.ep.pop()
            self.ep_start.pop()
        self.ep.append((s, e, self.mp_dx, self.mp_dy, self.mp_id))
        self.ep_start.append(s)

    def _noise(self, rng: np.random.Generator, indoor: BoolArray, tspeed: FloatArray,
               network: BoolArray, dx: FloatArray, dy: FloatArray,
               ) -> tuple[FloatArray, FloatArray, FloatArray, I8, FloatArray]:
        """Position error, accuracy, class and reported speed of each report."""
        cfg, scen = self.cfg, self.scen
        n = len(indoor)
        z_acc, u_err, theta = rng.normal(0.0, 1.0, n), rng.random(n), rng.uniform(0, 2 * math.pi, n)
        u_out, f_out = rng.random(n), rng.uniform(*cfg.outlier_factor, n)
        net_err = loguniform(rng, *cfg.network_error_m, n)
        net_ratio = np.exp(rng.normal(math.log(cfg.network_accuracy_ratio[0]),
                                      cfg.network_accuracy_ratio[1], n))
        mp_acc = rng.uniform(*scen.multipath_accuracy_m, n)
        z_mag, z_speed = rng.normal(0, 1, n), rng.normal(0, 1, n)
        acc = _gps_accuracy(cfg, rng, z_acc, indoor)
        err = acc / ACCURACY_68_SIGMAS * np.sqrt(-2.0 * np.log1p(-u_err))  # Rayleigh, 68 % in acc
        outlier = ~network & (u_out < cfg.outlier_share)
        err[outlier] = acc[outlier] * f_out[outlier]
        ex, ey = err * np.cos(theta), err * np.sin(theta)
        cls = np.where(outlier, OUTLIER, CLEAN).astype(np.int8)
        mp = (dx != 0) | (dy != 0)
        scale = np.clip(1.0 + 0.05 * z_mag, 0.9, 1.1)
        mag = np.hypot(dx, dy)
        lim = np.clip(mag * scale, *scen.multipath_m) / np.maximum(mag, 1e-9)
        ex[mp], ey[mp] = dx[mp] * lim[mp], dy[mp] * lim[mp]
        acc[mp], cls[mp] = mp_acc[mp], MULTIPATH
        ex[network], ey[network] = (net_err * np.cos(theta))[network], (net_err * np.sin(theta))[network]
        acc[network] = np.maximum(net_err * net_ratio, 1.0)[network]
        cls[network] = NETWORK
        noise = np.where(mp, cfg.speed_noise_mps[1], cfg.speed_noise_mps[0])
        speed = np.abs(tspeed + noise * z_speed)
        speed[network] = np.nan
        if not self.has_speed:
            speed[:] = np.nan
        return ex, ey, acc, cls, speed

    def _table(self, person: IntArray, t: FloatArray, arrival: FloatArray, x: FloatArray,
               y: FloatArray, ex: FloatArray, ey: FloatArray, acc: FloatArray, cls: I8,
               speed: FloatArray, network: BoolArray, outside: BoolArray, viol: IntArray,
               episode: IntArray, stored: BoolArray, answer: BoolArray) -> FixTable:
        n = len(t)
        tl_lon, tl_lat = self.world.to_lonlat(self.p, x, y)
        w_lon, w_lat = self.world.to_lonlat(self.p, x + ex, y + ey)
        lon, lat = w_lon.copy(), w_lat.copy()
        if self.crs == CRS_CODE[CRS.GCJ02] and n:
            lon, lat = from_wgs84(w_lon, w_lat, CRS.GCJ02)
        prov = np.where(network, NET, GPS).astype(np.int8)
        if not self.has_provider:
            prov[:] = NO_PROVIDER
        return FixTable(person, t, arrival, np.asarray(lon), np.asarray(lat),
                        np.full(n, self.crs, np.int8), acc, speed, prov, cls, w_lon, w_lat,
                        tl_lon, tl_lat, outside, viol, episode, stored, answer)

    # -- answers -------------------------------------------------------------------------

    def answer(self, now: float, rng: np.random.Generator) -> FixTable | None:
        """The phone's answer to a location request sent at `now`, or None (never, offline, ...).

        A fresh fix taken 10-90 s later from the same truth and noise model; inside a multipath
        episode it repeats the episode's displacement.
        """
        scen = self.scen
        u, delay = rng.random(), float(rng.uniform(*scen.answer_delay_s))
        if not self.answers or u >= scen.answer_prob:
            return None
        t = np.array([now + delay])
        person = np.array([self.p], dtype=np.int64)
        both = np.array([now, now + delay])
        if (self.offline_at(both) >= 0).any() or self.world.schedule.in_gap(
                np.array([self.p, self.p]), both).any():
            return None  # the request never reached the phone, or it is off
        x, y, indoor, outside, tspeed = self.world.schedule.truth(person, t)
        network = rng.random(1) < np.where(indoor, scen.network_share[1], scen.network_share[0])
        dx, dy, episode = np.zeros(1), np.zeros(1), np.full(1, -1, np.int64)
        k = bisect.bisect_right(self.ep_start, float(t[0])) - 1
        if k >= 0 and t[0] < self.ep[k][1]:
            network[:] = False
            dx[0], dy[0], episode[0] = self.ep[k][2], self.ep[k][3], self.ep[k][4]
            if scen.multipath_scatter:
                m, a = rng.uniform(*scen.multipath_m), rng.uniform(0.0, 2 * math.pi)
                dx[0], dy[0] = m * math.cos(a), m * math.sin(a)
        ex, ey, acc, cls, speed = self._noise(rng, indoor, tspeed, network, dx, dy)
        arrival = t + loguniform(rng, *self.cfg.latency_s, 1)
        viol = self.world.schedule.violation_at(person, t)
        return self._table(person, t, arrival, x, y, ex, ey, acc, cls, speed, network, outside,
                           viol, episode, np.zeros(1, bool), np.ones(1, bool))


def _gps_accuracy(cfg: QualityConfig, rng: np.random.Generator, z: FloatArray,
                  indoor: BoolArray) -> FloatArray:
    lo, hi = cfg.gps_accuracy_m
    med = np.where(indoor, cfg.gps_accuracy_median_m[1], cfg.gps_accuracy_median_m[0])
    acc = med * np.exp(cfg.gps_accuracy_sigma * z)
    for _ in range(20):  # truncated log-normal: redraw what falls outside [lo, hi]
        bad = (acc < lo) | (acc > hi)
        if not bad.any():
            break
        acc[bad] = med[bad] * np.exp(cfg.gps_accuracy_sigma * rng.normal(0.0, 1.0, int(bad.sum())))
    return np.clip(acc, lo, hi)


__all__ = ["GPS", "KEY_SPAN", "NET", "NO_PROVIDER", "PROVIDER_NAMES", "FixTable", "PhoneStream",
           "Traits", "empty_table", "traits"]
