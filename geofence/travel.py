"""Travel permit rules (外出): validation of a request and the approving tier. Pure, `now` passed in."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from geofence.profile import TravelRules

DAY = 86400.0
LOCAL = ZoneInfo("Asia/Shanghai")


class Tier(StrEnum):
    """Who must approve: the judicial office, the district bureau or the city bureau."""

    OFFICE = "office"
    DISTRICT = "district"
    CITY = "city"


TIER_ORDER = {Tier.OFFICE: 0, Tier.DISTRICT: 1, Tier.CITY: 2}


class PermitRefused(ValueError):
    """A request the profile does not allow, with a stable code."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Span:
    """An existing permit's time span (approved or pending)."""

    start: float
    end: float


def days(start: float, end: float) -> int:
    """Length in days, counting a started day as a day (a 25-hour trip is 2 days)."""
    return max(1, math.ceil((end - start) / DAY - 1e-9))


def _overlap_days(a: Span, start: float, end: float) -> float:
    return max(0.0, min(a.end, end) - max(a.start, start)) / DAY


def working_days_between(now: float, start: float) -> int:
    """Whole working days (Mon–Fri, local time) after today and before the start day."""
    d = datetime.fromtimestamp(now, LOCAL).date() + timedelta(days=1)
    last = datetime.fromtimestamp(start, LOCAL).date()
    n = 0
    while d < last:
        if d.weekday() < 5:
            n += 1
        d += timedelta(days=1)
    return n


def most_days_in_any_window(window_days: int, start: float, end: float,
                            others: Sequence[Span]) -> float:
    """Most travel days (this request and the others) in any `window_days` window touching it.

    The total is piecewise linear in the window's start, so its maximum lies where the window's
    start or end meets the start or end of some trip: only those windows are tried.
    """
    w = window_days * DAY
    trips = [Span(start, end), *others]
    edges = {t for s in trips for t in (s.start, s.end)}
    candidates = {e for e in edges} | {e - w for e in edges}
    best = 0.0
    for s in candidates:
        if s + w <= start or s >= end:  # the window must share time with the request
            continue
        best = max(best, sum(_overlap_days(t, s, s + w) for t in trips))
    return best


def required_tier(rules: TravelRules, start: float, end: float, others: Sequence[Span]) -> Tier:
    """The tier that must approve: by length, and by the most days within any rolling window."""
    length = days(start, end)
    in_window = most_days_in_any_window(rules.window_days, start, end, others)
    if length > rules.district_max_days or in_window > rules.window_cap_days:
        return Tier.CITY
    if length > rules.office_max_days:
        return Tier.DISTRICT
    return Tier.OFFICE


def check_request(
    rules: TravelRules, start: float, end: float, now: float, others: Sequence[Span],
) -> Tier:
    """Validate a request against the profile; return the approving tier or raise PermitRefused."""
    if not end > start:
        raise PermitRefused("bad_span", "the end must come after the start")
    if end <= now:
        raise PermitRefused("in_the_past", "the permit would already be over")
    if days(start, end) > rules.max_days:
        raise PermitRefused("too_long", f"{days(start, end)} days exceeds {rules.max_days}")
    if rules.notice_working_days and working_days_between(now, start) < rules.notice_working_days:
        raise PermitRefused("short_notice",
                            f"apply at least {rules.notice_working_days} working days ahead")
    for o in others:
        if o.start < end and start < o.end:
            raise PermitRefused("overlap", "overlaps another permit")
    if rules.yearly_cap_days is not None:
        year = datetime.fromtimestamp(start, LOCAL).year
        y0 = datetime(year, 1, 1, tzinfo=LOCAL).timestamp()
        y1 = datetime(year + 1, 1, 1, tzinfo=LOCAL).timestamp()
        used = sum(_overlap_days(o, y0, y1) for o in others)
        asked = (min(end, y1) - max(start, y0)) / DAY
        if used + asked > rules.yearly_cap_days + 1e-9:
            raise PermitRefused("yearly_cap",
                                f"{used:.1f} days used + {asked:.1f} asked > {rules.yearly_cap_days}")
    return required_tier(rules, start, end, others)
