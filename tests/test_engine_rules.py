"""Time-series tests of the decision engine, one (at least) per rule of issue 3, named after it.

Zones are small synthetic boxes drawn in metres around Wuhan (lon 114.30, lat 30.60); every test
position is computed in the zone's own metric projection, so its distance to a border is exact.
States are folded across evaluate()/tick() calls the way the ingest pipeline does it: the states
a call returns are merged into the ones it was given.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from zoneinfo import ZoneInfo

import orjson
import pyproj
import pytest
from shapely.geometry import Point, Polygon

from geofence.crs import from_wgs84, wgs84_to_gcj02
from geofence.engine import (
    RULE_AREA_EXIT,
    RULE_AREA_RETURN,
    RULE_CURFEW,
    RULE_CURFEW_AT_START,
    RULE_CURFEW_UNKNOWN,
    RULE_EXCLUSION_APPROACH,
    RULE_EXCLUSION_CROSSING,
    RULE_EXCLUSION_ENTRY,
    RULE_EXCLUSION_LEFT,
    RULE_FROZEN,
    RULE_MOCK,
    RULE_SPEED,
    RULE_UNDECIDABLE,
    BatchResult,
    evaluate,
    tick,
)
from geofence.model import (
    CRS,
    AreaStatus,
    Curfew,
    DeviceState,
    Event,
    EventKind,
    Exclusion,
    Fix,
    LastFix,
    Membership,
    Permit,
    Source,
    Subject,
    Track,
    ZoneKind,
)
from geofence.profile import DEFAULT_PROFILE, Rules, validate_overrides
from geofence.zones import PreparedZone, parse_zone_geojson

SHANGHAI = ZoneInfo("Asia/Shanghai")
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=SHANGHAI).timestamp()  # noon: outside any curfew window
CENTRE = (114.30, 30.60)


def at(s: float) -> float:
    """Epoch time `s` seconds after T0."""
    return T0 + s


def local(day: int, hh: int, mm: int, ss: int = 0) -> float:
    """Epoch time of a local (Asia/Shanghai) wall-clock time in March 2024."""
    return datetime(2024, 3, day, hh, mm, ss, tzinfo=SHANGHAI).timestamp()


# --- zones ------------------------------------------------------------------------------------


def _tmerc(lon0: float, lat0: float) -> pyproj.Transformer:
    proj = f"+proj=tmerc +lat_0={lat0:.7f} +lon_0={lon0:.7f} +k=1 +ellps=WGS84 +units=m +no_defs"
    return pyproj.Transformer.from_crs("EPSG:4326", proj, always_xy=True)


def box_zone(zone_id: int, kind: ZoneKind, centre: tuple[float, float], half_w: float,
             half_h: float) -> PreparedZone:
    """A box of 2*half_w by 2*half_h metres centred on `centre`, axis-aligned in its own plane."""
    tr = _tmerc(*centre)
    xs = [-half_w, half_w, half_w, -half_w]
    ys = [-half_h, -half_h, half_h, half_h]
    lon, lat = tr.transform(xs, ys, direction="INVERSE")
    return PreparedZone(zone_id, 1, kind, Polygon(list(zip(lon, lat, strict=True))))


def pos(zone: PreparedZone, x: float, y: float = 0.0) -> tuple[float, float]:
    """WGS-84 (lon, lat) of the point (x, y) metres from the box's centre, in its own projection.

    The projection is centred on the zone's WGS-84 centroid, a centimetre or so off the box's
    metric centre: offsets are taken from the latter so that borders lie exactly at +-half.
    """
    minx, miny, maxx, maxy = zone.geom.bounds
    lon, lat = zone.transformer.transform((minx + maxx) / 2 + x, (miny + maxy) / 2 + y,
                                          direction="INVERSE")
    return float(lon), float(lat)


HOME_ID, EXCL_ID, RES_ID, DEST_ID, CITY_ID = 1, 2, 3, 4, 5
# Home area: 2 km x 2 km, borders at x = +-1000 m and y = +-1000 m.
HOME = box_zone(HOME_ID, ZoneKind.HOME_AREA, CENTRE, 1000, 1000)
# Exclusion zone: 200 m x 200 m, 500 m east of the home centre (well inside the home area).
EXCL = box_zone(EXCL_ID, ZoneKind.EXCLUSION, pos(HOME, 500, 0), 100, 100)
# Residence for curfews: 300 m x 300 m, 500 m west of the home centre.
RES = box_zone(RES_ID, ZoneKind.HOME_AREA, pos(HOME, -500, 0), 150, 150)
# Travel destination: 1 km x 1 km, 200 m beyond the home area's east border (x 1200..2200).
DEST = box_zone(DEST_ID, ZoneKind.DESTINATION, pos(HOME, 1700, 0), 500, 500)
# A city-sized home area (60 km) for tests that need long journeys inside the allowed area.
CITY = box_zone(CITY_ID, ZoneKind.HOME_AREA, CENTRE, 30000, 30000)
ZONES = {z.zone_id: z for z in (HOME, EXCL, RES, DEST, CITY)}


def test_synthetic_zones_put_positions_at_exact_distances_from_their_borders():
    # The premise of every test below: pos() places a point exactly where the test says.
    assert HOME.signed_distance(*pos(HOME, 1100, 0)) == pytest.approx(100, abs=0.05)
    assert HOME.signed_distance(*pos(HOME, 0, -970)) == pytest.approx(-30, abs=0.05)
    assert EXCL.signed_distance(*pos(EXCL, -160, 0)) == pytest.approx(60, abs=0.05)
    assert EXCL.signed_distance(*pos(EXCL, 0, 85)) == pytest.approx(-15, abs=0.05)
    assert DEST.signed_distance(*pos(HOME, 1700, 0)) == pytest.approx(-500, abs=0.05)
    assert HOME.signed_distance(*pos(HOME, 1700, 0)) == pytest.approx(700, abs=0.05)


# --- fixes, subjects and the pipeline's fold ---------------------------------------------------

BASE = Fix("dev-1", T0, *CENTRE, crs=CRS.WGS84, accuracy=10.0, provider="gps",
           source=Source.NATIVE_MQTT)


def fx(t: float, where: tuple[float, float], dev: str = "dev-1", **kw: object) -> Fix:
    """The canonical fix at time T0 + t and position `where`, with overrides."""
    return replace(BASE, device_id=dev, time=at(t), lon=where[0], lat=where[1], **kw)  # type: ignore[arg-type]


def ev(e: Event) -> tuple[object, ...]:
    """What every test compares about an event."""
    return (e.kind, e.fix_time, e.since, e.late, e.reason.rule, e.reason.zone_id)


def evs(events: Iterable[Event], kind: EventKind | None = None) -> list[tuple[object, ...]]:
    return [ev(e) for e in events if kind is None or e.kind == kind]


class Pipeline:
    """Feeds batches like the ingest pipeline: load states, evaluate, store the changed states."""

    def __init__(self, subjects: dict[str, Subject], states: dict[str, DeviceState] | None = None):
        self.subjects = subjects
        self.states: dict[str, DeviceState] = dict(states or {})
        self.events: list[Event] = []
        self.results: list[BatchResult] = []

    def _snapshot(self) -> dict[str, dict[str, object]]:
        return {d: s.to_dict() for d, s in self.states.items()}

    def batch(self, fixes: Sequence[Fix], now: float | None = None) -> BatchResult:
        now = max(f.time for f in fixes) + 1.0 if now is None else now
        before = self._snapshot()
        res = evaluate(fixes, self.subjects, ZONES, dict(self.states), now)
        # The engine is pure: the states it was given are never mutated, only replaced.
        assert self._snapshot() == before
        self.states.update(res.states)
        self.events.extend(res.events)
        self.results.append(res)
        return res

    def live(self, fixes: Iterable[Fix]) -> list[Event]:
        """Each fix in its own batch, one second after it was taken; returns the new events."""
        out: list[Event] = []
        for f in fixes:
            out.extend(self.batch([f]).events)
        return out

    def tick(self, now: float) -> BatchResult:
        before = self._snapshot()
        res = tick(self.subjects, ZONES, dict(self.states), now)
        assert self._snapshot() == before
        self.states.update(res.states)
        self.events.extend(res.events)
        self.results.append(res)
        return res


# Shallow evidence (100 m beyond, within a reflection's reach) decides here after 3 fixes
# spanning 90 s, the old count-and-span shape the tests below were written for; repeats of
# one place count and location requests are off: both are tested on their own. The defaults
# (`Rules()`) are tested further down.
RULES = Rules(shallow_span_s=90.0, repeat_s=0.0, confirm_max_per_hour=0)
IN = pos(HOME, 0, 0)
OUT = pos(HOME, 1100, 0)  # 100 m beyond the east border: wholly outside with 10 m accuracy


def home_subject(**kw: object) -> Subject:
    return Subject(1, HOME_ID, rules=kw.pop("rules", RULES), **kw)  # type: ignore[arg-type]


# --- the allowed area ---------------------------------------------------------------------------


def test_exit_needs_n_fixes_spanning_t_minutes_wholly_outside():
    p = Pipeline({"dev-1": home_subject(), "dev-2": Subject(2, HOME_ID, rules=RULES)})
    assert p.live([fx(0, IN)]) == []
    assert p.states["dev-1"].area == Track(AreaStatus.INSIDE, at(0))
    # Three wholly-outside fixes spanning only 60 s: not yet.
    assert p.live([fx(100, OUT), fx(130, OUT), fx(160, OUT)]) == []
    area = p.states["dev-1"].area
    assert (area.status, area.since, area.pending, area.pending_since) == (
        AreaStatus.INSIDE, at(0), 3, at(100))
    assert [e[0] for e in area.evidence] == [at(100), at(130), at(160)]
    # The fourth makes the span 90 s: the exit dates from the first evidence.
    events = p.live([fx(190, OUT)])
    assert evs(events) == [(EventKind.AREA_EXIT, at(190), at(100), False, RULE_AREA_EXIT, HOME_ID)]
    e = events[0]
    assert e.reason.membership == Membership.OUTSIDE
    assert e.reason.distance_m == pytest.approx(100, abs=0.05)
    assert e.reason.accuracy_m == 10.0
    assert dict(e.reason.detail)["allowed_zones"] == [HOME_ID]
    assert (e.lon, e.lat) == pytest.approx(OUT)
    assert e.detected_at == at(191)
    assert p.states["dev-1"].area == Track(AreaStatus.OUTSIDE, at(100))
    assert [(d.membership, d.evaluated) for r in p.results for d in r.decisions] == (
        [(Membership.INSIDE, True)] + [(Membership.OUTSIDE, True)] * 4)
    # More outside fixes do not repeat the exit.
    assert p.live([fx(220, OUT), fx(250, OUT)]) == []

    # The count matters as much as the span: two fixes 300 s apart are not enough, a third is.
    assert p.live([fx(0, IN, "dev-2"), fx(100, OUT, "dev-2"), fx(400, OUT, "dev-2")]) == []
    assert evs(p.live([fx(410, OUT, "dev-2")])) == [
        (EventKind.AREA_EXIT, at(410), at(100), False, RULE_AREA_EXIT, HOME_ID)]


def test_border_jitter_never_raises_an_exit():
    # A person living on the east border: fixes jump across it for two hours. Circles that
    # straddle the border decide nothing; a wholly-inside fix breaks any outside streak.
    pattern = [
        (1050, 20, Membership.OUTSIDE),  # wholly outside by 30 m
        (1020, 30, Membership.BORDER),  # bare point outside, circle straddles
        (1010, 15, Membership.BORDER),
        (950, 20, Membership.INSIDE),  # wholly inside
        (990, 25, Membership.BORDER),
        (1060, 25, Membership.OUTSIDE),
        (1025, 40, Membership.BORDER),
        (940, 30, Membership.INSIDE),
    ]
    fixes, want = [], []
    for k in range(240):  # every 30 s for two hours
        x, acc, m = pattern[k % len(pattern)]
        fixes.append(fx(30 * k, pos(HOME, x, 40.0 * (k % 5)), accuracy=float(acc)))
        want.append(m)
    # A bare point-in-polygon rule would call more than half of these fixes "outside".
    naive_out = sum(not HOME.geom_wgs84.contains(Point(f.lon, f.lat)) for f in fixes)
    assert naive_out == 150
    p = Pipeline({"dev-1": home_subject()})
    assert p.live(fixes) == []
    assert [d.membership for r in p.results for d in r.decisions] == want
    # The very first fix (wholly outside) starts a streak from "unknown"; the first inside fix
    # (at 90 s) settles the person as inside, and nothing afterwards moves them.
    assert p.states["dev-1"].area == Track(AreaStatus.INSIDE, at(90))
    # Never more than one piece of outside evidence was pending at a time.
    assert max(r.states["dev-1"].area.pending for r in p.results) == 1


def test_return_needs_the_same_care_as_exit_hysteresis():
    p = Pipeline({"dev-1": home_subject()})
    exit_events = p.live([fx(0, IN), fx(100, OUT), fx(130, OUT), fx(160, OUT), fx(190, OUT)])
    assert evs(exit_events) == [(EventKind.AREA_EXIT, at(190), at(100), False, RULE_AREA_EXIT,
                                 HOME_ID)]
    border = pos(HOME, 990, 0)  # circle of 20 m straddles the border
    steps = [
        (fx(300, IN), []),
        (fx(330, IN), []),
        (fx(360, OUT), []),  # one wholly-outside fix breaks the return streak, and is no new exit
        (fx(400, IN), []),
        (fx(420, border, accuracy=20.0), []),  # neither counts nor breaks
        (fx(430, IN), []),
        (fx(460, IN), []),  # three fixes but only 60 s
        (fx(490, IN), [(EventKind.AREA_RETURN, at(490), at(400), False, RULE_AREA_RETURN,
                        HOME_ID)]),
    ]
    for f, want in steps:
        assert evs(p.live([f])) == want, f.time - T0
    assert p.states["dev-1"].area == Track(AreaStatus.INSIDE, at(400))
    ret = p.events[-1]
    assert ret.reason.membership == Membership.INSIDE
    assert ret.reason.distance_m == pytest.approx(-1000, abs=0.05)


def test_permit_destination_joins_the_allowed_area_only_while_valid():
    permit = Permit(DEST_ID, at(1000), at(2000))
    p = Pipeline({"dev-1": home_subject(permits=(permit,))})
    dest = pos(HOME, 1700, 0)  # the destination's centre: 700 m beyond the home area
    series = [fx(900, IN), fx(930, dest)]  # before the permit: outside (one deep fix)
    series += [fx(t, dest) for t in range(1000, 2000, 30)]  # during: allowed
    series += [fx(2000, dest)]  # at its end: outside again
    assert p.live(series) == []
    memberships = [d.membership for r in p.results for d in r.decisions]
    assert memberships == ([Membership.INSIDE] + [Membership.OUTSIDE]
                           + [Membership.INSIDE] * 34 + [Membership.OUTSIDE])
    # A second fix 700 m beyond the home area (beyond a reflection's reach): an exit.
    events = p.live([fx(2030, dest)])
    assert evs(events) == [(EventKind.AREA_EXIT, at(2030), at(2000), False, RULE_AREA_EXIT,
                            HOME_ID)]
    assert dict(events[0].reason.detail)["allowed_zones"] == [HOME_ID]
    assert dict(events[0].reason.detail)["decided_by"] == "evidence_weight"
    assert events[0].reason.distance_m == pytest.approx(700, abs=0.05)

    # While the permit is valid the allowed area is home plus destination.
    assert home_subject(permits=(permit,)).allowed_zone_ids(at(1500)) == [HOME_ID, DEST_ID]
    assert home_subject(permits=(permit,)).allowed_zone_ids(at(2000)) == [HOME_ID]


# --- exclusion zones ----------------------------------------------------------------------------


def excl_subject(buffer_m: float = 0.0) -> Subject:
    return Subject(1, HOME_ID, exclusions=(Exclusion(EXCL_ID, buffer_m),), rules=RULES)


def test_exclusion_entry_is_the_mirror_rule():
    far_w = pos(EXCL, -300, 0)  # 200 m west of the zone
    inside = pos(EXCL, 0, 0)
    p = Pipeline({"dev-1": excl_subject()})
    steps = [
        (fx(0, far_w), []),
        (fx(60, inside), []),
        (fx(80, inside), []),  # two fixes, only 20 s
        (fx(90, inside), [(EventKind.EXCLUSION_ENTRY, at(90), at(60), False,
                           RULE_EXCLUSION_ENTRY, EXCL_ID)]),
        (fx(100, inside), []),  # no repeat
        (fx(120, far_w), []),
        (fx(140, inside), []),  # breaks the streak towards "left"
        (fx(200, far_w), []),
        (fx(230, far_w), [(EventKind.EXCLUSION_LEFT, at(230), None, False, RULE_EXCLUSION_LEFT,
                           EXCL_ID)]),
    ]
    for f, want in steps:
        got = evs(p.live([f]))
        # `since` of EXCLUSION_LEFT is checked by test_exclusion_left_reports_since_like_area_return
        got = [(*x[:2], None, *x[3:]) if x[0] == EventKind.EXCLUSION_LEFT else x for x in got]
        assert got == want, f.time - T0
    entry = next(e for e in p.events if e.kind == EventKind.EXCLUSION_ENTRY)
    assert entry.reason.membership == Membership.INSIDE
    assert entry.reason.distance_m == pytest.approx(-100, abs=0.05)
    assert p.states["dev-1"].zone(f"x{EXCL_ID}") == Track(AreaStatus.OUTSIDE, at(200))
    # The home area never moved.
    assert p.states["dev-1"].area == Track(AreaStatus.INSIDE, at(0))


def test_exclusion_left_reports_since_like_area_return():
    # The mirror of AREA_RETURN, which says since when the person is back: EXCLUSION_LEFT should
    # say since when the person is out of the zone (first wholly-outside evidence).
    far_w, inside = pos(EXCL, -300, 0), pos(EXCL, 0, 0)
    p = Pipeline({"dev-1": excl_subject()})
    p.live([fx(0, far_w), fx(60, inside), fx(90, inside), fx(200, far_w)])
    assert evs(p.live([fx(230, far_w)])) == [
        (EventKind.EXCLUSION_LEFT, at(230), at(200), False, RULE_EXCLUSION_LEFT, EXCL_ID)]


def test_single_jittery_fix_inside_an_exclusion_zone_raises_nothing():
    # Entering needs N wholly-inside fixes spanning T (the mirror rule). One urban-canyon jump
    # into the zone between two fixes west of it must not raise an entry by another name: the
    # "segment" from that one fix back out starts inside the zone, it crosses nothing.
    far_w, inside = pos(EXCL, -300, 0), pos(EXCL, 0, 0)
    p = Pipeline({"dev-1": excl_subject()})
    events = p.live([fx(0, far_w), fx(60, inside), fx(120, far_w), fx(180, far_w)])
    assert evs(events) == []
    assert p.states["dev-1"].zone(f"x{EXCL_ID}").status == AreaStatus.OUTSIDE


def test_exclusion_buffer_warns_once_per_approach():
    p = Pipeline({"dev-1": excl_subject(buffer_m=100.0)})
    d150, d105, d60, d50 = (pos(EXCL, -100 - d, 0) for d in (150, 105, 60, 50))
    approach = [(EventKind.EXCLUSION_APPROACH, None, False, RULE_EXCLUSION_APPROACH, EXCL_ID)]
    steps = [
        (fx(0, d150), []),  # circle wholly beyond the 100 m buffer
        (fx(30, d60), [(at(30), *approach[0])]),  # circle wholly within the buffer: warn
        (fx(60, d50), []),  # same approach: once
        (fx(90, d105), []),  # neither within nor beyond: the warning stands
        (fx(120, d60), []),
        (fx(150, d150), []),  # wholly beyond the buffer: this approach is over
        (fx(180, d60), [(at(180), *approach[0])]),  # a new approach warns again
    ]
    for f, want in steps:
        got = [(e.fix_time, e.kind, e.since, e.late, e.reason.rule, e.reason.zone_id)
               for e in p.live([f])]
        assert got == want, f.time - T0
    warn = [e for e in p.events if e.kind == EventKind.EXCLUSION_APPROACH]
    assert dict(warn[0].reason.detail)["buffer_m"] == 100.0
    assert warn[0].reason.membership == Membership.OUTSIDE
    assert warn[0].reason.distance_m == pytest.approx(60, abs=0.05)
    assert p.states["dev-1"].zone(f"x{EXCL_ID}") == Track(AreaStatus.OUTSIDE, at(0), flag=at(180))


def test_straight_segment_through_exclusion_zone_counts():
    west, east = pos(EXCL, -300, 0), pos(EXCL, 300, 0)
    beside_w, beside_e = pos(EXCL, -300, 150), pos(EXCL, 300, 150)
    p = Pipeline({"dev-1": excl_subject(), "dev-2": excl_subject(), "dev-3": excl_subject()})
    # dev-1: two sparse fixes on either side of the zone, in two batches (state carries `last`).
    assert p.live([fx(0, west)]) == []
    events = p.live([fx(60, east)])
    assert evs(events) == [(EventKind.EXCLUSION_CROSSING, at(60), at(0), False,
                            RULE_EXCLUSION_CROSSING, EXCL_ID)]
    detail = dict(events[0].reason.detail)
    assert detail["from_time"] == at(0)
    assert (detail["from_lon"], detail["from_lat"]) == pytest.approx(west)
    assert events[0].reason.membership == Membership.OUTSIDE
    # A crossing is not an entry: the zone's track stays outside.
    assert p.states["dev-1"].zone(f"x{EXCL_ID}") == Track(AreaStatus.OUTSIDE, at(0))
    # dev-2: the same in one batch.
    res = p.batch([fx(0, west, "dev-2"), fx(60, east, "dev-2")])
    assert evs(res.events) == [(EventKind.EXCLUSION_CROSSING, at(60), at(0), False,
                                RULE_EXCLUSION_CROSSING, EXCL_ID)]
    # dev-3: a segment passing 50 m north of the zone crosses nothing.
    assert p.live([fx(0, beside_w, "dev-3"), fx(60, beside_e, "dev-3")]) == []


def test_segment_crossing_ignores_what_accuracy_can_explain():
    # The segment runs 15 m inside the zone's north border for its whole width.
    west, east = pos(EXCL, -300, 85), pos(EXCL, 300, 85)
    subjects = {d: excl_subject() for d in ("precise", "coarse", "mixed")}
    p = Pipeline(subjects)
    # 10 m circles cannot explain a 15 m deep passage: it counts.
    assert evs(p.live([fx(0, west, "precise", accuracy=10.0), fx(60, east, "precise",
                                                                  accuracy=10.0)])) == [
        (EventKind.EXCLUSION_CROSSING, at(60), at(0), False, RULE_EXCLUSION_CROSSING, EXCL_ID)]
    # 20 m circles can: nothing.
    assert p.live([fx(0, west, "coarse", accuracy=20.0), fx(60, east, "coarse",
                                                          accuracy=20.0)]) == []
    # The worse of the two ends decides.
    assert p.live([fx(0, west, "mixed", accuracy=5.0), fx(60, east, "mixed",
                                                        accuracy=20.0)]) == []


def test_segment_crossing_ignores_long_gaps():
    west, east = pos(EXCL, -300, 0), pos(EXCL, 300, 0)
    p = Pipeline({"gap": excl_subject(), "edge": excl_subject()})
    gap = RULES.segment_max_gap_s
    # Half an hour and a second apart: the person may have gone anywhere; no straight line.
    assert p.live([fx(0, west, "gap")]) == []
    assert p.live([fx(gap + 1, east, "gap")]) == []
    # Exactly the limit still counts.
    assert p.live([fx(0, west, "edge")]) == []
    assert evs(p.live([fx(gap, east, "edge")])) == [
        (EventKind.EXCLUSION_CROSSING, at(gap), at(0), False, RULE_EXCLUSION_CROSSING, EXCL_ID)]


# --- undecidable fixes --------------------------------------------------------------------------


def test_accuracy_worse_than_limit_decides_nothing_and_streak_asks_for_roll_call():
    far = pos(HOME, 5000, 0)  # 4 km outside: would be a fast, "deep" exit if it counted
    p = Pipeline({"dev-1": home_subject(), "span": home_subject(), "limit": home_subject()})
    assert p.live([fx(0, IN)]) == []
    events = []
    for k in range(1, 8):
        events += p.live([fx(60 * k, far, accuracy=250.0)])
    # The sixth undecidable fix in a row asks for a roll-call, once; no exit at all.
    assert evs(events) == [(EventKind.ROLL_CALL_REQUEST, at(360), at(60), False, RULE_UNDECIDABLE,
                            None)]
    assert events[0].reason.membership == Membership.UNDECIDABLE
    assert dict(events[0].reason.detail)["undecidable_fixes"] == 6
    st = p.states["dev-1"]
    assert st.area == Track(AreaStatus.INSIDE, at(0))
    assert (st.undecidable, st.undecidable_since, st.rollcall_asked) == (7, at(60), True)
    assert st.last == LastFix(at(0), *IN, 10.0)  # an undecidable fix is never a segment start
    assert st.last_fix_time == at(420)
    # Kept (evaluated, stored) but undecided.
    decs = [d for r in p.results[1:] for d in r.decisions]
    assert [(d.membership, d.evaluated) for d in decs] == [(Membership.UNDECIDABLE, True)] * 7
    # A decidable fix ends the streak.
    assert p.live([fx(480, IN)]) == []
    st = p.states["dev-1"]
    assert (st.undecidable, st.undecidable_since, st.rollcall_asked) == (0, None, False)

    # Undecidable for the whole span (30 min) asks too, however few the fixes.
    assert p.live([fx(0, far, "span", accuracy=500.0)]) == []
    assert evs(p.live([fx(1800, far, "span", accuracy=500.0)])) == [
        (EventKind.ROLL_CALL_REQUEST, at(1800), at(0), False, RULE_UNDECIDABLE, None)]

    # The limit itself is still decidable; just beyond it is not.
    p.live([fx(0, far, "limit", accuracy=200.0), fx(60, far, "limit", accuracy=200.5)])
    assert [d.membership for r in p.results[-2:] for d in r.decisions] == [
        Membership.OUTSIDE, Membership.UNDECIDABLE]


def test_cell_only_and_missing_accuracy_fixes_are_undecidable():
    far = pos(HOME, 5000, 0)
    p = Pipeline({"dev-1": home_subject(), "net": home_subject()})
    p.live([fx(0, IN)])
    events = []
    for k in range(1, 7):
        kw = {"provider": "cell", "accuracy": 50.0} if k % 2 else {"accuracy": None}
        events += p.live([fx(60 * k, far, **kw)])
    assert evs(events) == [(EventKind.ROLL_CALL_REQUEST, at(360), at(60), False, RULE_UNDECIDABLE,
                            None)]
    assert [d.membership for r in p.results[1:] for d in r.decisions] == [
        Membership.UNDECIDABLE] * 6
    assert p.states["dev-1"].area == Track(AreaStatus.INSIDE, at(0))
    # The same position from a network fix with a stated accuracy decides.
    p.live([fx(0, far, "net", provider="network", accuracy=50.0)])
    assert p.results[-1].decisions[0].membership == Membership.OUTSIDE


def test_zero_accuracy_is_no_accuracy():
    # Android's Location.getAccuracy() returns 0.0 when the fix has no accuracy, and the
    # decoders accept 0: a 0 m circle is no GNSS fix a phone can give, it means "unknown". Read
    # literally it turns the accuracy-aware rule back into a bare point test, and border jitter
    # of a few metres raises an exit.
    jitter = [pos(HOME, 1000 + d, 0) for d in (5, 3, 6, -4, 7, 2, 4, 6)]
    p = Pipeline({"dev-1": home_subject()})
    p.live([fx(0, IN)])
    events = p.live([fx(60 + 30 * k, w, accuracy=0.0) for k, w in enumerate(jitter)])
    assert [e.kind for e in events] == [EventKind.ROLL_CALL_REQUEST]
    assert p.states["dev-1"].area == Track(AreaStatus.INSIDE, at(0))


# --- curfews ------------------------------------------------------------------------------------

WS = local(1, 22, 0)  # the window of the night of 1 March opens at 22:00 local (14:00 UTC)
CURFEW = Curfew(RES_ID, "22:00", "06:00")
AT_HOME = pos(RES, 0, 0)
AWAY = pos(RES, 0, 700)  # 550 m north of the residence, 300 m inside the home area


def curfew_subject() -> Subject:
    return Subject(1, HOME_ID, curfews=(CURFEW,), rules=RULES)


def cfx(t: float, where: tuple[float, float], dev: str = "dev-1", **kw: object) -> Fix:
    """A fix at absolute epoch time t."""
    return fx(t - T0, where, dev, **kw)


def test_curfew_breach_when_window_opens_with_person_outside():
    p = Pipeline({"dev-1": curfew_subject(), "home": curfew_subject()})
    # Out for the evening: the curfew track turns "outside" before the window (no event yet).
    before = [cfx(local(1, 21, 40 + k), AWAY) for k in range(4)]
    assert p.live(before) == []
    assert p.states["dev-1"].zone(CURFEW.key) == Track(AreaStatus.OUTSIDE, local(1, 21, 40))
    assert p.live([cfx(local(1, 21, 50), AT_HOME, "home")]) == []
    assert p.tick(local(1, 21, 59, 59)).events == []  # the window is not open yet
    res = p.tick(WS + 30)
    assert evs(res.events) == [(EventKind.CURFEW_BREACH, local(1, 21, 43), WS, False,
                                RULE_CURFEW_AT_START, RES_ID)]
    e = res.events[0]
    assert e.device_id == "dev-1"
    assert e.reason.membership == Membership.OUTSIDE
    assert e.reason.distance_m == pytest.approx(550, abs=0.05)
    assert dict(e.reason.detail) == {"curfew": "22:00-06:00", "window_start": WS}
    assert e.detected_at == WS + 30
    assert set(res.states) == {"dev-1"}
    assert p.states["dev-1"].zone(CURFEW.key).flag == WS
    # The area exit rule was never involved.
    assert p.states["dev-1"].area == Track(AreaStatus.INSIDE, local(1, 21, 40))


def test_curfew_breach_from_fixes_during_the_window():
    p = Pipeline({"dev-1": curfew_subject()})
    assert p.live([cfx(local(1, 21, 50), AT_HOME)]) == []
    assert p.tick(WS).events == []  # at home, fresh: nothing to say
    t1 = local(1, 22, 30)
    assert p.live([cfx(t1, AWAY), cfx(t1 + 30, AWAY), cfx(t1 + 60, AWAY)]) == []  # only 60 s
    events = p.live([cfx(t1 + 90, AWAY)])
    assert evs(events) == [(EventKind.CURFEW_BREACH, t1 + 90, t1, False, RULE_CURFEW, RES_ID)]
    assert dict(events[0].reason.detail)["window_start"] == WS
    assert dict(events[0].reason.detail)["curfew"] == "22:00-06:00"
    assert events[0].reason.membership == Membership.OUTSIDE
    assert p.states["dev-1"].zone(CURFEW.key) == Track(AreaStatus.OUTSIDE, t1, flag=WS)


def test_curfew_unknown_position_at_window_start_asks_for_roll_call():
    subjects = {d: curfew_subject() for d in ("silent", "stale-in", "stale-out")}
    p = Pipeline(subjects)
    p.live([cfx(local(1, 20, 0), AT_HOME, "stale-in")])  # two hours before the window
    p.live([cfx(local(1, 20, k), AWAY, "stale-out") for k in range(4)])
    assert p.states["stale-out"].zone(CURFEW.key).status == AreaStatus.OUTSIDE
    res = p.tick(WS + 10)
    ask = (EventKind.ROLL_CALL_REQUEST, WS + 10, WS, False, RULE_CURFEW_UNKNOWN, RES_ID)
    assert sorted((e.device_id, ev(e)) for e in res.events) == [
        ("silent", ask), ("stale-in", ask), ("stale-out", ask)]
    assert all(e.reason.membership == Membership.UNDECIDABLE for e in res.events)
    assert all(p.states[d].zone(CURFEW.key).flag == -WS for d in subjects)
    # Asked once per window.
    assert p.tick(WS + 70).events == []
    # The answer to the roll-call is judged like any fix during the window.
    t1 = local(1, 22, 5)
    events = p.live([cfx(t1 + 30 * k, AWAY, "silent") for k in range(4)])
    assert evs(events) == [(EventKind.CURFEW_BREACH, t1 + 90, t1, False, RULE_CURFEW, RES_ID)]


def test_curfew_breach_reported_once_per_window():
    p = Pipeline({"dev-1": curfew_subject()})
    p.live([cfx(local(1, 21, 50), AT_HOME)])
    t1 = local(1, 22, 30)
    out1 = [cfx(t1 + 30 * k, AWAY) for k in range(6)]
    back = [cfx(local(1, 23, 0) + 30 * k, AT_HOME) for k in range(4)]
    out2 = [cfx(local(1, 23, 30) + 30 * k, AWAY) for k in range(4)]
    assert evs(p.live(out1)) == [(EventKind.CURFEW_BREACH, t1 + 90, t1, False, RULE_CURFEW,
                                  RES_ID)]
    # Home, out again, a tick: all in the same window, nothing new.
    assert p.live(back) == []
    assert p.states["dev-1"].zone(CURFEW.key).status == AreaStatus.INSIDE
    assert p.live(out2) == []
    assert p.states["dev-1"].zone(CURFEW.key).status == AreaStatus.OUTSIDE
    assert p.tick(local(2, 1, 0)).events == []
    # Out all the next day; the next night's window is a new breach.
    day = [cfx(local(2, 21, 40) + 60 * k, AWAY) for k in range(3)]
    assert p.live(day) == []
    ws2 = local(2, 22, 0)
    assert evs(p.tick(ws2 + 5).events) == [(EventKind.CURFEW_BREACH, local(2, 21, 42), ws2,
                                            False, RULE_CURFEW_AT_START, RES_ID)]
    assert p.live([cfx(ws2 + 60, AWAY)]) == []


def _home_just_before_the_window(p: Pipeline, dev: str) -> None:
    """Out in the evening, home at 21:59: two wholly-inside fixes, not yet a declared return."""
    p.live([cfx(local(1, 21, 40 + k), AWAY, dev) for k in range(3)])
    p.live([cfx(local(1, 21, 59), AT_HOME, dev), cfx(local(1, 21, 59, 30), AT_HOME, dev)])
    track = p.states[dev].zone(CURFEW.key)
    assert (track.status, track.pending) == (AreaStatus.OUTSIDE, 2)


def test_curfew_tick_raises_no_breach_against_newer_evidence_of_being_inside():
    # The pending return evidence is not enough to *declare* the person back, but it is newer
    # than, and contradicts, the "outside" belief: at the window's start the position is
    # unknown (a roll-call would settle it), not a breach. Today the breach fires, its reason
    # saying "outside" with a negative (inside) distance.
    p = Pipeline({"dev-1": curfew_subject()})
    _home_just_before_the_window(p, "dev-1")
    res = p.tick(WS)
    assert [ev(e) for e in res.events if e.kind == EventKind.CURFEW_BREACH] == []


def test_curfew_breach_is_not_raised_on_a_fix_wholly_inside_the_curfew_zone():
    # The first fix of the window shows the person wholly inside the residence: a breach whose
    # own reason says membership "inside", distance -150 m is a false alarm.
    p = Pipeline({"dev-1": curfew_subject()})
    _home_just_before_the_window(p, "dev-1")
    events = p.live([cfx(WS + 10, AT_HOME)])
    assert [ev(e) for e in events if e.kind == EventKind.CURFEW_BREACH] == []
    # The return completes with the third inside fix; nothing was ever owed.
    assert p.live([cfx(WS + 40, AT_HOME)]) == []
    assert p.states["dev-1"].zone(CURFEW.key).status == AreaStatus.INSIDE


def test_curfew_window_spanning_midnight():
    cu = Curfew(RES_ID, "22:00", "06:00")
    assert cu.window_start(local(1, 23, 0)) == 1_709_301_600  # 2024-03-01T14:00:00Z
    assert cu.window_start(local(1, 21, 59, 59)) is None
    assert cu.window_start(WS) == WS
    assert cu.window_start(local(1, 23, 30)) == WS
    assert cu.window_start(local(2, 0, 0)) == WS  # after midnight: still the 1st's window
    assert cu.window_start(local(2, 5, 59, 59)) == WS
    assert cu.window_start(local(2, 6, 0)) is None  # the end is exclusive
    assert cu.window_start(local(2, 12, 0)) is None
    assert cu.window_start(local(2, 22, 0)) == local(2, 22, 0)
    # A daytime window does not span midnight.
    day = Curfew(RES_ID, "09:00", "17:00")
    assert day.window_start(local(1, 8, 59)) is None
    assert day.window_start(local(1, 16, 59)) == local(1, 9, 0)
    assert day.window_start(local(1, 17, 0)) is None
    # Another zone's time zone moves the window (Urumqi is UTC+6: 22:00 there is 00:00 here).
    urumqi = Curfew(RES_ID, "22:00", "06:00", tz="Asia/Urumqi")
    assert urumqi.window_start(local(2, 0, 30)) == local(2, 0, 0)
    assert urumqi.window_start(local(1, 23, 30)) is None


# --- late and buffered fixes --------------------------------------------------------------------


def test_buffered_fixes_are_evaluated_in_fix_time_order():
    series_1 = [fx(0, IN), fx(100, OUT), fx(130, OUT), fx(160, OUT), fx(190, OUT), fx(300, IN),
                fx(330, IN), fx(360, IN), fx(390, IN)]
    series_2 = [fx(t, IN, "dev-2") for t in (5, 50)] + [fx(t, OUT, "dev-2")
                                                       for t in (105, 135, 165, 195)]
    shuffled = series_1 + series_2
    random.Random(7).shuffle(shuffled)
    subjects = {"dev-1": home_subject(), "dev-2": Subject(2, HOME_ID, rules=RULES)}
    p = Pipeline(subjects)
    res = p.batch(shuffled, now=at(400))
    assert sorted(evs(res.events)) == sorted([
        (EventKind.AREA_EXIT, at(190), at(100), False, RULE_AREA_EXIT, HOME_ID),
        (EventKind.AREA_RETURN, at(390), at(300), False, RULE_AREA_RETURN, HOME_ID),
        (EventKind.AREA_EXIT, at(195), at(105), False, RULE_AREA_EXIT, HOME_ID),
    ])
    # Decisions come back in input order, each naming its fix's position.
    assert [d.index for d in res.decisions] == list(range(len(shuffled)))
    assert all(d.fix is f for d, f in zip(res.decisions, shuffled, strict=True))
    assert all(d.evaluated for d in res.decisions)
    # The same as a phone sending them one by one, live.
    live = Pipeline(subjects)
    live.live(sorted(shuffled, key=lambda f: f.time))
    assert live.states == p.states
    assert sorted(evs(live.events)) == sorted(evs(res.events))


def test_late_violation_is_marked_late_with_both_times():
    series = [fx(0, IN), fx(100, OUT), fx(130, OUT), fx(160, OUT), fx(190, OUT)]
    # The phone was offline: it uploads its buffer an hour later.
    p = Pipeline({"dev-1": home_subject()})
    res = p.batch(series, now=at(3600))
    assert evs(res.events) == [(EventKind.AREA_EXIT, at(190), at(100), True, RULE_AREA_EXIT,
                                HOME_ID)]
    assert res.events[0].detected_at == at(3600)
    assert all(d.evaluated for d in res.decisions)
    assert p.states["dev-1"].area == Track(AreaStatus.OUTSIDE, at(100))
    # Found within late_after_s of its fix time it is not late; a second more and it is.
    for now, late in ((at(190) + RULES.late_after_s, False), (at(190) + RULES.late_after_s + 1,
                                                              True)):
        res = Pipeline({"dev-1": home_subject()}).batch(series, now=now)
        assert [(e.kind, e.late) for e in res.events] == [(EventKind.AREA_EXIT, late)]


def test_fix_older_than_state_never_undoes_a_later_decision():
    p = Pipeline({"dev-1": home_subject()})
    p.live([fx(0, IN), fx(100, OUT), fx(130, OUT), fx(160, OUT), fx(190, OUT)])
    decided = p.states["dev-1"]
    assert decided.area == Track(AreaStatus.OUTSIDE, at(100))
    # A buffered upload of older fixes, all at home (and one with the same time as the state).
    old = [fx(t, IN) for t in (-400, -370, -340, -310, -280)] + [fx(190, IN)]
    res = p.batch(old, now=at(200))
    assert res.events == []
    assert res.states == {}
    assert p.states["dev-1"] == decided
    assert [(d.membership, d.evaluated) for d in res.decisions] == [(Membership.INSIDE, False)] * 6
    # A later live fix still finds the person outside: nothing was undone.
    assert p.live([fx(220, OUT)]) == []
    assert p.states["dev-1"].area == Track(AreaStatus.OUTSIDE, at(100))


def test_old_buffered_upload_after_a_live_fix_still_reveals_a_past_exit():
    p = Pipeline({"dev-1": home_subject()})
    p.live([fx(5000, IN)])
    before = p.states["dev-1"]
    # The phone had been offline earlier and now uploads what it stored: out, then back.
    buffered = [fx(t, OUT) for t in (1000, 1030, 1060, 1090)] + [fx(t, IN) for t in
                                                                  (1200, 1230, 1260, 1290)]
    res = p.batch(buffered, now=at(5010))
    assert evs(res.events) == [(EventKind.AREA_EXIT, at(1090), at(1000), True, RULE_AREA_EXIT,
                                HOME_ID)]
    assert res.events[0].detected_at == at(5010)
    # Judged apart: the device state (in at 5000) is untouched.
    assert res.states == {}
    assert p.states["dev-1"] == before
    assert [(d.membership, d.evaluated) for d in res.decisions] == (
        [(Membership.OUTSIDE, False)] * 4 + [(Membership.INSIDE, False)] * 4)
    assert p.live([fx(5060, IN)]) == []


# --- spoofing -----------------------------------------------------------------------------------


def test_mock_location_flag_is_suspected_spoofing_once_per_run():
    p = Pipeline({"dev-1": home_subject()})
    flags = [False, True, True, True, False, True, True]
    events = p.live([fx(30 * k, IN, mock=m) for k, m in enumerate(flags)])
    assert evs(events) == [
        (EventKind.SPOOFING, at(30), None, False, RULE_MOCK, None),
        (EventKind.SPOOFING, at(150), None, False, RULE_MOCK, None),
    ]
    assert events[0].reason.membership == Membership.UNDECIDABLE
    assert p.states["dev-1"].mock_flagged is True


def test_impossible_speed_between_fixes_is_suspected_spoofing():
    subj = Subject(1, CITY_ID, rules=RULES)
    p = Pipeline({"dev-1": subj})
    a, b = pos(CITY, 0, 0), pos(CITY, 10000, 0)
    c, d = pos(CITY, 11900, 0), pos(CITY, 21900, 0)
    assert p.live([fx(0, a)]) == []
    events = p.live([fx(60, b)])  # 10 km in a minute
    assert evs(events) == [(EventKind.SPOOFING, at(60), at(0), False, RULE_SPEED, None)]
    detail = dict(events[0].reason.detail)
    # (The engine measures jumps on a sphere: within 0.5 % of the ellipsoidal distance.)
    assert detail["speed_mps"] == pytest.approx((10000 - 20) / 60, rel=0.005)
    assert detail["jump_m"] == pytest.approx(10000, rel=0.005)
    assert p.live([fx(70, c)]) == []  # 190 m/s, but a jump under 2 km (urban canyon)
    assert p.live([fx(270, d)]) == []  # 10 km in 200 s: 50 m/s is a train, not a spoof
    # Across an undecidable fix the previous usable fix is the reference.
    assert p.live([fx(280, a, accuracy=900.0)]) == []
    assert evs(p.live([fx(300, a)])) == [(EventKind.SPOOFING, at(300), at(270), False,
                                          RULE_SPEED, None)]


def test_long_run_of_identical_fixes_is_suspected_spoofing():
    spot = pos(HOME, 123.4, 56.7)
    p = Pipeline({"dev-1": home_subject(), "slow": home_subject()})
    # Every 10 min: twelve identical fixes span only 110 min; the thirteenth makes two hours.
    events = p.live([fx(600 * k, spot) for k in range(13)])
    assert evs(events) == [(EventKind.SPOOFING, at(7200), at(0), False, RULE_FROZEN, None)]
    assert dict(events[0].reason.detail)["identical_fixes"] == 13
    assert p.live([fx(600 * k, spot) for k in range(13, 20)]) == []  # once per run
    # One changed digit starts a new run.
    moved = (spot[0] + 1e-7, spot[1])
    assert p.live([fx(12000, moved)]) == []
    st = p.states["dev-1"]
    assert (st.same_count, st.same_since, st.frozen_flagged) == (1, at(12000), False)
    # Every 700 s: the twelfth fix spans 7700 s and is the one that counts.
    events = p.live([fx(700 * k, spot, "slow") for k in range(12)])
    assert evs(events) == [(EventKind.SPOOFING, at(7700), at(0), False, RULE_FROZEN, None)]


def test_spoofing_signals_never_discard_the_fix():
    p = Pipeline({"mock": home_subject(), "jump": home_subject(), "frozen": home_subject()})
    # Mock-location fixes outside still count towards the exit.
    events = p.live([fx(0, IN, "mock")] + [fx(t, OUT, "mock", mock=True)
                                            for t in (100, 130, 160, 190)])
    assert evs(events) == [
        (EventKind.SPOOFING, at(100), None, False, RULE_MOCK, None),
        (EventKind.AREA_EXIT, at(190), at(100), False, RULE_AREA_EXIT, HOME_ID),
    ]
    assert p.states["mock"].last == LastFix(at(190), *OUT, 10.0)
    # A fix after an impossible jump is decided where it says it is (and becomes the reference).
    far = pos(HOME, 11000, 0)
    events = p.live([fx(0, IN, "jump"), fx(60, far, "jump"), fx(90, pos(HOME, 11000, 10), "jump")])
    assert evs(events) == [
        (EventKind.SPOOFING, at(60), at(0), False, RULE_SPEED, None),
        (EventKind.AREA_EXIT, at(90), at(60), False, RULE_AREA_EXIT, HOME_ID),
    ]
    assert p.states["jump"].last == LastFix(at(90), *pos(HOME, 11000, 10), 10.0)
    # Identical fixes outside: flagged, and still an exit.
    events = p.live([fx(0, IN, "frozen")] + [fx(600 * k, OUT, "frozen") for k in range(1, 14)])
    assert evs(events) == [
        (EventKind.AREA_EXIT, at(1800), at(600), False, RULE_AREA_EXIT, HOME_ID),
        (EventKind.SPOOFING, at(7800), at(600), False, RULE_FROZEN, None),
    ]
    assert all(d.evaluated and d.membership == Membership.OUTSIDE
               for r in p.results[-13:] for d in r.decisions)


def test_deep_outside_evidence_decides_faster():
    deep = pos(HOME, 1600, 0)  # 600 m out: beyond a reflection's 500 m reach, not 1.5 times
    shallow = pos(HOME, 1400, 0)  # 400 m out: a reflection could put a fix there
    p = Pipeline({d: home_subject() for d in ("deep", "shallow", "mixed")})
    # Two deep fixes weigh enough, moments apart.
    events = p.live([fx(0, IN, "deep"), fx(100, deep, "deep"), fx(110, deep, "deep")])
    assert evs(events) == [(EventKind.AREA_EXIT, at(110), at(100), False, RULE_AREA_EXIT,
                            HOME_ID)]
    assert [e["weight"] for e in dict(events[0].reason.detail)["evidence"]] == [0.75, 0.75]
    # Shallow evidence needs the count and the span.
    assert p.live([fx(0, IN, "shallow"), fx(100, shallow, "shallow"),
                   fx(130, shallow, "shallow"), fx(160, shallow, "shallow")]) == []
    assert evs(p.live([fx(190, shallow, "shallow")])) == [
        (EventKind.AREA_EXIT, at(190), at(100), False, RULE_AREA_EXIT, HOME_ID)]
    # One deep fix and a shallow one: the weight decides (0.75 + 0.25), before any span.
    assert p.live([fx(0, IN, "mixed"), fx(100, deep, "mixed")]) == []
    assert evs(p.live([fx(110, shallow, "mixed")])) == [
        (EventKind.AREA_EXIT, at(110), at(100), False, RULE_AREA_EXIT, HOME_ID)]
    # Just short of the reach (499 m beyond) is shallow: two such fixes decide nothing.
    almost = pos(HOME, 1499, 0)
    p2 = Pipeline({"dev-1": home_subject()})
    assert p2.live([fx(0, IN), fx(100, almost), fx(110, almost)]) == []


# --- coordinate systems -------------------------------------------------------------------------


def test_gcj02_and_bd09_fixes_are_compared_in_wgs84():
    # A person 150 m inside the east border. Their phone's map SDK reports GCJ-02 or BD-09,
    # offsets of 500 m to 1.2 km that would put them outside if read as WGS-84.
    true = pos(HOME, 850, 0)
    gcj = tuple(float(v) for v in wgs84_to_gcj02(*true))
    bd = tuple(float(v) for v in from_wgs84(*true, CRS.BD09))
    assert HOME.signed_distance(*gcj) > 300 and HOME.signed_distance(*bd) > 1000
    subjects = {d: home_subject() for d in ("gcj", "bd", "mislabelled")}
    p = Pipeline(subjects)
    for k in range(6):
        t = 60 * k
        p.batch([fx(t, gcj, "gcj", crs=CRS.GCJ02), fx(t, bd, "bd", crs=CRS.BD09),
                 fx(t, gcj, "mislabelled", crs=CRS.WGS84)])
    assert [(e.device_id, *ev(e)) for e in p.events] == [
        ("mislabelled", EventKind.AREA_EXIT, at(120), at(0), False, RULE_AREA_EXIT, HOME_ID)]
    for r in p.results:
        by_dev = {d.fix.device_id: d for d in r.decisions}
        for dev in ("gcj", "bd"):
            assert by_dev[dev].membership == Membership.INSIDE
            assert (by_dev[dev].lon, by_dev[dev].lat) == pytest.approx(true, abs=1e-7)
        assert by_dev["mislabelled"].membership == Membership.OUTSIDE
    # A zone drawn on a GCJ-02 map, and a BD-09 fix 30 m inside its border: inside, in WGS-84.
    gcj_ring = [[float(v) for v in wgs84_to_gcj02(x, y)] for x, y in HOME.geom_wgs84.exterior.coords]
    drawn = parse_zone_geojson({"type": "Polygon", "coordinates": [gcj_ring]}, CRS.GCJ02)
    zone = PreparedZone(99, 1, ZoneKind.HOME_AREA, drawn)
    near = pos(HOME, 0, 970)
    bd_near = tuple(float(v) for v in from_wgs84(*near, CRS.BD09))
    res = evaluate([fx(0, bd_near, crs=CRS.BD09, accuracy=20.0)], {"dev-1": Subject(1, 99)},
                   {99: zone}, {}, at(1))
    assert res.decisions[0].membership == Membership.INSIDE
    assert zone.signed_distance(res.decisions[0].lon, res.decisions[0].lat) == pytest.approx(
        -30, abs=0.05)


# --- rule profiles ------------------------------------------------------------------------------


def test_rules_come_from_the_level_and_person_overrides():
    strict = DEFAULT_PROFILE.rules_for("strict")
    lenient = DEFAULT_PROFILE.rules_for("lenient", {"exit_fixes": 5.0, "max_accuracy_m": 100})
    assert (strict.shallow_span_s, strict.exit_span_s) == (480.0, 60.0)
    normal = Rules(away_m=50.0, away_fixes=3, away_speed_mps=2.0)
    assert DEFAULT_PROFILE.rules_for("normal") == normal
    assert DEFAULT_PROFILE.rules_for("no-such-level") == normal  # normal's
    assert (lenient.exit_fixes, lenient.exit_span_s, lenient.max_accuracy_m) == (5, 180.0, 100.0)
    assert isinstance(lenient.exit_fixes, int) and isinstance(lenient.max_accuracy_m, float)
    assert lenient.undecidable_fixes == 8  # the level's own value survives the override
    for bad, word in (({"exit_fixs": 3}, "exit_fixs"), ({"exit_fixes": -1}, "exit_fixes"),
                      ({"exit_span_s": "60"}, "exit_span_s"), ({"late_after_s": True},
                                                               "late_after_s")):
        with pytest.raises(ValueError, match=word):
            validate_overrides(bad)
        with pytest.raises(ValueError, match=word):
            DEFAULT_PROFILE.rules_for("normal", bad)
    label = DEFAULT_PROFILE.label
    assert label == "national-2020@4"

    # The same 8 minutes of shallow outside fixes: an exit for a strict supervisee, not for a
    # normal one (10 minutes) nor a lenient one (15). Requests for a fix are left aside here.
    series = [fx(0, IN), fx(100, OUT), fx(340, OUT), fx(580, OUT)]
    subjects = {
        "strict": Subject(1, HOME_ID, rules=strict, profile=label),
        "normal": Subject(2, HOME_ID, rules=DEFAULT_PROFILE.rules_for("normal"), profile=label),
        "picky": Subject(3, HOME_ID, rules=lenient, profile=label),
    }
    p = Pipeline(subjects)
    for dev in subjects:
        p.live([replace(f, device_id=dev) for f in series])
    assert [(e.device_id, *ev(e)) for e in p.events if e.kind == EventKind.AREA_EXIT] == [
        ("strict", EventKind.AREA_EXIT, at(580), at(100), False, RULE_AREA_EXIT, HOME_ID)]
    assert dict(p.events[-1].reason.detail)["profile"] == label
    # The person override of max_accuracy_m: 150 m fixes decide nothing for "picky".
    far = pos(HOME, 1500, 0)
    p.live([fx(200, far, "normal", accuracy=150.0), fx(200, far, "picky", accuracy=150.0)])
    assert {d.fix.device_id: d.membership for r in p.results[-2:] for d in r.decisions} == {
        "normal": Membership.OUTSIDE, "picky": Membership.UNDECIDABLE}


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_person_overrides_refuse_non_finite_thresholds(value: float):
    # NaN makes every comparison false: max_accuracy_m=NaN silently turns every fix undecidable,
    # exit_span_s=inf means no exit is ever declared. Neither is "a non-negative number".
    for key in ("max_accuracy_m", "exit_span_s"):
        with pytest.raises(ValueError, match=key):
            validate_overrides({key: value})


# --- stored state -------------------------------------------------------------------------------


def test_state_round_trips_through_its_stored_form():
    st = DeviceState(
        last_fix_time=at(500),
        area=Track(AreaStatus.OUTSIDE, at(100), 2, at(400), None, 2, at(300)),
        zones=((CURFEW.key, Track(AreaStatus.INSIDE, at(50), 0, None, -WS)),
               (f"x{EXCL_ID}", Track(AreaStatus.OUTSIDE, at(10), 1, at(480), at(470), 0, None, True))),
        last=LastFix(at(490), *OUT, 12.5),
        undecidable=3, undecidable_since=at(495), rollcall_asked=True,
        same_key=(OUT[0], OUT[1], None), same_count=4, same_since=at(300), frozen_flagged=True,
        mock_flagged=True,
    )
    stored = orjson.loads(orjson.dumps(st.to_dict()))  # as the pipeline keeps it in Redis
    assert DeviceState.from_dict(stored) == st
    assert DeviceState.from_dict(orjson.loads(orjson.dumps(DeviceState().to_dict()))) == (
        DeviceState())
    assert DeviceState.from_dict({}) == DeviceState()

    # A device whose state goes through the store between every batch decides exactly like one
    # kept in memory.
    subj = {"dev-1": Subject(1, HOME_ID, exclusions=(Exclusion(EXCL_ID, 100.0),),
                             curfews=(CURFEW,), rules=RULES)}
    series = ([cfx(local(1, 21, 50) + 30 * k, AWAY) for k in range(5)]
              + [cfx(local(1, 22, 10) + 30 * k, pos(EXCL, -150, 0)) for k in range(3)]
              + [cfx(local(1, 22, 20) + 30 * k, OUT, accuracy=300.0) for k in range(7)]
              + [cfx(local(1, 22, 40) + 30 * k, OUT) for k in range(5)])
    memory, stored_p = Pipeline(subj), Pipeline(subj)
    for f in series:
        memory.live([f])
        stored_p.live([f])
        stored_p.states = {d: DeviceState.from_dict(orjson.loads(orjson.dumps(s.to_dict())))
                           for d, s in stored_p.states.items()}
    assert stored_p.states == memory.states
    assert [ev(e) for e in stored_p.events] == [ev(e) for e in memory.events]
    # Every kind of track and counter took part.
    assert [(e.kind, e.fix_time, e.since) for e in memory.events] == [
        (EventKind.EXCLUSION_APPROACH, local(1, 22, 10), None),
        (EventKind.CURFEW_BREACH, local(1, 22, 10), WS),  # out since 21:50: since the window
        (EventKind.ROLL_CALL_REQUEST, local(1, 22, 22, 30), local(1, 22, 20)),
        (EventKind.EXCLUSION_CROSSING, local(1, 22, 40), local(1, 22, 11)),
        (EventKind.AREA_EXIT, local(1, 22, 41, 30), local(1, 22, 40)),
    ]


# --- urban-canyon reflections ------------------------------------------------------------------


def test_exit_that_begins_with_a_jump_the_reported_speed_cannot_explain_needs_more_evidence():
    # Standing still 200 m inside (Doppler speed 0), then reflections put fixes 150 m outside:
    # a normal exit would be declared on the third (90 s); this one needs 5 over 3 minutes.
    p = Pipeline({"dev-1": home_subject()})
    p.live([fx(-30, pos(HOME, 805, 0), speed=0.0), fx(0, pos(HOME, 800, 0), speed=0.0)])
    early = p.live([fx(60 * k, pos(HOME, 1150, 0), speed=0.0) for k in range(1, 5)])
    assert early == []
    [exit_] = p.live([fx(300, pos(HOME, 1150, 0), speed=0.0)])
    assert exit_.kind == EventKind.AREA_EXIT
    assert dict(exit_.reason.detail)["began_with_unexplained_jump"] is True


def test_a_jump_of_a_still_phone_without_speed_is_suspect_too():
    # No speed: two fixes at one place say the phone was still; a 350 m jump is a reflection's.
    p = Pipeline({"dev-1": home_subject()})
    p.live([fx(0, pos(HOME, 800, 0)), fx(60, pos(HOME, 805, 0))])
    assert p.live([fx(60 * k, pos(HOME, 1150, 0)) for k in range(2, 6)]) == []
    [exit_] = p.live([fx(360, pos(HOME, 1150, 0))])
    assert dict(exit_.reason.detail)["began_with_unexplained_jump"] is True
    first = dict(exit_.reason.detail)["evidence"][0]
    assert first["weight"] == pytest.approx(RULES.shallow_weight * RULES.jump_factor)
    # The same place reached by a phone that was moving is an ordinary streak.
    q = Pipeline({"dev-1": home_subject()})
    q.live([fx(0, pos(HOME, 600, 0)), fx(60, pos(HOME, 800, 0))])
    assert [e.kind for e in q.live([fx(60 * k, pos(HOME, 1150, 0)) for k in range(2, 5)])] == [
        EventKind.AREA_EXIT]


def test_arriving_by_train_and_standing_still_outside_is_not_a_reflection():
    # Moving fast inside, then standing 150 m outside: the speed on arrival is zero, but the
    # phone was moving before, so the streak is an ordinary one (3 fixes over 90 s here).
    p = Pipeline({"dev-1": home_subject()})
    p.live([fx(0, pos(HOME, -200, 0), speed=12.0), fx(60, pos(HOME, 500, 0), speed=12.0)])
    events = p.live([fx(60 * k, pos(HOME, 1150, 0), speed=0.0) for k in range(2, 5)])
    assert [e.kind for e in events] == [EventKind.AREA_EXIT]
    assert dict(events[0].reason.detail)["began_with_unexplained_jump"] is False


def test_a_real_departure_at_its_reported_speed_is_not_suspect():
    # Walking out at 1.5 m/s (90 m a minute): the move is what the speed says.
    p = Pipeline({"dev-1": home_subject()})
    p.live([fx(0, pos(HOME, 960, 0), speed=1.5, accuracy=5)])
    events = p.live([fx(60 * k, pos(HOME, 960 + 90 * k, 0), speed=1.5, accuracy=5)
                     for k in range(1, 4)])
    assert [e.kind for e in events] == [EventKind.AREA_EXIT]
    assert dict(events[0].reason.detail)["began_with_unexplained_jump"] is False


def test_lifting_one_curfew_never_hands_its_state_to_another():
    # Home curfew 22:00-06:00 (the person is out at work) and work curfew 09:00-17:00 (inside).
    work_zone = RES_ID
    home_cu, work_cu = Curfew(HOME_ID, "22:00", "06:00"), Curfew(work_zone, "09:00", "17:00")
    both = {"dev-1": home_subject(curfews=(home_cu, work_cu))}
    p = Pipeline(both)
    inside_work = pos(RES, 0, 0)
    p.live([fx(k * 60, inside_work) for k in range(4)])
    assert p.states["dev-1"].zone(work_cu.key).status == AreaStatus.INSIDE
    # The officer lifts the home curfew: only the work curfew remains, with its own state.
    p.subjects = {"dev-1": home_subject(curfews=(work_cu,))}
    assert p.states["dev-1"].zone(work_cu.key).status == AreaStatus.INSIDE
