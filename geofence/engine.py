"""The decision engine: (state, fixes) -> (new state, decisions, events), vectorised per batch.

Kept in two steps after Traccar: the vectorised part answers "where is each fix relative to its
zones" (one shapely call per zone for the whole batch), the fold answers "what changed since the
last fix" per device in fix-time order. Both are pure; `now` is a parameter.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from geofence.crs import CRS_CODE, to_wgs84_mixed
from geofence.model import (
    AreaStatus,
    Decision,
    DeviceState,
    Event,
    EventKind,
    Evidence,
    Fix,
    LastFix,
    Membership,
    Reason,
    Subject,
    Track,
)
from geofence.profile import Rules
from geofence.zones import (
    M_BORDER,
    M_INSIDE,
    M_OUTSIDE,
    M_UNDECIDABLE,
    MEMBERSHIPS,
    PreparedZone,
)

RULE_AREA_EXIT = "area_exit.accuracy_circle_wholly_outside"
RULE_AREA_RETURN = "area_return.accuracy_circle_wholly_inside"
RULE_EXCLUSION_ENTRY = "exclusion_entry.accuracy_circle_wholly_inside"
RULE_EXCLUSION_APPROACH = "exclusion_approach.within_buffer"
RULE_EXCLUSION_CROSSING = "exclusion_crossing.segment_through_zone"
RULE_EXCLUSION_LEFT = "exclusion_left.accuracy_circle_wholly_outside"
RULE_CURFEW = "curfew_breach.outside_during_window"
RULE_CURFEW_AT_START = "curfew_breach.outside_when_window_opened"
RULE_MOCK = "spoofing.mock_location_flag"
RULE_SPEED = "spoofing.impossible_speed"
RULE_FROZEN = "spoofing.identical_fixes"
RULE_UNDECIDABLE = "roll_call.undecidable_streak"
RULE_CONFIRM = "confirm.area_exit_suggestive"
RULE_FOLLOW_UP = "confirm.area_exit_follow_up"
RULE_CURFEW_UNKNOWN = "roll_call.curfew_unknown"

_EARTH_R = 6_371_008.8
_SPEED_SPAN_S = 120.0
_ANSWER_SLACK_S = 30.0  # a phone's clock may run a little behind the server's
_REPEAT_SLACK_M = 10.0  # a repeat lies within both circles (+ this): a walker is not one
_MIN_GAP_S = 45.0  # fixes closer in time than this are no reporting rhythm
_UNUSABLE_PROVIDERS = frozenset({"cell"})
# Positions from radio maps (Wi-Fi, cell towers) rather than satellites: wrong by kilometres at
# times, whatever accuracy they claim, so they never decide an exit alone.
_NETWORK_PROVIDERS = frozenset({"network", "wifi", "cell"})


@dataclass
class BatchResult:
    """Everything the engine concluded from one batch."""

    decisions: list[Decision] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    states: dict[str, DeviceState] = field(default_factory=dict)  # only devices whose state changed

    def carry(self, states: Mapping[str, DeviceState]) -> dict[str, DeviceState]:
        """The caller's states with this batch's changes applied (a new dict; `states` is kept)."""
        return {**states, **self.states}


def _haversine(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (math.sin((p2 - p1) / 2) ** 2
         + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2)
    return 2 * _EARTH_R * math.asin(math.sqrt(a) if a < 1.0 else 1.0)


def _haversine_np(lon1: np.ndarray, lat1: np.ndarray, lon2: np.ndarray, lat2: np.ndarray
                  ) -> np.ndarray:
    """`_haversine` over arrays."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    a = (np.sin((p2 - p1) / 2) ** 2
         + np.cos(p1) * np.cos(p2) * np.sin(np.radians(lon2 - lon1) / 2) ** 2)
    return 2 * _EARTH_R * np.arcsin(np.sqrt(np.minimum(a, 1.0)))


def is_usable(fix: Fix, rules: Rules) -> bool:
    """A fix that can decide something: a real accuracy within the limit, not cell-only.

    Accuracy 0 is what Android reports for "no accuracy": it decides nothing either.
    """
    a = fix.accuracy
    return (a is not None and math.isfinite(a) and 0 < a <= rules.max_accuracy_m
            and fix.provider not in _UNUSABLE_PROVIDERS)


def step(
    track: Track, m: Membership, t: float, bad: Membership, n_bad: int, span_bad: float,
    n_good: int, span_good: float, deep: bool = False, suspect: bool = False,
    n_suspect: int = 6, span_suspect: float = 300.0,
) -> tuple[Track, str | None]:
    """Debounce one area: N pieces of evidence spanning T flip the status ("bad"/"good").

    Border and undecidable fixes neither count nor break a streak. Two "deep" pieces in a row
    (the accuracy circle a kilometre beyond the border) spanning a third of T are enough: no
    GPS error of a phone that reports its accuracy goes that far twice. A streak towards "bad"
    that began with a jump the phone's own reported speed cannot explain (`suspect`: the
    signature of an urban-canyon reflection) needs `n_suspect` fixes spanning `span_suspect`.
    """
    good = Membership.INSIDE if bad == Membership.OUTSIDE else Membership.OUTSIDE
    if m != bad and m != good:
        return track, None
    bad_st = AreaStatus.OUTSIDE if bad == Membership.OUTSIDE else AreaStatus.INSIDE
    good_st = AreaStatus.INSIDE if bad_st == AreaStatus.OUTSIDE else AreaStatus.OUTSIDE
    towards_bad = track.status != bad_st
    confirms = (m == bad) == towards_bad
    if not confirms:  # evidence for the current status: any streak against it is broken
        if track.status == AreaStatus.UNKNOWN:
            return Track(good_st, t, 0, None, track.flag), None
        if track.pending:
            return Track(track.status, track.since, 0, None, track.flag), None
        return track, None
    pending = track.pending + 1
    since = track.pending_since if track.pending and track.pending_since is not None else t
    is_suspect = towards_bad and (track.suspect or (track.pending == 0 and suspect))
    deep_count = track.deep_count + 1 if deep else 0
    deep_since = (track.deep_since if track.deep_count and track.deep_since is not None
                  else t) if deep else None
    n, span = (n_bad, span_bad) if towards_bad else (n_good, span_good)
    flip = pending >= n and t - since >= span
    if is_suspect:
        flip = pending >= max(n, n_suspect) and t - since >= max(span, span_suspect)
    if not flip and deep_since is not None and deep_count >= 2 and t - deep_since >= span / 3:
        flip = True
    if flip:
        return Track(bad_st if towards_bad else good_st, since, 0, None, track.flag), (
            "bad" if towards_bad else "good")
    return Track(track.status, track.since, pending, since, track.flag, deep_count, deep_since,
                 is_suspect), None


