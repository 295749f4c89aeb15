"""Feeding the phones' reports to the engine as a server would, and to a naive tracker.

Fixes reach the engine in ARRIVAL order, in batches of `batch_s` seconds of arrival time:
`evaluate(fixes, subjects, zones, states, now=batch_end)`, then `tick(...)` at the same `now`,
each result's states carried into the next call. A LOCATION_REQUEST event makes the phone answer
(or not) with a fresh fix 10-90 s later, which arrives in a later batch.
"""

from __future__ import annotations

import heapq
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely

from geofence import engine
from geofence.crs import CODE_CRS
from geofence.model import DeviceState, Event, EventKind, Fix, Membership, Subject
from geofence.profile import DEFAULT_PROFILE
from geofence.zones import PreparedZone
from simulators.quality.config import DAY, T0, Scenario
from simulators.quality.phones import (
    PROVIDER_NAMES,
    FixTable,
    PhoneStream,
    Traits,
    empty_table,
    scenario_key,
    traits,
)
from simulators.quality.world import IntArray, World

FLUSH_S = 3 * 3600.0  # after the last day: time for offline backlogs to arrive
M_OUTSIDE, M_INSIDE = 2, 1
_M_CODE = {Membership.UNDECIDABLE: 0, Membership.INSIDE: 1, Membership.OUTSIDE: 2,
           Membership.BORDER: 3}

Evaluate = Callable[..., engine.BatchResult]
Tick = Callable[..., engine.BatchResult]


@dataclass
class AlertLog:
    """Area-exit alerts: who, first evidence and deciding fix time, the `now` that decided it,
    when it closed (inf: never)."""

    person: list[int] = field(default_factory=list)
    since: list[float] = field(default_factory=list)
    time: list[float] = field(default_factory=list)
    decided: list[float] = field(default_factory=list)
    closed: list[float] = field(default_factory=list)

    def add(self, person: int, since: float, t: float, decided: float, closed: float = math.inf) -> None:
        self.person.append(person)
        self.since.append(since)
        self.time.append(t)
        self.decided.append(decided)
        self.closed.append(closed)

    def extend(self, other: AlertLog) -> None:
        for name in ("person", "since", "time", "decided", "closed"):
            getattr(self, name).extend(getattr(other, name))

    def only(self, people: set[int]) -> AlertLog:
        out = AlertLog()
        for i, p in enumerate(self.person):
            if p in people:
                out.add(p, self.since[i], self.time[i], self.decided[i], self.closed[i])
        return out

    def __len__(self) -> int:
        return len(self.person)


@dataclass(frozen=True)
class FixNote:
    """One fix as the report lists it (a false alert's evidence or a missed violation's fix)."""

    person: int
    time: float
    arrival: float
    cls: int
    true_m: float  # true position's signed distance to the border (> 0 outside)
    seen_m: float  # the reported position's, in WGS-84
    accuracy: float
    provider: int
    speed: float
    membership: int
    answer: bool
    offline: bool


class NaiveTracker:
    """Bare point-in-polygon per fix on the reported coordinates, as open-source trackers do.

    The phone's coordinates are taken as they come (a GCJ-02 phone's are not converted),
    accuracy and provider are ignored, fixes judged in arrival order. An alert opens when a fix
    is outside and the previous one was inside (the first fix counts as coming after
    "inside"), and closes at the next inside fix: one open alert at a time.
    """

    def __init__(self, zones: Mapping[int, PreparedZone], people_area: IntArray) -> None:
        self.geoms = {k: z.geom_wgs84 for k, z in zones.items()}
        for g in self.geoms.values():
            shapely.prepare(g)
        self.p_area = people_area
        self.prev_out: dict[int, bool] = {}
        self.open_at: dict[int, int] = {}
        self.log = AlertLog()
        self.wrong_side: Counter[int] = Counter()  # noise class -> fixes outside while truly inside
        self.seconds = 0.0

    def outside(self, tab: FixTable) -> np.ndarray:
        out = np.zeros(len(tab), dtype=bool)
        area = self.p_area[tab.person]
        for k in np.unique(area):
            sel = area == k
            out[sel] = ~shapely.contains_xy(self.geoms[int(k)], tab.lon[sel], tab.lat[sel])
        return out

    def feed(self, tab: FixTable, now: float) -> None:
        t0 = time.perf_counter()
        out = self.outside(tab)
        self.wrong_side.update(tab.cls[out & ~tab.outside].tolist())
        for i in np.lexsort((tab.arrival, tab.person)).tolist():
            p = int(tab.person[i])
            was = self.prev_out.get(p, False)
            if out[i] and not was:
                self.open_at[p] = len(self.log)
                self.log.add(p, float(tab.time[i]), float(tab.time[i]), now)
            elif not out[i] and was and p in self.open_at:
                self.log.closed[self.open_at.pop(p)] = float(tab.time[i])
            self.prev_out[p] = bool(out[i])
        self.seconds += time.perf_counter() - t0


