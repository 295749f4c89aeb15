"""The alert-quality benchmark's generator, naive rule and scorer (simulators/quality.py).

Ground truth is checked with the engine's own geometry (`PreparedZone`, a transverse Mercator
plane per zone) rather than the simulator's equirectangular plane, and GNSS errors with
pyproj's geodesic, so the generator is not graded by itself.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from pyproj import Geod

from geofence.crs import CRS_CODE, gcj02_to_wgs84, wgs84_to_gcj02
from geofence.engine import evaluate
from geofence.model import CRS, EventKind, Fix, Subject
from simulators.quality import (
    CANYON,
    CLEAN,
    NETWORK,
    T0,
    AlertLog,
    FixChunk,
    NaiveTracker,
    QualityConfig,
    Violation,
    World,
    run,
    score,
)

GEOD = Geod(ellps="WGS84")
# Small, but with many violations so that every property below is exercised.
CFG = QualityConfig(people=39, days=2, seed=11, violations_per_person_day=0.5,
                    gaps_per_person_day=1.0)


@pytest.fixture(scope="module")
def world() -> World:
    return World(CFG)


def batches_around(world: World, t0: float, t1: float) -> list[FixChunk]:
    b0 = max(0, int((t0 - T0) // world.cfg.batch_s))
    b1 = min(world.n_batches - 1, int((t1 - T0) // world.cfg.batch_s))
    return [world.batch(b) for b in range(b0, b1 + 1)]


def test_violations_are_varied_and_within_the_configured_ranges(world):
    v = world.schedule.violations
    assert len(v) >= 25  # 0.5 per person-day over 78 person-days, a few without a way out
    assert world.schedule.dropped_violations <= 0.1 * (len(v) + world.schedule.dropped_violations)
    minutes = np.array([x.minutes for x in v])
    assert minutes.min() < 15 and minutes.max() > 120  # minutes to hours
    assert len({x.mode for x in v}) >= 3
    depth = np.array([x.depth_m for x in v])
    assert depth.min() >= 500 and depth.max() <= 20_000
    assert all(x.end > x.start for x in v)


def test_ground_truth_is_exactly_when_the_true_position_is_outside(world):
    sch = world.schedule
    checked_out = 0
    for v in world.schedule.violations[:12]:
        zone = world.zones[world.people[v.person].area]
        # At the interval's ends the true position is on the border (engine's own plane).
        for t in (v.start, v.end):
            x, y = sch.position(sch.leg_at(np.array([v.person]), np.array([t])), np.array([t]))
            lon, lat = world.areas[zone.zone_id].district.to_lonlat(x, y)
            assert abs(zone.signed_distance(float(lon[0]), float(lat[0]))) < 1.0
        for chunk in batches_around(world, v.start - 900, v.end + 900):
            sel = chunk.person == v.person
            lon, lat = chunk.true_lon[sel], chunk.true_lat[sel]
            t = chunk.time[sel]
            truly_out = ~shapely.contains_xy(zone.geom_wgs84, lon, lat)
            assert np.array_equal(chunk.outside[sel], truly_out)
            assert np.array_equal(chunk.outside[sel], (t >= v.start) & (t < v.end))
            dist = np.array([zone.signed_distance(float(a), float(b)) for a, b in zip(lon, lat, strict=True)])
            assert (dist[truly_out] <= v.depth_m * 1.01 + 1).all()
            checked_out += int(truly_out.sum())
    assert checked_out > 50


def test_nobody_is_outside_except_during_a_violation(world):
    n_out = 0
    for b in range(0, world.n_batches, 7):
        chunk = world.batch(b)
        for k in np.unique(world.p_area[chunk.person]):
            sel = world.p_area[chunk.person] == k
            out = ~shapely.contains_xy(world.zones[int(k)].geom_wgs84, chunk.true_lon[sel],
                                       chunk.true_lat[sel])
            assert np.array_equal(out, chunk.outside[sel])
            n_out += int(out.sum())
        for i in np.flatnonzero(chunk.outside)[:20]:
            assert world.outside_truth(int(chunk.person[i]), float(chunk.time[i]))
    assert n_out > 0


def test_people_live_and_work_near_borders_and_move_around(world):
    home_dist = []
    for p in world.people:
        zone = world.zones[p.area]
        lon, lat = world.areas[p.area].district.to_lonlat(*p.home)
        d = zone.signed_distance(float(lon), float(lat))
        assert d < -49.0  # every home is at least 50 m inside
        if p.border_home:
            home_dist.append(d)
    assert len(home_dist) >= 5
    assert min(home_dist) > -505 and max(home_dist) < -49
    # Over a day, people travel kilometres.
    chunks = [world.batch(b) for b in range(0, 144, 6)]
    lon = np.stack([c.true_lon[c.person == 0].mean() for c in chunks if (c.person == 0).any()])
    lat = np.stack([c.true_lat[c.person == 0].mean() for c in chunks if (c.person == 0).any()])
    _, _, d = GEOD.inv(np.full(len(lon), lon[0]), np.full(len(lat), lat[0]), lon, lat)
    assert d.max() > 300


def test_noise_matches_what_the_fix_says_about_itself(world):
    chunks = [world.batch(b) for b in range(60, 200, 5)]
    c = FixChunk(0, 0, 0, *(np.concatenate([getattr(x, f) for x in chunks]) for f in (
        "person", "time", "lon", "lat", "crs", "accuracy", "provider", "cls", "true_lon",
        "true_lat", "outside", "wgs_lon", "wgs_lat", "speed")))
    _, _, err = GEOD.inv(c.true_lon, c.true_lat, c.wgs_lon, c.wgs_lat)
    gnss = c.provider == 0
    assert ((c.accuracy[gnss] >= 3) & (c.accuracy[gnss] <= 50)).all()
    clean = c.cls == CLEAN
    within = (err[clean] <= c.accuracy[clean]).mean()
    assert 0.64 < within < 0.72  # the accuracy is the 68 % radius
    canyon = c.cls == CANYON
    assert 0.01 < canyon.mean() < 0.06
    assert (err[canyon] > 97).all() and (err[canyon] < 503).all()  # 100-500 m (plane vs geodesic)
    assert (c.accuracy[canyon] <= 50).all()  # the nasty case: accuracy does not grow
    net = c.cls == NETWORK
    assert (c.provider[net] == 1).all() and np.isnan(c.speed[net]).all()
    assert (err[net] >= 199).all() and (err[net] <= 2001).all()
    ratio = np.median(c.accuracy[net] / err[net])
    assert 0.9 < ratio < 1.5  # a matching accuracy
    # GCJ-02 phones report their (noisy) WGS-84 position shifted into GCJ-02.
    g = c.crs == CRS_CODE[CRS.GCJ02]
    assert 0.1 < g.mean() < 0.6
    back_lon, back_lat = gcj02_to_wgs84(c.lon[g], c.lat[g])
    assert np.allclose(back_lon, c.wgs_lon[g], atol=1e-7) and np.allclose(back_lat, c.wgs_lat[g], atol=1e-7)
    _, _, shift = GEOD.inv(c.lon[g], c.lat[g], c.wgs_lon[g], c.wgs_lat[g])
    assert shift.min() > 100  # hundreds of metres: why the CRS matters
    assert np.array_equal(c.lon[~g], c.wgs_lon[~g])


def test_gaps_silence_the_phone_but_never_hide_a_violation(world):
    sch = world.schedule
    assert len(sch.gap_start) > 20
    for p, s, e in zip(sch.gap_person, sch.gap_start, sch.gap_end, strict=True):
        for v in sch.violations:
            if v.person == p:
                assert e <= v.start - 900 or s >= v.end + 900
    p, s, e = int(sch.gap_person[0]), float(sch.gap_start[0]), float(sch.gap_end[0])
    times = np.concatenate([c.time[c.person == p] for c in batches_around(world, s, e)])
    assert not ((times >= s) & (times < e)).any()
    assert ((times < s) | (times >= e)).any()


def test_batches_are_deterministic_and_seeded(world):
    a, b = world.batch(30), world.batch(30)
    assert np.array_equal(a.lon, b.lon) and np.array_equal(a.accuracy, b.accuracy)
    other = World(QualityConfig(people=13, days=1, seed=12)).batch(30)
    same_seed = World(QualityConfig(people=13, days=1, seed=11)).batch(30)
    assert not np.array_equal(other.accuracy[:50], same_seed.accuracy[:50])
    # Sorted by person, then time, as the engine and the naive rule expect.
    key = a.person * 1e7 + (a.time - T0)
    assert (np.diff(key) > 0).all()


def _violation(person: int, start: float, minutes: float) -> Violation:
    return Violation(person, start, start + minutes * 60, 1000.0, "car", 100.0)


def test_score_counts_a_known_alert_list():
    v = [_violation(1, 1000.0, 30), _violation(2, 5000.0, 8), _violation(3, 9000.0, 60),
         _violation(4, 20_000.0, 20)]
    log = AlertLog()
    log.add(1, 1060.0, 1180.0, 2900.0)  # detects v0 after 180 s
    log.add(1, 1300.0, 1400.0)  # second alert in the same violation: true, not a new detection
    log.add(2, 4000.0, 4100.0, 4200.0)  # before v1 and closed before it starts: false
    log.add(2, 5000.0 + 8 * 60, 5000.0 + 8 * 60)  # trigger exactly at v1's end: false ([start, end))
    log.add(3, 8000.0, 9060.0)  # evidence began before v2: true, delay 60 s
    log.add(5, 100.0, 200.0)  # a person without violations: false
    log.add(4, 19_000.0, 19_100.0, math.inf)  # false, and still open when v3 starts
    s = score(log, v, person_days=10)
    assert s.alerts == 7
    assert s.false_alerts == 4
    assert s.false_per_person_day == pytest.approx(0.4)
    assert s.detected == 2 and s.detected_ids == {0, 2}
    assert s.covered == 1  # v3: missed, but the open false alert covered it
    assert s.violations_10 == 3 and s.detected_10 == 2
    assert sorted(s.delays_s.tolist()) == [60.0, 180.0]
    assert s.delay(50) == pytest.approx(120.0)
    assert sorted(s.false_ids) == [2, 3, 5, 6]


def _border_point(world: World, k: int, inside_m: float, out_m: float) -> tuple:
    """A point `inside_m` inside district k and the point `out_m` beyond the border from it."""
    area = world.areas[k]
    px, py = area.interior[0], area.interior[1]
    for x, y in zip(px, py, strict=True):
        line = shapely.shortest_line(area.boundary, shapely.points(x, y))
        b = shapely.get_point(line, 0)
        bx, by = float(shapely.get_x(b)), float(shapely.get_y(b))
        a = math.hypot(bx - x, by - y)
        if a < 2 * inside_m:
            continue
        ux, uy = (bx - x) / a, (by - y) / a
        ox, oy = bx + ux * out_m, by + uy * out_m
        if not shapely.contains_xy(area.district.plane, ox, oy) and not shapely.intersects(
                area.district.plane, shapely.linestrings([(bx + ux, by + uy), (ox, oy)])):
            home = area.district.to_lonlat(bx - ux * inside_m, by - uy * inside_m)
            jump = area.district.to_lonlat(ox, oy)
            return (float(home[0]), float(home[1])), (float(jump[0]), float(jump[1]))
    raise AssertionError("no suitable border point")


def test_naive_rule_raises_false_alerts_on_canyon_jumps_near_a_border(world):
    k = 3
    home, jump = _border_point(world, k, inside_m=100.0, out_m=250.0)
    n = 60
    t = T0 + 60.0 * np.arange(n)
    jumped = np.zeros(n, dtype=bool)
    jumped[5::10] = True  # six isolated jumps 350 m outwards, accuracy 10 m
    lon = np.where(jumped, jump[0], home[0])
    lat = np.where(jumped, jump[1], home[1])
    person = np.zeros(n, dtype=np.int64)
    acc = np.full(n, 10.0)
    chunk = FixChunk(0, T0, T0 + 3600, person, t, lon, lat, np.zeros(n, np.int8), acc,
                     np.zeros(n, np.int8), np.where(jumped, CANYON, CLEAN).astype(np.int8),
                     np.full(n, home[0]), np.full(n, home[1]), np.zeros(n, bool), lon, lat,
                     np.zeros(n))
    naive = NaiveTracker(world.areas, np.array([k]))
    naive.feed(chunk.select(t < T0 + 1800))  # in two batches: state carries over
    naive.feed(chunk.select(t >= T0 + 1800))
    assert len(naive.log) == 6
    assert all(c < math.inf for c in naive.log.closed)  # each closed by the next inside fix
    assert naive.wrong_side[CANYON] == 6
    s = score(naive.log, [], person_days=1)
    assert s.false_alerts == 6
    # The engine sees the same fixes and, needing consecutive evidence, raises nothing.
    fixes = [Fix("d", float(ti), float(x), float(y), accuracy=10.0, provider="gps")
             for ti, x, y in zip(t, lon, lat, strict=True)]
    res = evaluate(fixes, {"d": Subject(0, k)}, world.zones, {}, now=float(t[-1]) + 1)
    assert not [e for e in res.events if e.kind == EventKind.AREA_EXIT]
    assert sum(d.membership.value == "outside" for d in res.decisions) == 6


def test_naive_rule_takes_gcj02_coordinates_as_they_come(world):
    k = 3
    home, _ = _border_point(world, k, inside_m=100.0, out_m=250.0)
    g_lon, g_lat = wgs84_to_gcj02(np.array([home[0]]), np.array([home[1]]))
    zone = world.zones[k]
    # Whether the shifted point lands outside depends on the border's direction; the naive rule
    # judges the shifted point, the engine converts it back.
    naive = NaiveTracker(world.areas, np.array([k]))
    chunk = FixChunk(0, T0, T0 + 60, np.zeros(1, np.int64), np.array([T0 + 1]), g_lon, g_lat,
                     np.array([CRS_CODE[CRS.GCJ02]], np.int8), np.array([10.0]), np.zeros(1, np.int8),
                     np.zeros(1, np.int8), np.array([home[0]]), np.array([home[1]]),
                     np.zeros(1, bool), np.array([home[0]]), np.array([home[1]]), np.zeros(1))
    out = naive.outside(chunk)[0]
    assert out == (zone.signed_distance(float(g_lon[0]), float(g_lat[0])) > 0)
    res = evaluate([Fix("d", T0 + 1, float(g_lon[0]), float(g_lat[0]), CRS.GCJ02, 10.0)],
                   {"d": Subject(0, k)},
                   world.zones, {}, now=T0 + 2)
    assert res.decisions[0].membership.value == "inside"


def test_a_small_run_scores_both_trackers():
    cfg = QualityConfig(people=26, days=1, seed=3, violations_per_person_day=0.4)
    report = run(cfg)
    names = [n for n, _ in report.scores]
    assert names == ["engine", "naive"]
    eng, naive = report.scores[0][1], report.scores[1][1]
    assert eng.violations == naive.violations == len(report.world.schedule.violations) > 3
    assert naive.false_alerts > 10 * max(eng.false_alerts, 1)
    assert eng.detected >= 1
    assert report.result.fixes > 30_000  # 26 people x 1,440 minutes, less the gaps
    text, md = report.text(), report.markdown()
    assert "false area-exit alerts / person-day" in text and "| metric | engine | naive |" in md