@dataclass
class _Prepared:
    """Vectorised facts about every fix of the batch, computed before the fold.

    What the fold reads one fix at a time is a plain list: indexing a Python list is several
    times cheaper than indexing a numpy array (`lon`/`lat` stay arrays too, for the
    vectorised distance look-ups of `_Fold.beyond`).
    """

    order: list[int]
    lon: np.ndarray
    lat: np.ndarray
    lon_l: list[float]
    lat_l: list[float]
    usable: list[bool]
    late: list[bool]
    allowed: list[int]  # membership code in the allowed area
    allowed_of: dict[int, list[int]]  # allowed zone ids of each decidable fix
    beyond: np.ndarray  # metres beyond the allowed area, measured ahead where likely needed
    zone_memb: dict[tuple[int, int], int]  # (fix, zone) -> membership code (exclusions, curfews)
    near: dict[tuple[int, int], bool]  # exclusion buffer: circle within the buffer
    far: dict[tuple[int, int], bool]  # exclusion buffer: circle wholly beyond the buffer
    crossing: dict[tuple[int, int], bool]  # segment from the previous usable fix crosses the zone
    prev: dict[int, LastFix]  # previous usable fix of each usable fix
    prev_d: list[float]  # metres from that previous fix (NaN: none), one vectorised call
    fixpos: dict[int, LastFix]  # each usable fix as a LastFix


_DEFAULT_RULES = Rules()
_ZoneTasks = dict[int, tuple[list[int], list[float]]]  # zone -> (fix indices, radii)


def _task(tasks: _ZoneTasks, zid: int, i: int, r: float) -> None:
    t = tasks.get(zid)
    if t is None:
        tasks[zid] = ([i], [r])
    else:
        t[0].append(i)
        t[1].append(r)


def _memberships(
    zones: Mapping[int, PreparedZone], tasks: _ZoneTasks, lon: np.ndarray, lat: np.ndarray,
) -> Iterator[tuple[int, list[int], np.ndarray, np.ndarray]]:
    """(zone, fix indices, the same as an array, membership codes): one call per zone."""
    for zid, (idx_l, acc_l) in tasks.items():
        zone = zones.get(zid)
        if zone is None or not idx_l:
            continue
        idx = np.asarray(idx_l, dtype=np.int64)
        yield zid, idx_l, idx, zone.membership(lon[idx], lat[idx],
                                              np.asarray(acc_l, dtype=np.float64))


def _zone_codes(
    zones: Mapping[int, PreparedZone], tasks: _ZoneTasks, lon: np.ndarray, lat: np.ndarray,
) -> dict[tuple[int, int], int]:
    out: dict[tuple[int, int], int] = {}
    for zid, idx_l, _, codes in _memberships(zones, tasks, lon, lat):
        out.update(zip([(i, zid) for i in idx_l], codes.tolist(), strict=True))
    return out


def _allowed_codes(
    n: int, zones: Mapping[int, PreparedZone], tasks: _ZoneTasks, n_ids: np.ndarray,
    lon: np.ndarray, lat: np.ndarray,
) -> np.ndarray:
    """Membership of each fix in the union of its allowed zones, one call per zone: inside any
    is inside; a zone we cannot see makes the rest prove nothing; outside all is outside."""
    seen = np.zeros(n, dtype=np.int16)
    outside = np.zeros(n, dtype=np.int16)
    inside = np.zeros(n, dtype=bool)
    for _, _, idx, codes in _memberships(zones, tasks, lon, lat):
        np.add.at(seen, idx, 1)
        np.add.at(outside, idx, codes == M_OUTSIDE)
        inside[idx[codes == M_INSIDE]] = True
    allowed = np.full(n, M_BORDER, dtype=np.int8)
    allowed[outside == seen] = M_OUTSIDE
    allowed[seen < n_ids] = M_UNDECIDABLE
    allowed[seen == 0] = M_UNDECIDABLE
    allowed[inside] = M_INSIDE
    return allowed


def _beyond(
    fixes: Sequence[Fix], zones: Mapping[int, PreparedZone], states: Mapping[str, DeviceState],
    allowed: np.ndarray, allowed_of: Mapping[int, list[int]], lon: np.ndarray, lat: np.ndarray,
) -> np.ndarray:
    """Distance beyond the allowed area of the wholly-outside fixes of devices not already
    outside (those may start or extend an exit streak), one vectorised call per zone."""
    out = np.full(len(fixes), np.nan)
    tasks: dict[int, list[int]] = defaultdict(list)
    for i in np.flatnonzero(allowed == M_OUTSIDE).tolist():
        st = states.get(fixes[i].device_id)
        if st is not None and st.area.status == AreaStatus.OUTSIDE:
            continue
        for z in allowed_of.get(i, ()):
            tasks[z].append(i)
    for z, idx_list in tasks.items():
        zone = zones.get(z)
        if zone is None:
            continue
        idx = np.asarray(idx_list, dtype=np.int64)
        d = zone.distance(lon[idx], lat[idx])
        cur = out[idx]
        out[idx] = np.where(np.isnan(cur) | (d < cur), d, cur)
    return out