def fix_objects(world: World, tab: FixTable) -> list[Fix]:
    """The engine's view of a table: device, fix time, coordinates as reported, what it says."""
    dev = world.device_ids
    speed = [None if math.isnan(v) else round(v, 2) for v in tab.speed.tolist()]
    return [Fix(dev[p], t, x, y, CODE_CRS[c], a, speed=sp, provider=PROVIDER_NAMES[v])
            for p, t, x, y, c, a, sp, v in zip(
                tab.person.tolist(), tab.time.tolist(), tab.lon.tolist(), tab.lat.tolist(),
                tab.crs.tolist(), tab.accuracy.tolist(), speed, tab.provider.tolist(), strict=True)]


@dataclass
class EngineRun:
    """One engine variant (rule overrides) fed one scenario's fixes plus its own phones' answers."""

    name: str
    overrides: dict[str, Any]
    subjects: dict[str, Subject]
    seed: tuple[int, ...]
    states: dict[str, DeviceState] = field(default_factory=dict)
    log: AlertLog = field(default_factory=AlertLog)
    open_at: dict[int, int] = field(default_factory=dict)
    other: Counter[str] = field(default_factory=Counter)  # other events by kind/rule
    requests: Counter[int] = field(default_factory=Counter)  # location requests per person
    answers: Counter[int] = field(default_factory=Counter)  # answers that reached the server
    wrong_side: Counter[int] = field(default_factory=Counter)  # by noise class
    evidence: list[FixNote] = field(default_factory=list)  # judged outside while truly inside
    viol_fixes: dict[int, list[FixNote]] = field(default_factory=dict)  # truly-outside fixes
    seconds: float = 0.0
    tick_seconds: float = 0.0
    fixes: int = 0
    calls: int = 0
    _pending: list[tuple[float, int, FixTable]] = field(default_factory=list)
    _busy_until: dict[int, float] = field(default_factory=dict)
    _rngs: dict[int, np.random.Generator] = field(default_factory=dict)
    _seq: int = 0

    def step(self, world: World, sched: FixTable, sched_fixes: list[Fix], now: float,
             streams: Mapping[int, PhoneStream], pid: Mapping[str, int], tick_due: bool,
             evaluate: Evaluate, tick: Tick) -> None:
        """One batch: scheduled fixes that arrived before `now` plus answers that did."""
        tab, fixes = sched, sched_fixes
        ans: list[FixTable] = []
        while self._pending and self._pending[0][0] < now:
            ans.append(heapq.heappop(self._pending)[2])
        if ans:
            a = FixTable.cat(ans)
            tab = FixTable.cat([sched, a])
            fixes = sched_fixes + fix_objects(world, a)
            order = np.argsort(tab.arrival, kind="stable")
            tab, fixes = tab.take(order), [fixes[i] for i in order.tolist()]
            self.answers.update(a.person.tolist())
        if fixes:
            t0 = time.perf_counter()
            res = evaluate(fixes, self.subjects, world.zones, self.states, now=now)
            self.seconds += time.perf_counter() - t0
            self.fixes += len(fixes)
            self.calls += 1
            self.states = res.carry(self.states)
            if any(d.index != k for k, d in enumerate(res.decisions)) or len(res.decisions) != len(fixes):
                raise AssertionError("decisions must come back in input order, one per fix")
            self._record(world, tab, res.decisions)
            self._events(res.events, now, streams, pid)
        if tick_due:
            t0 = time.perf_counter()
            rt = tick(self.subjects, world.zones, self.states, now)
            self.tick_seconds += time.perf_counter() - t0
            self.states = rt.carry(self.states)
            self._events(rt.events, now, streams, pid)

    def _record(self, world: World, tab: FixTable, decisions: Sequence[Any]) -> None:
        codes = np.fromiter((_M_CODE[d.membership] for d in decisions), dtype=np.int8,
                            count=len(decisions))
        wrong = (codes == M_OUTSIDE) & ~tab.outside
        self.wrong_side.update(tab.cls[wrong].tolist())
        for i in np.flatnonzero(wrong).tolist():
            self.evidence.append(_note(world, tab, i, decisions[i], int(codes[i])))
        for i in np.flatnonzero(tab.outside & (tab.viol >= 0)).tolist():
            self.viol_fixes.setdefault(int(tab.viol[i]), []).append(
                _note(world, tab, i, decisions[i], int(codes[i])))

    def _events(self, events: Sequence[Event], now: float, streams: Mapping[int, PhoneStream],
                pid: Mapping[str, int]) -> None:
        for e in events:
            p = pid[e.device_id]
            if e.kind == EventKind.AREA_EXIT:
                self.open_at[p] = len(self.log)
                self.log.add(p, float(e.since if e.since is not None else e.fix_time), e.fix_time, now)
            elif e.kind == EventKind.AREA_RETURN:
                if p in self.open_at:
                    self.log.closed[self.open_at.pop(p)] = e.fix_time
            elif e.kind == EventKind.LOCATION_REQUEST:
                self.requests[p] += 1
                if self._busy_until.get(p, -math.inf) >= now:
                    continue  # still answering the previous request
                rng = self._rngs.setdefault(p, np.random.default_rng([*self.seed, p]))
                a = streams[p].answer(now, rng)
                if a is not None:
                    self._busy_until[p] = float(a.arrival[0])
                    self._seq += 1
                    heapq.heappush(self._pending, (float(a.arrival[0]), self._seq, a))
            else:
                self.other[f"{e.kind.value}: {e.reason.rule}"] += 1


