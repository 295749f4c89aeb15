"""The alert-quality benchmark (simulators/quality/): world, phones, driver, scoring, report.

Ground truth is checked with the engine's own geometry (`PreparedZone`, a transverse Mercator
plane per zone) rather than the simulator's equirectangular plane, and position errors with
pyproj's geodesic, so the generator is not graded by itself. Every realism feature of the phones
is checked to be present and within its configured range.
"""

from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import shapely
from pyproj import Geod

from geofence import engine
from geofence.crs import CRS_CODE, gcj02_to_wgs84
from geofence.model import CRS, Event, EventKind, Fix, Membership, Reason, Subject
from geofence.profile import CheckinRules
from simulators.quality import (
    CLEAN,
    MULTIPATH,
    NETWORK,
    PROFILE,
    REALISTIC,
    REPLAY,
    STRANGER,
    T0,
    TODAY,
    AlertLog,
    EngineRun,
    FixTable,
    NaiveTracker,
    PhoneStream,
    QualityConfig,
    Violation,
    World,
    match,
    metrics,
    run,
    run_part,
    traits,
)
from simulators.quality.phones import NET, NO_PROVIDER
from simulators.quality.report import columns, target_table, text

GEOD = Geod(ellps="WGS84")
# Small, but with many violations so that every property below is exercised.
CFG = QualityConfig(people=39, days=2, seed=11, violations_per_person_day=0.5,
                    gaps_per_person_day=1.0)


@pytest.fixture(scope="module")
def world() -> World:
    return World(CFG)


def phone_tables(world: World, scen=REALISTIC) -> tuple[dict[int, PhoneStream], FixTable]:
    tr = traits(world, scen)
    streams = {p: PhoneStream(world, scen, tr, p) for p in range(world.cfg.people)}
    tab = FixTable.cat([s.day(d) for d in range(world.cfg.days) for s in streams.values()])
    return streams, tab


@pytest.fixture(scope="module")
def realistic(world: World) -> tuple[dict[int, PhoneStream], FixTable]:
    return phone_tables(world)


def errors_m(tab: FixTable) -> np.ndarray:
    _, _, err = GEOD.inv(tab.true_lon, tab.true_lat, tab.wgs_lon, tab.wgs_lat)
    return np.asarray(err)


# -- the world --------------------------------------------------------------------------------


def test_violations_are_varied_and_within_the_configured_ranges(world):
    v = world.schedule.violations
    assert len(v) >= 25  # 0.5 per person-day over 78 person-days, a few without a way out
    minutes = np.array([x.minutes for x in v])
    assert minutes.min() < 15 and minutes.max() > 120  # minutes to hours
    assert len({x.mode for x in v}) >= 4
    depth = np.array([x.depth_m for x in v])
    assert depth.min() >= 200 and depth.max() <= 20_000
    shallow = [x for x in v if x.shallow]
    assert len(shallow) >= 3 and all(200 <= x.depth_m <= 500 for x in shallow)
    assert all(x.depth_m >= 500 for x in v if not x.shallow)
    assert all(x.end > x.start for x in v)


def test_slow_walkers_walk_slowly():
    w = World(QualityConfig(people=26, days=2, seed=5, violations_per_person_day=1.0,
                            slow_walker_share=0.5))
    slow = [x for x in w.schedule.violations if x.mode == "slow foot"]
    assert len(slow) >= 5
    for x in slow:
        speed = (2 * x.depth_m) / (x.end - x.start)  # out and back, at most this fast
        assert speed <= 1.0 + 1e-6


def test_ground_truth_is_exactly_when_the_true_position_is_outside(world, realistic):
    _, tab = realistic
    for k in np.unique(world.p_area[tab.person]):
        sel = world.p_area[tab.person] == k
        truly_out = ~shapely.contains_xy(world.zones[int(k)].geom_wgs84, tab.true_lon[sel], tab.true_lat[sel])
        assert np.array_equal(tab.outside[sel], truly_out)
    assert np.array_equal(tab.outside, tab.viol >= 0)
    assert tab.outside.sum() > 100
    sch = world.schedule
    for v in sch.violations[:12]:
        zone = world.zones[world.people[v.person].area]
        for t in (v.start, v.end):  # on the border at both ends (engine's own plane)
            x, y, *_ = sch.truth(np.array([v.person]), np.array([t]))
            lon, lat = world.to_lonlat(v.person, x, y)
            assert abs(zone.signed_distance(float(lon[0]), float(lat[0]))) < 1.0
        sel = (tab.person == v.person) & (tab.time >= v.start - 900) & (tab.time < v.end + 900)
        assert np.array_equal(tab.outside[sel], (tab.time[sel] >= v.start) & (tab.time[sel] < v.end))