def _prepare(
    fixes: Sequence[Fix], subjects: Mapping[str, Subject], zones: Mapping[int, PreparedZone],
    states: Mapping[str, DeviceState],
) -> _Prepared:
    n = len(fixes)
    dev = [f.device_id for f in fixes]
    order = [i for _, _, i in sorted(zip(dev, [f.time for f in fixes], range(n), strict=True))]
    codes = np.fromiter((CRS_CODE[f.crs] for f in fixes), dtype=np.int8, count=n)
    lon, lat = to_wgs84_mixed(
        np.fromiter((f.lon for f in fixes), dtype=np.float64, count=n),
        np.fromiter((f.lat for f in fixes), dtype=np.float64, count=n),
        codes,
    )
    lon_l, lat_l = lon.tolist(), lat.tolist()
    usable_l = [False] * n
    late_l = [False] * n
    n_ids = np.zeros(n, dtype=np.int16)
    prev: dict[int, LastFix] = {}
    fixpos: dict[int, LastFix] = {}
    allowed_tasks: _ZoneTasks = {}
    zone_tasks: _ZoneTasks = {}
    allowed_of: dict[int, list[int]] = {}
    guarded: list[int] = []  # decidable fixes of people with exclusion zones
    cur: str | None = None
    subj: Subject | None = None
    rules = _DEFAULT_RULES
    seen = -math.inf
    p: LastFix | None = None
    fixed_ids: list[int] | None = None  # allowed zones of a person without permits
    for i in order:
        f = fixes[i]
        d = dev[i]
        if d != cur:
            cur = d
            subj = subjects.get(d)
            st = states.get(d)
            seen = st.last_fix_time if st else -math.inf
            p = st.last if st else None
            rules = subj.rules if subj else _DEFAULT_RULES
            fixed_ids = subj.allowed_zone_ids(0.0) if subj and not subj.permits else None
        a = f.accuracy
        ok = usable_l[i] = is_usable(f, rules)  # late fixes too: the caller counts them as located
        t = f.time
        if t <= seen:
            late_l[i] = True
            continue
        seen = t
        if not ok:
            continue
        if p is not None:
            prev[i] = p
        p = fixpos[i] = LastFix(t, lon_l[i], lat_l[i], float(a))  # type: ignore[arg-type]
        if subj is None:
            continue
        ids = fixed_ids if fixed_ids is not None else subj.allowed_zone_ids(t)
        allowed_of[i] = ids
        n_ids[i] = len(ids)
        for zid in ids:
            _task(allowed_tasks, zid, i, a)  # type: ignore[arg-type]
        if subj.exclusions:
            guarded.append(i)
            for ex in subj.exclusions:
                _task(zone_tasks, ex.zone_id, i, a)  # type: ignore[arg-type]
        for cu in subj.curfews:
            _task(zone_tasks, cu.zone_id, i, a)  # type: ignore[arg-type]

    allowed = _allowed_codes(n, zones, allowed_tasks, n_ids, lon, lat)
    beyond = _beyond(fixes, zones, states, allowed, allowed_of, lon, lat)
    zone_memb = _zone_codes(zones, zone_tasks, lon, lat)
    near: dict[tuple[int, int], bool] = {}
    far: dict[tuple[int, int], bool] = {}
    near_tasks: _ZoneTasks = {}
    far_tasks: _ZoneTasks = {}
    cross_candidates: dict[int, list[int]] = defaultdict(list)
    for i in guarded:
        subj = subjects[dev[i]]
        a = fixpos[i].accuracy
        for ex in subj.exclusions:
            if ex.buffer_m > 0:
                if ex.buffer_m > a:
                    _task(near_tasks, ex.zone_id, i, ex.buffer_m - a)
                _task(far_tasks, ex.zone_id, i, ex.buffer_m + a)
            pp = prev.get(i)
            if pp is not None and fixes[i].time - pp.time <= subj.rules.segment_max_gap_s:
                cross_candidates[ex.zone_id].append(i)
    for (i, z), c in _zone_codes(zones, near_tasks, lon, lat).items():
        near[(i, z)] = c != M_OUTSIDE
    for (i, z), c in _zone_codes(zones, far_tasks, lon, lat).items():
        far[(i, z)] = c == M_OUTSIDE
    crossing: dict[tuple[int, int], bool] = {}
    for zid, idx_list in cross_candidates.items():
        zone = zones.get(zid)
        if zone is None:
            continue
        idx = np.asarray(idx_list)
        p_lon = np.array([prev[i].lon for i in idx_list])
        p_lat = np.array([prev[i].lat for i in idx_list])
        margin = np.maximum(np.array([fixpos[i].accuracy for i in idx_list]),
                            np.array([prev[i].accuracy for i in idx_list]))
        crossing.update(zone.segments_cross(p_lon, p_lat, lon[idx], lat[idx], margin, idx))
    prev_d = np.full(n, np.nan)
    if prev:
        idx = np.fromiter(prev, dtype=np.int64, count=len(prev))
        plon = np.fromiter((q.lon for q in prev.values()), dtype=np.float64, count=len(prev))
        plat = np.fromiter((q.lat for q in prev.values()), dtype=np.float64, count=len(prev))
        prev_d[idx] = _haversine_np(plon, plat, lon[idx], lat[idx])
    return _Prepared(order, lon, lat, lon_l, lat_l, usable_l, late_l, allowed.tolist(),
                     allowed_of, beyond, zone_memb, near, far, crossing, prev, prev_d.tolist(),
                     fixpos)