def _note(world: World, tab: FixTable, i: int, d: Any, code: int) -> FixNote:
    p = int(tab.person[i])
    zone = world.zones[world.people[p].area]
    return FixNote(p, float(tab.time[i]), float(tab.arrival[i]), int(tab.cls[i]),
                   zone.signed_distance(float(tab.true_lon[i]), float(tab.true_lat[i])),
                   zone.signed_distance(float(d.lon), float(d.lat)), float(tab.accuracy[i]),
                   int(tab.provider[i]), float(tab.speed[i]), code, bool(tab.answer[i]),
                   bool(tab.offline[i]))


@dataclass
class PartResult:
    """What one worker found for one scenario and a share of the people."""

    scenario: Scenario
    people: IntArray
    traits: Traits
    engines: list[EngineRun]
    naive: NaiveTracker
    class_counts: Counter[int] = field(default_factory=Counter)
    seen: Counter[int] = field(default_factory=Counter)  # truly-outside scheduled fixes per violation
    seen_at: dict[int, float] = field(default_factory=dict)  # ...the first one's arrival
    fixes: int = 0
    offline_fixes: int = 0
    gen_s: float = 0.0
    fix_obj_s: float = 0.0


def run_part(world: World, scen: Scenario, variants: Sequence[tuple[str, dict[str, Any]]],
             people: IntArray, progress: bool = False, evaluate: Evaluate = engine.evaluate,
             tick: Tick = engine.tick) -> PartResult:
    """Run every day of one scenario for `people`: phones -> arrival batches -> engine runs."""
    cfg = world.cfg
    tr = traits(world, scen)
    streams = {int(p): PhoneStream(world, scen, tr, int(p)) for p in people}
    pid = {world.device_ids[p]: int(p) for p in people}
    engines = [EngineRun(name, ov, subjects(world, ov, people), (cfg.seed, scenario_key(scen), 3, k))
               for k, (name, ov) in enumerate(variants)]
    res = PartResult(scen, people, tr, engines, NaiveTracker(world.zones, world.p_area))
    pending = empty_table()
    last_tick = -math.inf
    wall = time.perf_counter()
    for d in range(cfg.days + 1):
        t0 = time.perf_counter()
        if d < cfg.days:
            pending = FixTable.cat([pending] + [s.day(d) for s in streams.values()])
        horizon = T0 + (d + 1) * DAY if d < cfg.days else T0 + cfg.days * DAY + FLUSH_S
        pending = pending.take(np.argsort(pending.arrival, kind="stable"))
        k = int(np.searchsorted(pending.arrival, horizon, side="left"))
        today, pending = pending.take(np.arange(k)), pending.take(np.arange(k, len(pending)))
        res.gen_s += time.perf_counter() - t0
        res.fixes += len(today)
        res.offline_fixes += int(today.offline.sum())
        res.class_counts.update(today.cls.tolist())
        out = np.flatnonzero(today.outside & (today.viol >= 0))
        res.seen.update(today.viol[out].tolist())
        for v, a in zip(today.viol[out].tolist(), today.arrival[out].tolist(), strict=True):
            if a < res.seen_at.get(v, math.inf):
                res.seen_at[v] = a
        edges = np.arange(T0 + d * DAY + cfg.batch_s, horizon + cfg.batch_s / 2, cfg.batch_s)
        cuts = np.searchsorted(today.arrival, edges, side="left")
        lo = 0
        for now, hi in zip(edges.tolist(), cuts.tolist(), strict=True):
            sched = today.take(np.arange(lo, hi))
            lo = hi
            t0 = time.perf_counter()
            fixes = fix_objects(world, sched)
            res.fix_obj_s += time.perf_counter() - t0
            if len(sched):
                res.naive.feed(sched, now)
            tick_due = now - last_tick >= cfg.tick_s - 1e-6
            if tick_due:
                last_tick = now
            for eng in engines:
                eng.step(world, sched, fixes, now, streams, pid, tick_due, evaluate, tick)
        if progress:
            print(f"  ... {scen.name}: day {d + 1}/{cfg.days}, {res.fixes:,} fixes, "
                  f"{time.perf_counter() - wall:.0f} s", file=sys.stderr, flush=True)
    return res