def test_people_live_and_work_near_borders(world):
    home_dist = []
    for p in world.people:
        lon, lat = world.to_lonlat(p.index, *p.home)
        d = world.zones[p.area].signed_distance(float(lon), float(lat))
        assert d < -49.0  # every home is at least 50 m inside
        if p.border_home:
            home_dist.append(d)
    assert len(home_dist) >= 5
    assert min(home_dist) > -505 and max(home_dist) < -49


# -- the phones -------------------------------------------------------------------------------


def test_at_least_half_the_phones_send_no_speed_and_some_no_provider(world, realistic):
    big = SimpleNamespace(cfg=replace(CFG, people=1000), people=[])
    tr = traits(big, REALISTIC)  # type: ignore[arg-type]
    assert (~tr.speed).mean() >= 0.5
    assert 0.1 < (~tr.provider).mean() < 0.4
    assert 0.1 < (~tr.answers).mean() < 0.2
    assert sorted(set(tr.interval.tolist())) == [60.0, 300.0, 900.0]
    assert 0.15 < (tr.interval == 60).mean() < 0.25
    _, tab = realistic
    t = traits(world, REALISTIC)
    assert np.isnan(tab.speed[~t.speed[tab.person]]).all()
    assert (tab.provider[~t.provider[tab.person]] == NO_PROVIDER).all()
    with_speed = t.speed[tab.person] & (tab.cls != NETWORK)
    assert with_speed.any() and not np.isnan(tab.speed[with_speed]).any()
    today = traits(world, TODAY)
    assert today.speed.all() and today.provider.all() and (today.interval == 60).all()


def test_profile_phones_report_at_their_levels_interval(world):
    tr = traits(world, PROFILE)
    rules = CheckinRules()
    expect = {"strict": rules.interval_strict_s, "normal": rules.interval_normal_s,
              "lenient": rules.interval_lenient_s}
    assert [tr.interval[p.index] for p in world.people] == [expect[p.level] for p in world.people]


def test_intervals_jitter_and_power_saver_stretches(world):
    scen = replace(REALISTIC, missing=0.0, offline_per_day=0.0)
    tr = traits(world, scen)
    seen_late = 0
    for p in range(world.cfg.people):
        s = PhoneStream(world, scen, tr, p)
        t = np.concatenate([s.day(0).time, s.day(1).time])
        gaps = world.schedule.in_gap(np.full(len(t), p), t)
        assert not gaps.any()
        ratio = np.diff(t) / tr.interval[p]
        ok = ~world.schedule.in_gap(np.full(len(t) - 1, p), t[:-1] + 1)  # steps not spanning a gap
        r = ratio[ok & (ratio < 3.5)]
        assert r.min() >= 1 - scen.interval_jitter - 1e-9
        assert 0.9 < np.median(r) < 1.1
        seen_late += int(((r > 1.4) & (r < 3.2)).sum())
    assert seen_late > 20


def test_about_a_tenth_of_reports_are_lost(world):
    tr = traits(world, REALISTIC)
    kept = lost = 0
    for p in range(world.cfg.people):
        full = PhoneStream(world, replace(REALISTIC, missing=0.0), tr, p).day(0)
        some = PhoneStream(world, REALISTIC, tr, p).day(0)
        assert set(some.time.tolist()) <= set(full.time.tolist())  # the same draws, some lost
        kept += len(some)
        lost += len(full) - len(some)
    assert 0.07 < lost / (kept + lost) < 0.13


