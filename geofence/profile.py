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
    exit_fixes: int = 3  # wholly-outside evidence needed before an area exit...
    exit_span_s: float = 90.0  # ...spanning at least this long
    return_fixes: int = 3  # the same care before the person counts as back inside
    return_span_s: float = 90.0
    deep_margin_m: float = 1000.0  # two fixes this far beyond their circles decide faster
    suspect_exit_fixes: int = 6  # an exit streak that began with an unexplained jump...
    suspect_exit_span_s: float = 300.0  # ...needs this much more evidence
    jump_speed_slack_mps: float = 0.5  # a jump is unexplained beyond (reported speed + slack)·Δt
    jump_slack_m: float = 20.0  # + this
    exclusion_fixes: int = 2  # mirror rule for exclusion zones
    exclusion_span_s: float = 30.0
    undecidable_fixes: int = 6  # this many undecidable fixes in a row ask for a roll-call...
    undecidable_span_s: float = 1800.0  # ...or undecidable for this long
    max_speed_mps: float = 70.0  # 250 km/h beyond both accuracy circles: not a real move
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


def _checkin_from(d: Mapping[str, Any] | None) -> CheckinRules:
    if not d:
        return CheckinRules()
    unknown = set(d) - {f.name for f in fields(CheckinRules)}
    if unknown:
        raise ValueError(f"unknown check-in rules {sorted(unknown)}")
    return CheckinRules(**d)


def _travel_from(d: Mapping[str, Any] | None) -> TravelRules:
    if not d:
        return TravelRules()
    names = {f.name for f in fields(TravelRules)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown travel rules {sorted(unknown)}")
    return TravelRules(**d)


@dataclass(frozen=True, slots=True)
class RuleProfile:
    """A named, versioned set of rules per supervision level."""

    name: str
    version: int
    levels: Mapping[str, Rules] = field(default_factory=dict)
    travel: TravelRules = field(default_factory=TravelRules)
    checkin: CheckinRules = field(default_factory=CheckinRules)
    sanctions: SanctionLadder = field(default_factory=SanctionLadder)

    @property
    def label(self) -> str:
        """`name@version`, recorded with every decision."""
        return f"{self.name}@{self.version}"

    def rules_for(self, level: str, overrides: Mapping[str, Any] | None = None) -> Rules:
        """Rules of a level with a person's overrides applied (unknown keys are refused)."""
        base = self.levels.get(level) or self.levels["normal"]
        if not overrides:
            return base
        return replace(base, **validate_overrides(overrides))

    def to_dict(self) -> dict[str, Any]:
        """JSON form for storage."""
        return {"name": self.name, "version": self.version,
                "levels": {k: asdict(v) for k, v in self.levels.items()},
                "travel": asdict(self.travel), "checkin": asdict(self.checkin),
                "sanctions": asdict(self.sanctions)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RuleProfile:
        """Inverse of `to_dict`; missing thresholds take the defaults."""
        return cls(str(d["name"]), int(d["version"]),
                   {k: Rules(**validate_overrides(v)) for k, v in d["levels"].items()},
                   _travel_from(d.get("travel")), _checkin_from(d.get("checkin")),
                   SanctionLadder(**(d.get("sanctions") or {})))


_FIELD_TYPES = {f.name: f.type for f in fields(Rules)}


def validate_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Check names and types of threshold overrides; raise ValueError with the offending key."""
    out: dict[str, Any] = {}
    for k, v in overrides.items():
        if k not in _FIELD_TYPES:
            raise ValueError(f"unknown threshold {k!r}")
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
            raise ValueError(f"threshold {k!r} must be a non-negative number, not {v!r}")
        out[k] = int(v) if _FIELD_TYPES[k] in ("int", int) else float(v)
    return out


# The default: strict supervision decides faster, lenient waits longer; all keep the same
# accuracy-aware evidence rule so that none of them alarms on GPS jitter.
DEFAULT_PROFILE = RuleProfile(
    "national-2020",
    1,
    {
        "strict": Rules(exit_fixes=3, exit_span_s=60.0, return_fixes=3, return_span_s=60.0),
        "normal": Rules(),
        "lenient": Rules(exit_fixes=3, exit_span_s=180.0, return_fixes=3, return_span_s=180.0,
                         undecidable_fixes=8),
    },
)