class _Fold:
    """Per-device fold over the prepared facts, collecting events."""

    def __init__(self, fixes: Sequence[Fix], subjects: Mapping[str, Subject],
                 zones: Mapping[int, PreparedZone], pre: _Prepared, now: float,
                 retro: bool) -> None:
        self.fixes, self.subjects, self.zones, self.pre = fixes, subjects, zones, pre
        self.now, self.retro = now, retro
        self.events: list[Event] = []

    def beyond(self, i: int) -> float:
        """Metres from wholly-outside fix i to the nearest allowed zone: measured ahead for the
        fixes `_prepare` expected to need it, here for the few it did not (kept in `pre`)."""
        d = float(self.pre.beyond[i])
        if math.isnan(d):
            lon, lat = self.pre.lon[i:i + 1], self.pre.lat[i:i + 1]
            d = min((float(self.zones[z].distance(lon, lat)[0])
                     for z in self.pre.allowed_of.get(i, ()) if z in self.zones), default=math.nan)
            self.pre.beyond[i] = d
        return d

    def deep(self, i: int, rules: Rules) -> bool:
        """Outside the allowed area by more than accuracy + `deep_margin_m` (curfew evidence)."""
        if self.pre.allowed[i] != M_OUTSIDE:
            return False
        return self.beyond(i) >= float(self.fixes[i].accuracy or 0.0) + rules.deep_margin_m

    def emit(self, kind: EventKind, i: int, rule: str, zone_id: int | None, m: Membership,
             since: float | None = None, distance: float | None = None, **detail: object) -> None:
        f = self.fixes[i]
        lon, lat = self.pre.lon_l[i], self.pre.lat_l[i]
        if distance is None and zone_id is not None and zone_id in self.zones:
            distance = self.zones[zone_id].signed_distance(lon, lat)
        subj = self.subjects.get(f.device_id)
        rules = subj.rules if subj else _DEFAULT_RULES
        if subj is not None and subj.profile:
            detail["profile"] = subj.profile
        late = self.retro or (self.now - f.time) > rules.late_after_s
        reason = Reason(rule, zone_id, m, distance, f.accuracy, tuple(sorted(detail.items())))
        self.events.append(Event(kind, f.device_id, f.time, lon, lat, reason, since, late,
                                 self.now, self.retro))

    def fix(self, st: DeviceState, i: int) -> None:
        """Fold fix i into the working state `st` (mutated in place)."""
        f = self.fixes[i]
        subj = self.subjects.get(f.device_id)
        rules = subj.rules if subj else _DEFAULT_RULES
        self._rhythm(st, f.time, rules)
        st.last_fix_time = f.time
        self._spoofing(st, i, rules)
        if not self.pre.usable[i] or subj is None:
            self._undecidable(st, i, rules)
            return
        st.undecidable, st.undecidable_since, st.rollcall_asked = 0, None, False
        self._speed(i, rules)
        self._area(st, i, subj, rules)
        if subj.exclusions:
            self._exclusions(st, i, subj, rules)
        if subj.curfews:
            self._curfews(st, i, subj, rules)
        st.before = st.last
        st.last = self.pre.fixpos[i]

    @staticmethod
    def _rhythm(st: DeviceState, t: float, rules: Rules) -> None:
        """Learn the phone's usual time between reports: answers to requests and moments-apart
        fixes are no rhythm, and a missed report (a gap well over the usual) moves it little."""
        dt = t - st.last_fix_time
        if not _MIN_GAP_S <= dt < math.inf:
            return
        area = st.area
        if area.asked is not None or area.followup is not None:
            for a in (area.asked, area.followup):
                if a is not None and a - _ANSWER_SLACK_S <= t <= a + rules.confirm_window_s:
                    return
        if st.gap_s is None:
            st.gap_s = dt
        elif dt <= 1.5 * st.gap_s:
            st.gap_s = 0.7 * st.gap_s + 0.3 * dt
        else:  # a missed report, or a phone that changed its rhythm: adapt slowly
            st.gap_s = 0.9 * st.gap_s + 0.1 * dt

    def _undecidable(self, st: DeviceState, i: int, rules: Rules) -> None:
        t = self.fixes[i].time
        if not st.undecidable or st.undecidable_since is None:
            st.undecidable_since = t
        st.undecidable += 1
        if not st.rollcall_asked and (st.undecidable >= rules.undecidable_fixes
                                      or t - st.undecidable_since >= rules.undecidable_span_s):
            self.emit(EventKind.ROLL_CALL_REQUEST, i, RULE_UNDECIDABLE, None,
                      Membership.UNDECIDABLE, st.undecidable_since,
                      undecidable_fixes=st.undecidable)
            st.rollcall_asked = True

    def _spoofing(self, st: DeviceState, i: int, rules: Rules) -> None:
        f = self.fixes[i]
        if f.mock and not st.mock_flagged:
            self.emit(EventKind.SPOOFING, i, RULE_MOCK, None, Membership.UNDECIDABLE)
        st.mock_flagged = f.mock
        key = (f.lon, f.lat, f.accuracy)
        if key != st.same_key:
            st.same_key, st.same_count, st.same_since, st.frozen_flagged = key, 1, f.time, False
            return
        st.same_count += 1
        if (not st.frozen_flagged and st.same_count >= rules.frozen_fixes
                and st.same_since is not None and f.time - st.same_since >= rules.frozen_span_s):
            self.emit(EventKind.SPOOFING, i, RULE_FROZEN, None, Membership.UNDECIDABLE,
                      st.same_since, identical_fixes=st.same_count)
            st.frozen_flagged = True

    def _speed(self, i: int, rules: Rules) -> None:
        p = self.pre.prev.get(i)
        f = self.fixes[i]
        if p is None or f.time <= p.time:
            return
        d = self.pre.prev_d[i]
        moved = d - p.accuracy - float(f.accuracy or 0.0)
        speed = moved / (f.time - p.time)
        if moved >= rules.min_jump_m and speed > rules.max_speed_mps:
            self.emit(EventKind.SPOOFING, i, RULE_SPEED, None, Membership.UNDECIDABLE, p.time,
                      speed_mps=round(speed, 1), jump_m=round(d, 1))

    def _jump(self, st: DeviceState, i: int, rules: Rules, moved: float, dt: float,
              reach: float) -> bool:
        """Did a still phone jump further than its movement explains (a reflection)?

        A reflection (urban canyon, multipath) displaces a position by a hundred metres up to a
        reflection's reach while the person stands still. So: the last two fixes showed the
        phone still, and this one lies that far from them; a reported speed that explains the
        move (over the last couple of minutes at most) clears it. A person who really left was
        moving before (an instantaneous speed of zero on arrival does not undo the trip), or
        went further than any reflection throws a fix.
        """
        f = self.fixes[i]
        last, before = st.last, st.before
        if last is None or before is None or dt > rules.still_window_s:
            return False
        if last.time - before.time > rules.still_window_s:
            return False
        apart = _haversine(before.lon, before.lat, last.lon, last.lat)
        if apart > max(rules.still_m, before.accuracy + last.accuracy):
            return False  # it was moving
        if not 2 * rules.still_m <= moved <= reach:
            return False
        if f.speed is not None and dt <= _SPEED_SPAN_S:
            return moved > (f.speed + rules.jump_speed_slack_mps) * dt + rules.jump_slack_m
        return True

    def _evidence(self, st: DeviceState, i: int, rules: Rules, first: bool
                  ) -> tuple[float, str, dict[str, object]]:
        """What one wholly-outside fix proves: (weight, grade, facts for the explanation).

        How far the fix lies beyond the allowed area is measured against how far a phone that
        has not moved could be placed there by error: a multiple of its accuracy, or a
        reflection of a few hundred metres that no accuracy figure admits (a network fix:
        kilometres). Beyond twice that reach a fix is "strong", beyond it "deep", within it
        "shallow". A journey from the previous fix faster than any vehicle weakens it, and a
        streak that begins with a jump of a still phone weighs less: that is what a reflection
        looks like, while a person who leaves was already moving.
        """
        f = self.fixes[i]
        a = float(f.accuracy or 0.0)
        beyond = self.beyond(i)
        network = f.provider in _NETWORK_PROVIDERS
        reach = max(rules.error_factor * a, rules.network_error_m if network else rules.multipath_m)
        ratio = beyond / reach if reach > 0 else math.inf
        if ratio >= rules.strong_ratio and not network:
            grade, w = "strong", rules.strong_weight
        elif ratio >= 1.0:
            grade, w = "deep", rules.deep_weight
        else:
            grade, w = "shallow", rules.shallow_weight
        facts: dict[str, object] = {"t": f.time, "beyond_m": round(beyond, 1), "accuracy_m": a,
                                    "provider": f.provider, "grade": grade}
        p = self.pre.prev.get(i)
        if p is not None and f.time > p.time:
            dt = f.time - p.time
            moved = max(0.0, self.pre.prev_d[i] - p.accuracy - a)
            speed = moved / dt
            if speed > rules.max_speed_mps and moved >= rules.min_jump_m:
                w, facts["impossible_speed_mps"] = 0.0, round(speed, 1)
            elif speed > rules.plausible_speed_mps:
                w, facts["implausible_speed_mps"] = w * 0.5, round(speed, 1)
            # Only a displacement a reflection could make: no still phone is thrown kilometres.
            if first and grade == "shallow" and self._jump(st, i, rules, moved, dt, reach):
                w, facts["jump_of_still_phone_m"] = w * rules.jump_factor, round(moved, 1)
        facts["weight"] = round(w, 3)
        return w, grade, facts

    @staticmethod
    def _away_step(rules: Rules, a: Evidence, b: Evidence) -> bool:
        """Is evidence b a step of a departure after a: both satellite fixes of positive weight
        after a believable journey, b at least 45 s later, further beyond the border by more
        than both accuracies and `away_m`, at a plausible speed? (Version 3's two-fix rule, with
        neither a longer path nor a speed, took any counted fix as the first: kept as it was.)"""
        v3 = rules.away_fixes <= 2 and not rules.away_speed_mps
        if b[6] <= 0 or (a[6] <= 0 and not v3) or b[0] - a[0] < _MIN_GAP_S:
            return False
        gain = b[1] - a[1]
        return (gain > rules.away_m + a[2] + b[2]
                and gain / (b[0] - a[0]) <= rules.plausible_speed_mps)

    @staticmethod
    def _away_path(rules: Rules, track: Track, here: Evidence) -> bool:
        """Do the streak's last `away_fixes` counted fixes, ending with `here`, make a path
        going further out at every step? Two reflections of a still phone can land at
        different distances; a third further out again is what a person leaving leaves."""
        counted = [e for e in track.evidence if e[3] > 0][-(rules.away_fixes - 1):]
        if len(counted) < rules.away_fixes - 1:
            return False
        chain = [*counted, here]
        return all(_Fold._away_step(rules, a, b) for a, b in zip(chain, chain[1:], strict=False))

    @staticmethod
    def _away_speed(rules: Rules, speed: float | None, last: Evidence, here: Evidence) -> bool:
        """A two-fix departure on the phone's word: a step of a departure whose fix reports a
        (Doppler) speed of at least `away_speed_mps` that covers the gain within at most 2
        minutes (a still phone's reflected fix reports little speed; over longer gaps any speed
        times the gap covers anything)."""
        dt = here[0] - last[0]
        if not rules.away_speed_mps or speed is None or speed < rules.away_speed_mps:
            return False
        return (dt <= _SPEED_SPAN_S and _Fold._away_step(rules, last, here)
                and speed * dt >= here[1] - last[1] - here[2] - last[2])

    def _same_place(self, i: int, last: Evidence) -> bool:
        """Does fix i lie within its own and the counted fix `last`'s circles (+ slack)?"""
        _, _, acc, _, lon, lat, _ = last
        d = _haversine(lon, lat, self.pre.lon_l[i], self.pre.lat_l[i])
        return d <= acc + float(self.fixes[i].accuracy or 0.0) + _REPEAT_SLACK_M

    def _repeat(self, i: int, track: Track, rules: Rules) -> bool:
        """Is this fix the last counted outside fix again, moments later (a reflection repeats)?"""
        last = _last_counted(track)
        if last is None or self.fixes[i].time - last[0] >= rules.repeat_s:
            return False
        return self._same_place(i, last)

    def _exit(self, st: DeviceState, i: int, subj: Subject, rules: Rules) -> Track:
        """Fold one wholly-outside fix into the exit streak; decide, or ask the phone.

        An exit is declared on (a) one strong fix of good accuracy after a plausible journey,
        (b) evidence weighing `exit_weight` with at least one fix beyond a reflection's reach,
        (c) shallow fixes only: `shallow_fixes` of them spanning `shallow_span_s`, or two
        more in a third of that span (twice the span and two more fixes again when the streak
        began with a jump of a still phone: a reflection), or (d) leaving (`away_m`): a satellite
        fix further beyond the border than the last counted one by more than both accuracies
        and `away_m`, at a plausible speed, in a streak that did not begin with such a jump,
        when the counted satellite fixes before it made the same kind of step, `away_fixes` in
        all (version 3: 2, the last counted fix and this one).
        Until then, the phone is asked for a fresh fix (LOCATION_REQUEST) within its hourly
        budget, and `tick` asks again while it stays silent. Answers are weighed, not trusted: a
        shallow answer to a follow-up counts for nothing unless it comes `answer_independent_s`
        after the last counted fix (strict: then it counts), nor does a shallow fix within both
        circles of the last counted one moments later (a still phone repeats its reflection); a
        deep answer counts like any deep fix.
        """
        f = self.fixes[i]
        t = f.time
        acc = float(f.accuracy or 0.0)
        track = st.area
        last = _last_counted(track)
        if track.pending and last is not None and t - last[0] > rules.streak_gap_s:
            # Hours without fresh outside evidence: a new streak, not one stretched over the day.
            track = Track(track.status, track.since, 0, None, track.flag)
        first = track.pending == 0
        w, grade, facts = self._evidence(st, i, rules, first)
        answer = (track.followup is not None
                  and track.followup - _ANSWER_SLACK_S <= t <= track.followup + rules.confirm_window_s)
        independent = last is not None and (
            t - last[0] >= rules.answer_independent_s
            or (rules.answer_moved and not self._same_place(i, last)))
        repeat = grade == "shallow" and not first and (
            (answer and not independent) or self._repeat(i, track, rules))
        if repeat:  # a reflection repeats: the same place moments later, or a still phone's
            w, facts["weight"] = 0.0, 0.0  # answer to a follow-up proves nothing new
            facts["shallow_answer" if answer else "repeat_of_previous"] = True
        counted = 0 if repeat else 1
        pending = track.pending + counted
        since = t if first or track.pending_since is None else track.pending_since
        weight = track.weight + w
        deep = track.deep_count + (grade != "shallow" and w > 0)
        suspect = track.suspect or (first and "jump_of_still_phone_m" in facts)
        # A step of a departure path: a satellite fix of positive weight after a believable
        # journey (Wi-Fi and cell positions are kilometres wrong at times, whatever they claim).
        link = (w > 0 and "impossible_speed_mps" not in facts
                and "implausible_speed_mps" not in facts
                and (f.provider or "").lower() not in _NETWORK_PROVIDERS)
        here: Evidence = (t, float(facts["beyond_m"]), acc, w,  # type: ignore[arg-type]
                          self.pre.lon_l[i], self.pre.lat_l[i], 1.0 if link else 0.0)
        evidence = (track.evidence + (here,))[-8:]
        decided_by = None
        if first:
            if (grade == "strong" and w >= rules.exit_weight - 1e-9
                    and acc <= rules.single_fix_max_accuracy_m):
                decided_by = "one_strong_fix"
        elif deep and weight >= rules.exit_weight - 1e-9:
            decided_by = "evidence_weight"
        else:
            more, longer = ((rules.suspect_more_fixes, rules.suspect_span_factor) if suspect
                            else (0, 1.0))
            span = t - since
            if ((pending >= rules.shallow_fixes + more and span >= rules.shallow_span_s * longer)
                    or (pending >= rules.shallow_fixes + 2 + more
                        and span >= rules.shallow_span_s * longer / 3)):
                decided_by = "shallow_evidence_over_time"
        compared: dict[str, float] | None = None
        if (decided_by is None and rules.away_m > 0 and not first and not repeat and not suspect
                and link and last is not None and t - last[0] >= _MIN_GAP_S):
            # Leaving: each of the last `away_fixes` counted fixes further out than the one
            # before by more than both errors and a margin, at a speed a vehicle can go, or two
            # such fixes the last of which reports moving that fast. Not in a streak that began
            # with a still phone's jump: reflections land anywhere.
            path = self._away_path(rules, track, here)
            if path or self._away_speed(rules, f.speed, last, here):
                decided_by = "moving_away"
                compared = {"t": last[0], "beyond_m": last[1], "gain_m": round(here[1] - last[1], 1),
                            "path_fixes": rules.away_fixes if path else 2}
                if not path:
                    compared["speed_mps"] = round(float(f.speed or 0.0), 1)
        if decided_by is not None:
            extra: dict[str, object] = {"moving_away_from": compared} if compared else {}
            self.emit(EventKind.AREA_EXIT, i, RULE_AREA_EXIT, subj.home_zone_id, Membership.OUTSIDE,
                      since, allowed_zones=subj.allowed_zone_ids(t), decided_by=decided_by,
                      weight=round(weight, 3), needed=rules.exit_weight, fixes=pending,
                      evidence=[{"t": e[0], "beyond_m": e[1], "accuracy_m": e[2],
                                 "weight": round(e[3], 3), "lon": round(e[4], 6),
                                 "lat": round(e[5], 6)} for e in evidence],
                      began_with_unexplained_jump=suspect,
                      **extra)  # type: ignore[arg-type]  # never since or distance
            return Track(AreaStatus.OUTSIDE, since, 0, None, track.flag)
        asked = track.asked
        if (not self.retro and not repeat and w > 0
                and (asked is None or self.now - asked >= rules.confirm_retry_s)):
            recent = _recent_requests(st, self.now)
            if len(recent) < rules.confirm_max_per_hour:
                # The distance named is the one the evidence used: beyond the whole allowed area.
                self.emit(EventKind.LOCATION_REQUEST, i, RULE_CONFIRM, subj.home_zone_id,
                          Membership.OUTSIDE, since, self.beyond(i), weight=round(weight, 3),
                          needed=rules.exit_weight, fixes=pending, last=facts)
                st.requests = recent + (self.now,)
                asked = self.now
        return Track(track.status, track.since, pending, since, track.flag, deep, since,
                     suspect, weight, asked, evidence, track.followup)

    def _area(self, st: DeviceState, i: int, subj: Subject, rules: Rules) -> None:
        code = self.pre.allowed[i]
        area = st.area
        if not area.pending and (
                code in (M_BORDER, M_UNDECIDABLE)
                or (code == M_INSIDE and area.status == AreaStatus.INSIDE)
                or (code == M_OUTSIDE and area.status == AreaStatus.OUTSIDE)):
            return  # no streak, and nothing that could start one: the standing holds
        m = MEMBERSHIPS[code]
        f = self.fixes[i]
        if m == Membership.OUTSIDE and st.area.status != AreaStatus.OUTSIDE:
            st.area = self._exit(st, i, subj, rules)
            return
        if (m == Membership.INSIDE and st.area.status != AreaStatus.OUTSIDE and st.area.pending
                and (f.provider in _NETWORK_PROVIDERS
                     or float(f.accuracy or 0.0) > rules.breaking_max_accuracy_m)):
            return  # a radio-map or imprecise fix inside neither counts nor breaks an exit streak
        # Inside evidence breaks an exit streak; coming back needs the count-and-span rule.
        track, change = step(st.area, m, f.time, Membership.OUTSIDE, 1, 0.0, rules.return_fixes,
                             rules.return_span_s)
        if change == "good" and not self.retro:
            self.emit(EventKind.AREA_RETURN, i, RULE_AREA_RETURN, subj.home_zone_id, m, track.since)
        st.area = track

    def _exclusions(self, st: DeviceState, i: int, subj: Subject, rules: Rules) -> None:
        t = self.fixes[i].time
        for ex in subj.exclusions:
            key = f"x{ex.zone_id}"
            track = st.zone(key)
            code = self.pre.zone_memb.get((i, ex.zone_id))
            if code is None:
                continue
            m = MEMBERSHIPS[code]
            new, change = step(track, m, t, Membership.INSIDE, rules.exclusion_fixes,
                               rules.exclusion_span_s, rules.exclusion_fixes,
                               rules.exclusion_span_s)
            if change == "bad":
                self.emit(EventKind.EXCLUSION_ENTRY, i, RULE_EXCLUSION_ENTRY, ex.zone_id, m,
                          new.since)
            elif change == "good" and not self.retro:
                self.emit(EventKind.EXCLUSION_LEFT, i, RULE_EXCLUSION_LEFT, ex.zone_id, m,
                          new.since)
            if (new.status != AreaStatus.INSIDE and m != Membership.INSIDE
                    and self.pre.crossing.get((i, ex.zone_id))):
                p = self.pre.prev[i]
                self.emit(EventKind.EXCLUSION_CROSSING, i, RULE_EXCLUSION_CROSSING, ex.zone_id, m,
                          p.time, from_lon=p.lon, from_lat=p.lat, from_time=p.time)
            if ex.buffer_m > 0:
                if new.flag is None and self.pre.near.get((i, ex.zone_id)) \
                        and new.status != AreaStatus.INSIDE:
                    self.emit(EventKind.EXCLUSION_APPROACH, i, RULE_EXCLUSION_APPROACH,
                              ex.zone_id, m, buffer_m=ex.buffer_m)
                    new = replace(new, flag=t)
                elif new.flag is not None and self.pre.far.get((i, ex.zone_id)):
                    new = replace(new, flag=None)
            if new != track:
                st.set_zone(key, new)

    def _curfews(self, st: DeviceState, i: int, subj: Subject, rules: Rules) -> None:
        t = self.fixes[i].time
        for cu in subj.curfews:
            key = cu.key
            track = st.zone(key)
            code = self.pre.zone_memb.get((i, cu.zone_id))
            if code is None:
                continue
            m = MEMBERSHIPS[code]
            new, _ = step(track, m, t, Membership.OUTSIDE, rules.exit_fixes, rules.exit_span_s,
                          rules.return_fixes, rules.return_span_s, self.deep(i, rules))
            ws = cu.window_start(t)
            # Pending evidence while OUTSIDE is evidence of being back: no breach on that.
            if (new.status == AreaStatus.OUTSIDE and new.pending == 0 and ws is not None
                    and new.flag != ws):
                self.emit(EventKind.CURFEW_BREACH, i, RULE_CURFEW, cu.zone_id, m,
                          max(new.since or t, ws), window_start=ws, curfew=f"{cu.start}-{cu.end}")
                new = replace(new, flag=ws)
            if new != track:
                st.set_zone(key, new)