def test_multipath_bursts_are_1_to_3_reports_displaced_100_to_500_m_one_way(world, realistic):
    streams, tab = realistic
    err = errors_m(tab)
    fwd = np.asarray(GEOD.inv(tab.true_lon, tab.true_lat, tab.wgs_lon, tab.wgs_lat)[0])
    _, _, _, _, tspeed = world.schedule.truth(tab.person, tab.time)
    mp = tab.cls == MULTIPATH
    assert (tab.episode[mp] >= 0).all() and (tab.episode[~mp] == -1).all()
    assert ((err[mp] > 97) & (err[mp] < 503)).all()  # plane vs geodesic
    assert ((tab.accuracy[mp] >= 5) & (tab.accuracy[mp] <= 30)).all()  # small: the nasty case
    assert (tspeed[mp] < 0.3).any() and (tspeed[mp] > 1.0).any()  # still and moving phones
    lengths = []
    for p in np.unique(tab.person[mp]):
        mine = tab.person == p
        gnss = np.flatnonzero(mine & (tab.cls != NETWORK))
        order = gnss[np.argsort(tab.time[gnss])]
        for ep in np.unique(tab.episode[mine & mp]):
            pos = np.flatnonzero(tab.episode[order] == ep)
            lengths.append(len(pos))
            assert np.array_equal(pos, np.arange(pos[0], pos[0] + len(pos)))  # consecutive reports
            dirs = fwd[order[pos]]
            assert np.ptp(np.unwrap(np.radians(dirs))) < math.radians(8)  # one direction
    assert min(lengths) == 1 and max(lengths) == 3
    assert len(lengths) > 30


def test_indoor_network_fixes_are_far_off_with_roughly_matching_accuracy(world, realistic):
    _, tab = realistic
    err = errors_m(tab)
    net = tab.cls == NETWORK
    assert 0.03 < net.mean() < 0.3
    assert np.isin(tab.provider[net], [NET, NO_PROVIDER]).all() and np.isnan(tab.speed[net]).all()
    assert ((err[net] >= 199) & (err[net] <= 2001)).all()
    ratio = tab.accuracy[net] / err[net]
    assert 0.9 < np.median(ratio) < 1.5 and (ratio < 1.0).mean() > 0.15  # sometimes smaller
    _, _, indoor, _, _ = world.schedule.truth(tab.person, tab.time)
    assert net[indoor].mean() > 3 * net[~indoor].mean()
    clean = tab.cls == CLEAN
    assert 0.64 < (err[clean] <= tab.accuracy[clean]).mean() < 0.72  # the 68 % radius
    assert (tab.provider[clean] != NET).all()


def test_gcj02_phones_report_their_position_shifted(world, realistic):
    _, tab = realistic
    g = tab.crs == CRS_CODE[CRS.GCJ02]
    assert 0.1 < g.mean() < 0.6
    back_lon, back_lat = gcj02_to_wgs84(tab.lon[g], tab.lat[g])
    assert np.allclose(back_lon, tab.wgs_lon[g], atol=1e-7)
    assert np.allclose(back_lat, tab.wgs_lat[g], atol=1e-7)
    assert np.array_equal(tab.lon[~g], tab.wgs_lon[~g])


def test_offline_fixes_arrive_after_reconnect_behind_a_fresh_fix(world, realistic):
    streams, tab = realistic
    off = tab.offline
    assert off.sum() > 20
    bursts = 0
    for p, s in streams.items():
        for start, end in zip(s.off_start, s.off_end, strict=True):
            mine = (tab.person == p) & (tab.time >= start) & (tab.time < end)
            if not mine.any() or end > T0 + CFG.days * 86_400:
                continue
            bursts += 1
            assert tab.offline[mine].all()
            arr, t = tab.arrival[mine], tab.time[mine]
            assert (arr > end).all() and (arr < end + 30).all()
            assert np.array_equal(np.argsort(arr), np.argsort(t))  # the backlog in fix order
            fresh = (tab.person == p) & (tab.time == end)
            assert fresh.sum() == 1 and tab.arrival[fresh][0] < arr.min()  # the fresh fix first
    assert bursts >= 5
    online = ~off
    lat = tab.arrival[online] - tab.time[online]
    assert (lat >= 0.5 - 1e-9).all() and (lat <= 5.0 + 1e-9).all()
    # Across the fleet, arrival order is not fix order.
    order = np.argsort(tab.arrival, kind="stable")
    assert (np.diff(tab.time[order]) < -600).any()


def _request(dev: str, now: float) -> Event:
    return Event(EventKind.LOCATION_REQUEST, dev, now, 0.0, 0.0,
                 Reason("test", None, Membership.BORDER, None, None), detected_at=now)


