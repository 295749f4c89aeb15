"""Rule thresholds: a versioned profile per supervision level, overridable per person (data)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class Rules:
    """Every threshold the engine uses for one person."""

    max_accuracy_m: float = 200.0  # worse accuracy decides nothing
    # Leaving the allowed area: each wholly-outside fix weighs what it proves (engine._evidence).
    # How far a fix can lie from a phone that has not moved, beyond what its accuracy says:
    error_factor: float = 3.0  # ...this many times its reported accuracy...
    multipath_m: float = 500.0  # ...or a GNSS reflection (urban canyon), whichever is more...
    network_error_m: float = 2000.0  # ...or a network (Wi-Fi, cell) fix placed wrongly
    strong_ratio: float = 1.5  # beyond ratio x that reach: "strong", a fix no error explains
    strong_weight: float = 1.0  # weight of a strong fix...
    deep_weight: float = 0.75  # ...of one beyond the reach but not twice...
    shallow_weight: float = 0.25  # ...of one within the reach (noise could put it there)
    exit_weight: float = 1.0  # an exit needs this much weight in an unbroken outside streak...
    shallow_fixes: int = 3  # made only of shallow fixes, an exit needs this many...
    shallow_span_s: float = 600.0  # ...spanning this long
    streak_gap_s: float = 3600.0  # an hour without fresh outside evidence starts a new streak
    repeat_s: float = 180.0  # a shallow fix repeating the previous one's place this soon: no news
    # A shallow answer to a follow-up request counts for nothing (a still phone repeats its
    # reflection), unless it comes this long after the last counted fix (86400, a day: never;
    # strict 240, which every follow-up answer does: on strict every shallow answer counts)...
    answer_independent_s: float = 86400.0
    answer_moved: int = 0  # ...or (1) lies away from that fix's place (off: measured no gain)
    # Leaving: a satellite fix more than this (+ both accuracies) further beyond the border than
    # the last counted one, at a plausible speed, not in a streak that began with a still phone's
    # jump. 0 is off: profiles stored before version 3 keep their behaviour.
    away_m: float = 0.0
    away_fixes: int = 2  # ...and so each of this many counted satellite fixes (2-8) in a row...
    away_speed_mps: float = 0.0  # ...or two, within 2 min, the last reporting this speed (0: off)
    suspect_more_fixes: int = 2  # a streak that began with a still phone's jump needs this many more...
    suspect_span_factor: float = 2.0  # ...shallow fixes, over this many times the span
    single_fix_max_accuracy_m: float = 50.0  # a lone strong fix decides only this accurate
    breaking_max_accuracy_m: float = 100.0  # a worse (or Wi-Fi/cell) fix inside breaks no exit streak
    still_m: float = 50.0  # two fixes this close (or within their circles): the phone was still
    still_window_s: float = 2400.0  # ...if no further apart in time than this
    jump_factor: float = 0.5  # a streak that begins with a jump of a still phone weighs less
    plausible_speed_mps: float = 100.0  # faster than a high-speed train from the last fix: weak
    confirm_max_per_hour: int = 4  # location requests (ask the phone for a fix now) per hour
    confirm_retry_s: float = 300.0  # a streak asks again only after this long
    confirm_window_s: float = 120.0  # fixes this soon after a follow-up request are its answers
    follow_up_s: float = 300.0  # a phone silent this long in an undecided streak is asked again
    follow_up_until_s: float = 1800.0  # ...while the streak is younger than this
    exit_fixes: int = 3  # curfews: wholly-outside evidence needed before a breach...
    exit_span_s: float = 90.0  # ...spanning at least this long
    return_fixes: int = 3  # the same care before the person counts as back inside
    return_span_s: float = 90.0
    deep_margin_m: float = 1000.0  # curfews: two fixes this far beyond their circles decide faster
    jump_speed_slack_mps: float = 0.5  # a jump is unexplained beyond (reported speed + slack)·Δt
    jump_slack_m: float = 20.0  # + this
    exclusion_fixes: int = 2  # mirror rule for exclusion zones
    exclusion_span_s: float = 30.0
    undecidable_fixes: int = 6  # this many undecidable fixes in a row ask for a roll-call...
    undecidable_span_s: float = 1800.0  # ...or undecidable for this long
    max_speed_mps: float = 120.0  # 430 km/h beyond both circles: no train or door-to-door flight
    min_jump_m: float = 2000.0  # and only jumps at least this long count as impossible
    frozen_fixes: int = 12  # bit-identical fixes in a row...
    frozen_span_s: float = 7200.0  # ...for at least two hours: a replayed or mocked location
    segment_max_gap_s: float = 1800.0  # straight-line crossing only between fixes this close
    late_after_s: float = 300.0  # a violation found this long after its fix time is "late"
    curfew_stale_s: float = 1800.0  # at a curfew's start, a newer fix is needed to judge


LEVELS = ("strict", "normal", "lenient")


@dataclass(frozen=True, slots=True)
class TravelRules:
    """Travel permit (外出) thresholds: 2020 national measures by default, local rules differ."""

    office_max_days: int = 7  # up to this: the judicial office approves
    district_max_days: int = 30  # up to this: the district bureau, after the office's opinion
    window_days: int = 60  # more than `window_cap_days` within this window: the city bureau
    window_cap_days: int = 30
    max_days: int = 180  # no single permit longer than this
    notice_working_days: int = 0  # apply at least this many working days ahead (local: 3 or 7)
    yearly_cap_days: int | None = None  # total days a year (local: e.g. 60)
    return_grace_hours: float = 24.0  # to check back in (销假) after the end


@dataclass(frozen=True, slots=True)
class CheckinRules:
    """Reporting duties: expected interval per level, and how long a silence may last."""

    interval_strict_s: float = 300.0
    interval_normal_s: float = 900.0
    interval_lenient_s: float = 3600.0
    key_person_factor: float = 0.5  # key persons report twice as often
    buffer_factor: float = 1.0  # communication failure after interval * (1 + buffer_factor)
    min_buffer_s: float = 300.0
    phone_off_hours: float = 3.0
    rollcalls_strict: int = 3  # random roll-calls a day
    rollcalls_normal: int = 1
    rollcalls_lenient: int = 0
    rollcall_window_s: float = 3600.0  # to answer with a fresh fix
    waking_start: str = "08:00"
    waking_end: str = "21:00"
    warning_makes_strict: bool = True  # a recorded warning (警告) moves the person to strict

    def interval(self, level: str, key_person: bool, period_factor: float = 1.0) -> float:
        """Expected reporting interval in seconds (key persons and key periods tighten it)."""
        base = {"strict": self.interval_strict_s, "lenient": self.interval_lenient_s}.get(
            level, self.interval_normal_s)
        return base * (self.key_person_factor if key_person else 1.0) * period_factor

    def deadline_after(self, interval_s: float) -> float:
        """Silence allowed before a communication or location failure."""
        return interval_s + max(self.min_buffer_s, interval_s * self.buffer_factor)


@dataclass(frozen=True, slots=True)
class SanctionLadder:
    """Sanction suggestions (the system suggests, a person decides)."""

    reprimand_after_days: float = 0.0  # out of contact at all: a reprimand (训诫)...
    warning_after_days: float = 10.0  # ...more than this: a warning (警告)
    revocation_after_days: float = 30.0  # ...more than a month: a revocation request
    reprimands_for_warning: int = 2  # this many reprimands within the window: a warning
    reprimand_window_days: int = 365


@dataclass(frozen=True, slots=True)
class AckRules:
    """Time to acknowledge an alert, by severity; an unacknowledged alert climbs a level
    (office → district bureau → city bureau) and the new level gets the same time again."""

    critical_min: float = 5.0
    high_min: float = 15.0
    medium_min: float = 60.0
    low_min: float = 240.0

    def minutes(self, severity: str) -> float:
        """Minutes to acknowledge an alert of this severity (an unknown one gets the longest)."""
        return {"critical": self.critical_min, "high": self.high_min,
                "medium": self.medium_min}.get(severity, self.low_min)

    def by_severity(self) -> dict[str, float]:
        return {s: self.minutes(s) for s in ("critical", "high", "medium", "low")}


def _section(cls: Any, d: Mapping[str, Any] | None, what: str) -> Any:
    """One section of a stored profile; a section missing (a profile stored before it existed)
    takes the defaults, an unknown key is refused."""
    if not d:
        return cls()
    unknown = set(d) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown {what} rules {sorted(unknown)}")
    return cls(**d)


@dataclass(frozen=True, slots=True)
class RuleProfile:
    """A named, versioned set of rules per supervision level."""

    name: str
    version: int
    levels: Mapping[str, Rules] = field(default_factory=dict)
    travel: TravelRules = field(default_factory=TravelRules)
    checkin: CheckinRules = field(default_factory=CheckinRules)
    sanctions: SanctionLadder = field(default_factory=SanctionLadder)
    ack: AckRules = field(default_factory=AckRules)

    @property
    def label(self) -> str:
        """`name@version`, recorded with every decision."""
        return f"{self.name}@{self.version}"

    def rules_for(self, level: str, overrides: Mapping[str, Any] | None = None) -> Rules:
        """Rules of a level with a person's overrides applied (unknown keys are refused)."""
        base = self.levels.get(level) or self.levels["normal"]
        if not overrides:
            return base
        return replace(base, **validate_overrides(_current(overrides)))

    def to_dict(self) -> dict[str, Any]:
        """JSON form for storage."""
        return {"name": self.name, "version": self.version,
                "levels": {k: asdict(v) for k, v in self.levels.items()},
                "travel": asdict(self.travel), "checkin": asdict(self.checkin),
                "sanctions": asdict(self.sanctions), "ack": asdict(self.ack)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RuleProfile:
        """Inverse of `to_dict`; missing thresholds take the defaults."""
        return cls(str(d["name"]), int(d["version"]),
                   {k: Rules(**validate_overrides(_current(v))) for k, v in d["levels"].items()},
                   _section(TravelRules, d.get("travel"), "travel"),
                   _section(CheckinRules, d.get("checkin"), "check-in"),
                   SanctionLadder(**(d.get("sanctions") or {})),
                   _section(AckRules, d.get("ack"), "acknowledgement"))


_FIELD_TYPES = {f.name: f.type for f in fields(Rules)}
# Thresholds of earlier profile versions that the engine no longer uses: dropped when a stored
# profile or a person's stored overrides are read, refused in new input.
RETIRED = frozenset({"suspect_exit_fixes", "suspect_exit_span_s"})


def _current(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in RETIRED}


def validate_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Check names and types of threshold overrides; raise ValueError with the offending key."""
    out: dict[str, Any] = {}
    for k, v in overrides.items():
        if k not in _FIELD_TYPES:
            raise ValueError(f"unknown threshold {k!r}")
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
            raise ValueError(f"threshold {k!r} must be a non-negative number, not {v!r}")
        out[k] = int(v) if _FIELD_TYPES[k] in ("int", int) else float(v)
        if k == "away_fixes" and (v != out[k] or not 2 <= out[k] <= 8):  # 8: the fixes kept
            raise ValueError(f"threshold {k!r} must be 2-8, not {v!r}")
    return out


# The default: every level weighs evidence the same way, so none alarms on GPS jitter or a
# reflection; strict decides sooner (shallow evidence needs less time and the phone is asked
# more often, and counts every shallow answer to a follow-up), lenient waits longer for shallow
# evidence and asks less. Version 3 (issue 10, 2026-12-07): a satellite fix further out than
# the last counted one by 50 m beyond both accuracies decides (`away_m`), strict counts shallow
# answers 4 minutes on (`answer_independent_s`). Version 4 (2026-12-07): that departure needs
# three counted satellite fixes each further out than the one before (`away_fixes`): two
# reflections of a still phone land at different distances, a third further again is a path;
# or two within 2 minutes, the last reporting at least 2 m/s that cover the gain (`away_speed_mps`).
DEFAULT_PROFILE = RuleProfile(
    "national-2020",
    4,
    {
        "strict": Rules(shallow_weight=0.34, shallow_span_s=480.0, exit_span_s=60.0,
                        return_span_s=60.0, confirm_max_per_hour=6, answer_independent_s=240.0,
                        away_m=50.0, away_fixes=3, away_speed_mps=2.0),
        "normal": Rules(away_m=50.0, away_fixes=3, away_speed_mps=2.0),
        "lenient": Rules(shallow_fixes=4, shallow_span_s=900.0, exit_span_s=180.0,
                         return_span_s=180.0, undecidable_fixes=8, confirm_max_per_hour=2,
                         away_m=50.0, away_fixes=3, away_speed_mps=2.0),
    },
)