def evaluate(
    fixes: Sequence[Fix],
    subjects: Mapping[str, Subject],
    zones: Mapping[int, PreparedZone],
    states: Mapping[str, DeviceState],
    now: float,
    retro: bool = False,
) -> BatchResult:
    """Decide a batch of fixes of many devices; each device's fixes are folded in fix-time order.

    `decisions[k]` is the verdict on `fixes[k]` (and says so: `decisions[k].index == k`); events
    name the fix that decided them by device and fix time; `states` holds the devices whose
    state changed, and `carry` merges them into the caller's map. Fixes older than a device's
    state never change it: they are judged on their own, from a clean slate, so a buffered
    upload that arrives after a live fix can still reveal a past violation (reported as late),
    but cannot undo a later decision.

    A batch user (a replay, a benchmark) drives it like this::

        zones = {7: prepare_zone(7, geojson_polygon, CRS.GCJ02)}
        subjects = {"phone-1": Subject(supervisee_id=1, home_zone_id=7)}
        states: dict[str, DeviceState] = {}
        for batch, arrived_by in batches:  # fixes in arrival order, any devices
            res = evaluate(batch, subjects, zones, states, now=arrived_by)
            states = res.carry(states)
            for ev in res.events:  # AREA_EXIT, LOCATION_REQUEST (ask the phone now), ...
                ...
            outside = [batch[d.index] for d in res.decisions if d.membership == "outside"]
    """
    result = BatchResult()
    if not fixes:
        return result
    pre = _prepare(fixes, subjects, zones, states)
    fold = _Fold(fixes, subjects, zones, pre, now, retro)
    current: dict[str, DeviceState] = {}
    decisions: list[Decision | None] = [None] * len(fixes)
    late_idx: list[int] = []
    lon_l, lat_l, usable_l, allowed_l, late_l = (pre.lon_l, pre.lat_l, pre.usable, pre.allowed,
                                                  pre.late)
    cur: str | None = None
    state = DeviceState()
    for i in pre.order:
        f = fixes[i]
        m = MEMBERSHIPS[allowed_l[i]]
        if late_l[i]:
            late_idx.append(i)
            decisions[i] = Decision(f, lon_l[i], lat_l[i], m, usable_l[i], False, i)
            continue
        if f.device_id != cur:  # the order is by device: one working copy each
            cur = f.device_id
            given = states.get(cur)
            state = current[cur] = given.copy() if given is not None else DeviceState()
        fold.fix(state, i)
        decisions[i] = Decision(f, lon_l[i], lat_l[i], m, usable_l[i], True, i)
    result.events = fold.events
    for dev, st in current.items():
        if st != states.get(dev):
            result.states[dev] = st
    if late_idx and not retro:
        # A clean slate that assumes the person was where they belong.
        late_fixes = [fixes[i] for i in late_idx]
        clean = {d: DeviceState(area=Track(AreaStatus.INSIDE)) for d in {f.device_id for f in late_fixes}}
        past = evaluate(late_fixes, subjects, zones, clean, now, retro=True)
        result.events.extend(e for e in past.events
                             if e.kind not in (EventKind.ROLL_CALL_REQUEST, EventKind.LOCATION_REQUEST))
        for d in past.decisions:
            i = late_idx[d.index]
            old = decisions[i]
            assert old is not None
            decisions[i] = replace(old, membership=d.membership)
    result.decisions = [d for d in decisions if d is not None]
    return result