def test_answers_come_10_to_90_s_after_a_request_and_never_from_silent_phones(world, realistic):
    streams, _ = realistic
    tr = traits(world, REALISTIC)
    eng = EngineRun("e", {}, {}, (1,))
    pid = {world.device_ids[p]: p for p in streams}
    answered = asked = 0
    for k in range(40):
        now = T0 + 3600 * 9 + 1800 * k
        events = [_request(world.device_ids[p], now) for p in streams]
        eng._events(events, now, streams, pid)
        got = []
        while eng._pending:
            got.append(eng._pending.pop()[2])
        for a in got:
            p = int(a.person[0])
            assert tr.answers[p] and a.answer.all()
            assert 10 <= a.time[0] - now <= 90
            assert 0.5 <= a.arrival[0] - a.time[0] <= 5.0
        eng._busy_until.clear()
        asked += int(tr.answers.sum())
        answered += len(got)
    assert sum(eng.requests.values()) == 40 * len(streams)
    assert 0.75 < answered / asked <= 0.95  # ~90 %, less when the phone is off or offline


def test_replayed_phones_are_the_realistic_ones_and_answer_nothing(world, realistic):
    _, tab = realistic
    streams, rtab = phone_tables(world, REPLAY)
    # The same reports (positions, times, noise) as the realistic phones...
    assert np.array_equal(tab.lon, rtab.lon) and np.array_equal(tab.arrival, rtab.arrival)
    # ...but a location request gets no answer from any of them.
    assert not traits(world, REPLAY).answers.any() and traits(world, REALISTIC).answers.any()
    rng = np.random.default_rng(1)
    assert all(s.answer(T0 + 3600 * 10, rng) is None for s in streams.values())


def test_the_stranger_stream_differs_in_every_respect_the_engine_was_tuned_on(world):
    # None sends speed or provider, intervals of 2/10/30 min, bursts of up to 4 reports with
    # each report thrown its own way (80-600 m), nothing answers.
    streams, tab = phone_tables(world, STRANGER)
    tr = traits(world, STRANGER)
    assert not tr.speed.any() and not tr.provider.any() and not tr.answers.any()
    assert set(tr.interval.tolist()) == {120.0, 600.0, 1800.0}
    assert np.isnan(tab.speed).all() and (tab.provider == NO_PROVIDER).all()
    mp = tab.cls == MULTIPATH
    err = errors_m(tab)
    assert ((err[mp] > 77) & (err[mp] < 606)).all()
    fwd = np.asarray(GEOD.inv(tab.true_lon, tab.true_lat, tab.wgs_lon, tab.wgs_lat)[0])
    lengths, turned = [], 0
    for p in np.unique(tab.person[mp]):
        for ep in np.unique(tab.episode[(tab.person == p) & mp]):
            sel = np.flatnonzero((tab.person == p) & (tab.episode == ep))
            lengths.append(len(sel))
            if len(sel) > 1 and np.ptp(np.unwrap(np.radians(fwd[sel]))) > math.radians(20):
                turned += 1
    assert max(lengths) == 4 and turned >= 0.5 * sum(n > 1 for n in lengths)
    rng = np.random.default_rng(1)
    assert all(s.answer(T0 + 3600 * 10, rng) is None for s in streams.values())


def test_an_answer_inside_a_multipath_episode_repeats_its_displacement(world, realistic):
    streams, tab = realistic
    checked = 0
    for p, s in streams.items():
        for start, end, dx, dy, ep in s.ep:
            if end - start < 100 or s.offline_at(np.array([start, end])).max() >= 0:
                continue
            if world.schedule.in_gap(np.array([p, p]), np.array([start, end])).any():
                continue
            for seed in range(30):
                a = s.answer(start, np.random.default_rng(seed))
                if a is not None and a.time[0] < end:
                    break
            else:
                continue
            assert a.cls[0] == MULTIPATH and a.episode[0] == ep
            err = errors_m(a)[0]
            assert abs(err - math.hypot(dx, dy)) < 0.12 * math.hypot(dx, dy) + 3
            same = (tab.person == p) & (tab.episode == ep)
            assert tab.cls[same][0] == MULTIPATH
            checked += 1
    assert checked >= 3


# -- the driver -------------------------------------------------------------------------------