def subjects(world: World, overrides: Mapping[str, Any] | None, people: IntArray) -> dict[str, Subject]:
    """Who each device speaks for: home area and the rules of the person's level."""
    return {world.device_ids[p]: Subject(int(p), world.people[p].area,
                                         rules=DEFAULT_PROFILE.rules_for(world.people[p].level, overrides),
                                         profile=DEFAULT_PROFILE.label)
            for p in people.tolist()}


def merge(parts: Sequence[PartResult]) -> PartResult:
    """One scenario's parts (shares of the people) as one result."""
    first = parts[0]
    for o in parts[1:]:
        first.people = np.concatenate([first.people, o.people])
        for e, x in zip(first.engines, o.engines, strict=True):
            e.log.extend(x.log)
            for name in ("other", "requests", "answers", "wrong_side"):
                getattr(e, name).update(getattr(x, name))
            e.evidence.extend(x.evidence)
            for k, v in x.viol_fixes.items():
                e.viol_fixes.setdefault(k, []).extend(v)
            e.seconds += x.seconds
            e.tick_seconds += x.tick_seconds
            e.fixes += x.fixes
            e.calls += x.calls
        first.naive.log.extend(o.naive.log)
        first.naive.wrong_side.update(o.naive.wrong_side)
        first.naive.seconds += o.naive.seconds
        first.class_counts.update(o.class_counts)
        first.seen.update(o.seen)
        for vk, a in o.seen_at.items():
            first.seen_at[vk] = min(a, first.seen_at.get(vk, math.inf))
        first.fixes += o.fixes
        first.offline_fixes += o.offline_fixes
        first.gen_s += o.gen_s
        first.fix_obj_s += o.fix_obj_s
    return first