def tick(
    subjects: Mapping[str, Subject],
    zones: Mapping[int, PreparedZone],
    states: Mapping[str, DeviceState],
    now: float,
) -> BatchResult:
    """Time-driven checks, run by the scheduler, not by fixes: curfew windows opening, and
    phones silent during an undecided exit streak (asked again every `follow_up_s`)."""
    result = BatchResult()
    for dev, subj in subjects.items():
        st = states.get(dev)
        follow = st is not None and _follow_up_due(st, subj.rules, now)
        if not subj.curfews and not follow:  # nothing here runs on the clock for them
            continue
        st = st or DeviceState()
        new_st = st.copy()
        if follow:
            _follow_up(result, dev, subj, new_st, now)
        for cu in subj.curfews:
            ws = cu.window_start(now)
            if ws is None:
                continue
            key = cu.key
            track = new_st.zone(key)
            if track.flag in (ws, -ws):  # reported, or a roll-call already asked, this window
                continue
            last = st.last
            fresh = last is not None and now - last.time <= subj.rules.curfew_stale_s
            lon, lat = (last.lon, last.lat) if last else (float("nan"), float("nan"))
            if track.status == AreaStatus.OUTSIDE and track.pending == 0 and fresh:
                distance = zones[cu.zone_id].signed_distance(lon, lat) if cu.zone_id in zones else None
                reason = Reason(RULE_CURFEW_AT_START, cu.zone_id, Membership.OUTSIDE, distance,
                                last.accuracy if last else None,
                                (("curfew", f"{cu.start}-{cu.end}"), ("window_start", ws)))
                result.events.append(Event(EventKind.CURFEW_BREACH, dev, last.time if last else now,
                                           lon, lat, reason, ws, False, now))
                new_st.set_zone(key, replace(track, flag=ws))
            elif not fresh or track.status == AreaStatus.UNKNOWN or track.pending:
                reason = Reason(RULE_CURFEW_UNKNOWN, cu.zone_id, Membership.UNDECIDABLE, None, None,
                                (("window_start", ws),))
                result.events.append(Event(EventKind.ROLL_CALL_REQUEST, dev, now, lon, lat, reason,
                                           ws, False, now))
                new_st.set_zone(key, replace(track, flag=-ws))
        if new_st != st:
            result.states[dev] = new_st
    return result