def test_the_engine_is_fed_in_arrival_order_batches_and_its_requests_are_answered(world):
    cfg = world.cfg
    calls: list[tuple[float, list[Fix]]] = []
    ticks: list[float] = []
    asked: dict[str, float] = {}

    def evaluate(fixes, subjects, zones, states, now):
        calls.append((now, list(fixes)))
        res = engine.evaluate(fixes, subjects, zones, states, now=now)
        for f in fixes:  # ask every phone once an hour
            if now - asked.get(f.device_id, -math.inf) >= 3600:
                asked[f.device_id] = now
                res.events.append(_request(f.device_id, now))
        return res

    def tick(subjects, zones, states, now):
        ticks.append(now)
        return engine.tick(subjects, zones, states, now)

    people = np.arange(0, cfg.people, 3)
    part = run_part(world, REALISTIC, [("engine", {})], people, evaluate=evaluate, tick=tick)
    nows = [n for n, _ in calls]
    assert np.all(np.diff(nows) > 0) and np.all(np.diff(ticks) == cfg.batch_s)
    assert set(nows) <= set(ticks)
    last: dict[str, float] = {}
    older = 0
    for now, fixes in calls:
        assert all(f.time <= now for f in fixes)
        for f in fixes:
            older += f.time < last.get(f.device_id, -math.inf)
            last[f.device_id] = max(f.time, last.get(f.device_id, -math.inf))
    assert older > 0  # offline backlogs arrive after newer fixes
    e = part.engines[0]
    never = {int(p) for p in people if not part.traits.answers[p]}
    assert sum(e.requests.values()) > 50 and sum(e.answers.values()) > 30
    assert never and all(e.answers[p] == 0 and e.requests[p] > 0 for p in never)


# -- scoring and report -----------------------------------------------------------------------


def _violation(person: int, start: float, minutes: float) -> Violation:
    return Violation(person, start, start + minutes * 60, 1000.0, "car", 100.0)


def test_score_counts_a_known_alert_list():
    v = [_violation(1, 1000.0, 30), _violation(2, 5000.0, 8), _violation(3, 9000.0, 60),
         _violation(4, 20_000.0, 20), _violation(6, 30_000.0, 40), _violation(7, 40_000.0, 40)]
    log = AlertLog()
    log.add(1, 1060.0, 1180.0, 1300.0, 2900.0)  # detects v0: fix 180 s, decided 300 s after
    log.add(1, 1300.0, 1400.0, 1410.0)  # second alert in the same violation: not a new detection
    log.add(2, 4000.0, 4100.0, 4110.0, 4200.0)  # before v1 and closed before it starts: false
    log.add(2, 5000.0 + 8 * 60, 5000.0 + 8 * 60, 5500.0)  # at v1's end: false ([start, end))
    log.add(3, 8000.0, 9060.0, 9100.0)  # evidence began before v2: true, delay 100 s
    log.add(5, 100.0, 200.0, 210.0)  # a person without violations: false
    log.add(4, 19_000.0, 19_100.0, 19_110.0)  # false, and still open when v3 starts
    log.add(6, 30_100.0, 30_200.0, 33_000.0)  # v4 detected late (an offline upload)
    m = match(log, v)
    assert sorted(m.false_ids) == [2, 3, 5, 6] and m.covered == {3}
    assert m.first == {0: (1300.0, 1180.0), 2: (9100.0, 9060.0), 4: (33_000.0, 30_200.0)}
    seen = {0: 5, 1: 2, 2: 9, 3: 4, 4: 1, 5: 0}  # v5: no fix saw it
    x = metrics(log, m, v, seen, people={1, 2, 3, 4, 5, 6, 7}, days=2, never={3, 6})
    assert x.false_alerts == 4 and x.false_per_person_day == pytest.approx(4 / 14)
    assert x.eligible == 4 and x.eligible_detected == 3 and x.missed == [3]  # v1 < 10 min, v5 unseen
    assert x.never_eligible == 1 and x.never_detected == 1  # v4 has one fix only
    assert sorted(x.delays.tolist()) == [100.0, 300.0, 3000.0]
    assert sorted(x.fix_delays.tolist()) == [60.0, 180.0, 200.0]
    only = metrics(log, m, v, seen, people={2, 5}, days=2, never=set())
    assert only.false_alerts == 3 and only.eligible == 0
    # Graded on fixes the engine judged wholly outside: v3's four were all undecidable, v4 had one.
    shown = {0: 2, 2: 1, 3: 0, 4: 1}
    y = metrics(log, m, v, seen, people={1, 2, 3, 4, 5, 6, 7}, days=2, never={3, 6},
                seen_at={0: 1100.0, 2: 9050.0, 3: 20_060.0, 4: 30_200.0}, shown=shown)
    assert (y.shown, y.shown_detected) == (3, 3)  # v0, v2, v4; v3 (the miss) showed nothing
    assert (y.shown_never, y.shown_never_detected) == (0, 0)  # v4 has one such fix only
    assert sorted(y.floor_delays.tolist()) == [50.0, 60.0, 100.0, 200.0]  # crossing → first seen
    assert sorted(y.engine_delays.tolist()) == [50.0, 200.0, 2800.0]


