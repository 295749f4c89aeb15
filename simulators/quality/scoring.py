"""Scoring area-exit alerts against the ground truth.

- An alert's evidence window is [first evidence fix time, deciding fix time] (the naive rule's
  window is its single fix). The alert is TRUE when that window overlaps a violation interval
  [start, end) of the same person (first evidence < end and deciding fix >= start); otherwise
  it is FALSE. False alerts per person-day = false alerts / (people x days).
- A violation is DETECTED by the true alert overlapping it that was decided first. Delay (the
  one that counts): the `now` of the engine call that produced the alert minus the true
  crossing, so a fix that arrived late is charged its lateness. Fix-time delay: the deciding
  fix's time minus the true crossing.
- Detection is graded among violations of 10 minutes or more of which the server received at
  least one fix whose TRUE position was outside (a violation no fix saw cannot be detected by
  any rule), and among those with two or more such fixes from phones that never answer a
  location request (the engine cannot count on an answer).
- A violation not detected while an earlier alert of the person was still open at its start
  is counted as "covered" (not as detected).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field

import numpy as np

from simulators.quality.drive import AlertLog
from simulators.quality.world import FloatArray, Violation

TEN_MIN = 600.0


@dataclass
class Match:
    """Alerts matched to violations (indices into the whole violation list)."""

    first: dict[int, tuple[float, float]]  # violation -> (decided, deciding fix time)
    false_ids: list[int]  # indices into the alert log
    covered: set[int]


def match(log: AlertLog, violations: Sequence[Violation]) -> Match:
    """Which alerts are true, and which alert detected each violation first."""
    by_person: dict[int, list[int]] = {}
    for k, v in enumerate(violations):
        by_person.setdefault(v.person, []).append(k)
    first: dict[int, tuple[float, float]] = {}
    false_ids: list[int] = []
    for i in range(len(log)):
        p, s, t, dec = log.person[i], log.since[i], log.time[i], log.decided[i]
        hit = False
        for k in by_person.get(p, ()):
            v = violations[k]
            if s < v.end and t >= v.start:
                hit = True
                if k not in first or dec < first[k][0]:
                    first[k] = (dec, t)
        if not hit:
            false_ids.append(i)
    alerts_of: dict[int, list[int]] = {}
    for i, p in enumerate(log.person):
        alerts_of.setdefault(p, []).append(i)
    covered = {k for k, v in enumerate(violations) if k not in first and any(
        log.decided[i] < v.start < log.closed[i] for i in alerts_of.get(v.person, ()))}
    return Match(first, false_ids, covered)


@dataclass
class Metrics:
    """One group of people (an interval class, a level, near a border) in one scenario."""

    people: int
    person_days: float
    alerts: int
    false_alerts: int
    violations: int  # all of the group's violations
    detected: int
    eligible: int  # >= 10 min with >= 1 truly-outside fix received
    eligible_detected: int
    never_eligible: int  # ... >= 2 such fixes, phone never answers
    never_detected: int
    delays: FloatArray = field(default_factory=lambda: np.empty(0))  # decided, eligible detected
    fix_delays: FloatArray = field(default_factory=lambda: np.empty(0))
    engine_delays: FloatArray = field(default_factory=lambda: np.empty(0))  # first seen → decided
    floor_delays: FloatArray = field(default_factory=lambda: np.empty(0))  # crossing → first seen
    missed: list[int] = field(default_factory=list)  # eligible, not detected
    shown: int = 0  # >= 10 min with >= 1 own fix judged wholly outside (a reported fix outside)
    shown_detected: int = 0
    shown_never: int = 0  # ... >= 2 such fixes, phone never answers
    shown_never_detected: int = 0

    @property
    def false_per_person_day(self) -> float:
        return self.false_alerts / self.person_days if self.person_days else math.nan

    @property
    def share(self) -> float:
        return self.eligible_detected / self.eligible if self.eligible else math.nan

    @property
    def never_share(self) -> float:
        return self.never_detected / self.never_eligible if self.never_eligible else math.nan

    def delay(self, q: float, fix_time: bool = False, engine: bool = False,
              floor: bool = False) -> float:
        d = (self.floor_delays if floor else self.engine_delays if engine
             else self.fix_delays if fix_time else self.delays)
        return float(np.percentile(d, q)) if d.size else math.nan


def metrics(log: AlertLog, m: Match, violations: Sequence[Violation], seen: Mapping[int, int],
            people: Set[int], days: float, never: Set[int],
            seen_at: Mapping[int, float] | None = None,
            shown: Mapping[int, int] | None = None) -> Metrics:
    """Metrics of the people in `people` (`seen`: truly-outside fixes received per violation,
    `never`: people whose phone never answers, `seen_at`: when the first of them arrived)."""
    false = sum(1 for i in m.false_ids if log.person[i] in people)
    alerts = sum(1 for p in log.person if p in people)
    mine = [k for k, v in enumerate(violations) if v.person in people]
    eligible = [k for k in mine if violations[k].end - violations[k].start >= TEN_MIN
                and seen.get(k, 0) >= 1]
    never_el = [k for k in eligible if violations[k].person in never and seen.get(k, 0) >= 2]
    det = [k for k in eligible if k in m.first]
    sh = [k for k in eligible if shown and shown.get(k, 0) >= 1]
    sh_never = [k for k in sh if violations[k].person in never and shown and shown.get(k, 0) >= 2]
    return Metrics(
        len(people), len(people) * days, alerts, false, len(mine), sum(1 for k in mine if k in m.first),
        len(eligible), len(det), len(never_el), sum(1 for k in never_el if k in m.first),
        np.array([m.first[k][0] - violations[k].start for k in det]),
        np.array([m.first[k][1] - violations[k].start for k in det]),
        np.array([max(0.0, m.first[k][0] - seen_at[k]) for k in det if seen_at and k in seen_at]),
        np.array([seen_at[k] - violations[k].start for k in eligible if seen_at and k in seen_at]),
        [k for k in eligible if k not in m.first],
        len(sh), sum(1 for k in sh if k in m.first), len(sh_never),
        sum(1 for k in sh_never if k in m.first))


__all__ = ["TEN_MIN", "Match", "Metrics", "match", "metrics"]