def _follow_up_due(st: DeviceState, rules: Rules, now: float) -> bool:
    """An undecided exit streak whose phone has been silent since: time to ask it again?"""
    a = st.area
    if a.status == AreaStatus.OUTSIDE or a.pending == 0 or a.pending_since is None:
        return False
    silent = now - st.last_fix_time
    if now - a.pending_since > rules.follow_up_until_s or silent < rules.follow_up_s:
        return False
    # Not when the phone's next report is due anyway: its answer could not be told from it.
    if st.gap_s is not None and silent > st.gap_s - rules.confirm_window_s:
        return False
    last_ask = max(a.asked if a.asked is not None else -math.inf,
                   a.followup if a.followup is not None else -math.inf)
    return (now - last_ask >= rules.follow_up_s
            and len(_recent_requests(st, now)) < rules.confirm_max_per_hour)


def _follow_up(result: BatchResult, dev: str, subj: Subject, st: DeviceState, now: float) -> None:
    """Ask a silent phone for a fix again (its answer is weighed: a shallow one adds nothing,
    except where the level counts answers `answer_independent_s` after the last counted fix)."""
    a, last = st.area, st.last
    lon, lat = (last.lon, last.lat) if last else (math.nan, math.nan)
    reason = Reason(RULE_FOLLOW_UP, subj.home_zone_id, Membership.OUTSIDE, None,
                    last.accuracy if last else None,
                    (("fixes", a.pending), ("needed", subj.rules.exit_weight),
                     ("weight", round(a.weight, 3))))
    result.events.append(Event(EventKind.LOCATION_REQUEST, dev, last.time if last else now, lon,
                               lat, reason, a.pending_since, False, now))
    mark_follow_up(st, now)


def mark_follow_up(st: DeviceState, now: float) -> None:
    """Record on a working state that the clock asked its phone for a fix at `now`."""
    st.requests = _recent_requests(st, now) + (now,)
    st.area = replace(st.area, asked=now, followup=now)


def _recent_requests(st: DeviceState, now: float) -> tuple[float, ...]:
    """The location requests of the last hour (the battery budget's window)."""
    return tuple(r for r in st.requests if now - r < 3600.0)


def _last_counted(track: Track) -> Evidence | None:
    """The streak's latest fix that counted as evidence (a repeat weighs 0 and does not)."""
    for e in reversed(track.evidence):
        if e[3] > 0:
            return e
    return None


def pending_exit(st: DeviceState) -> bool:
    """Does this state hold an undecided exit streak (one the clock may follow up)?"""
    return st.area.status != AreaStatus.OUTSIDE and st.area.pending > 0


__all__ = ["BatchResult", "evaluate", "mark_follow_up", "pending_exit", "step", "tick"]