def _border_point(world: World, k: int, inside_m: float, out_m: float) -> tuple:
    """A point `inside_m` inside district k and the point `out_m` beyond the border from it."""
    area = world.areas[k]
    for x, y in zip(*area.interior, strict=True):
        b = shapely.get_point(shapely.shortest_line(area.boundary, shapely.points(x, y)), 0)
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


def test_naive_rule_raises_false_alerts_on_multipath_jumps_near_a_border(world):
    k = 3
    home, jump = _border_point(world, k, inside_m=100.0, out_m=250.0)
    n = 60
    t = T0 + 60.0 * np.arange(n)
    jumped = np.zeros(n, dtype=bool)
    jumped[5::10] = True  # six isolated jumps 350 m outwards, accuracy 10 m
    lon = np.where(jumped, jump[0], home[0])
    lat = np.where(jumped, jump[1], home[1])
    z, f, i8 = np.zeros(n, np.int64), np.zeros(n), np.zeros(n, np.int8)
    tab = FixTable(z, t, t + 1, lon, lat, i8, np.full(n, 10.0), f, i8,
                   np.where(jumped, MULTIPATH, CLEAN).astype(np.int8), lon, lat, np.full(n, home[0]),
                   np.full(n, home[1]), np.zeros(n, bool), np.full(n, -1), np.full(n, -1),
                   np.zeros(n, bool), np.zeros(n, bool))
    naive = NaiveTracker(world.zones, np.array([k]))
    naive.feed(tab.take(t < T0 + 1800), T0 + 1800)  # in two batches: state carries over
    naive.feed(tab.take(t >= T0 + 1800), T0 + 3600)
    assert len(naive.log) == 6 and all(c < math.inf for c in naive.log.closed)
    assert naive.wrong_side[MULTIPATH] == 6
    assert len(match(naive.log, []).false_ids) == 6
    fixes = [Fix("d", float(ti), float(x), float(y), accuracy=10.0, provider="gps")
             for ti, x, y in zip(t, lon, lat, strict=True)]
    res = engine.evaluate(fixes, {"d": Subject(0, k)}, world.zones, {}, now=float(t[-1]) + 1)
    assert not [e for e in res.events if e.kind == EventKind.AREA_EXIT]
    assert sum(d.membership.value == "outside" for d in res.decisions) == 6


def test_phones_are_deterministic_per_seed(world):
    tr = traits(world, REALISTIC)
    a = PhoneStream(world, REALISTIC, tr, 4).day(1)
    b = PhoneStream(world, REALISTIC, tr, 4).day(1)
    assert np.array_equal(a.lon, b.lon) and np.array_equal(a.arrival, b.arrival)
    other = World(replace(CFG, people=13, days=1, seed=12))
    c = PhoneStream(other, REALISTIC, traits(other, REALISTIC), 4).day(0)
    assert not np.array_equal(a.accuracy[:20], c.accuracy[:20])


def test_a_small_run_reports_every_target_per_interval_class():
    cfg = QualityConfig(people=26, days=1, seed=3, violations_per_person_day=0.4,
                        scenarios=(REALISTIC, PROFILE, TODAY))
    r = run(cfg)
    labels = [c[0] for c in columns(r)]
    assert labels == ["realistic", "realistic 1 min", "realistic 5 min", "realistic 15 min",
                      "profile", "today 1 min"]
    rows = target_table(r)
    names = [row[0] for row in rows]
    for needle in ("false area-exit alerts / person-day", "near a border", "never answers requests",
                   "delay crossing → decision, p50", "delay crossing → decision, p95",
                   "location requests / person-day", "answers received / person-day"):
        assert any(needle in n for n in names), needle
    assert all(len(row) == len(labels) + 2 for row in rows)
    today = next(s for s in r.scenarios if s.scenario.name == "today")
    everyone = today.group(r.world)
    eng, naive = today.metrics(r.world, "engine", everyone), today.metrics(r.world, "naive", everyone)
    assert naive.false_alerts > 10 * max(eng.false_alerts, 1)
    assert eng.eligible >= 3 and eng.eligible_detected >= 1
    out = text(r)
    assert "False area-exit alerts" in out and "Missed violations" in out and "fixes/s" in out
    assert "today / naive" in out and "realistic / near a border" in out
