"""Values the engine works on: fixes, zones, per-device state and events."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from enum import StrEnum
from typing import NamedTuple
from zoneinfo import ZoneInfo

from geofence.profile import Rules


class CRS(StrEnum):
    """Coordinate system a fix or zone was expressed in."""

    WGS84 = "wgs84"
    GCJ02 = "gcj02"
    BD09 = "bd09"


class Source(StrEnum):
    """Protocol a fix arrived through."""

    NATIVE_MQTT = "native_mqtt"
    OWNTRACKS_MQTT = "owntracks_mqtt"
    OWNTRACKS_HTTP = "owntracks_http"
    OSMAND_HTTP = "osmand_http"
    OSMAND_HTTP_RECEIVED_TIME = "osmand_http_received_time"  # no time sent: the receive time


class ZoneKind(StrEnum):
    """What a zone means for the person it is assigned to."""

    HOME_AREA = "home_area"
    EXCLUSION = "exclusion"
    DESTINATION = "destination"


class Membership(StrEnum):
    """Where a fix's accuracy circle lies relative to a zone (Tile38 vocabulary)."""

    INSIDE = "inside"  # circle wholly inside
    OUTSIDE = "outside"  # circle wholly outside
    BORDER = "border"  # circle straddles the boundary: decides nothing
    UNDECIDABLE = "undecidable"  # no usable accuracy, or no zone to compare with


class AreaStatus(StrEnum):
    """The engine's standing belief about a person and their allowed area."""

    UNKNOWN = "unknown"
    INSIDE = "inside"
    OUTSIDE = "outside"


class EventKind(StrEnum):
    """What changed since the previous fix (or since the clock moved on)."""

    AREA_EXIT = "area_exit"
    AREA_RETURN = "area_return"
    EXCLUSION_APPROACH = "exclusion_approach"  # early warning: within the zone's buffer
    EXCLUSION_ENTRY = "exclusion_entry"
    EXCLUSION_CROSSING = "exclusion_crossing"  # the segment between two fixes crossed it
    EXCLUSION_LEFT = "exclusion_left"
    CURFEW_BREACH = "curfew_breach"
    SPOOFING = "suspected_spoofing"
    ROLL_CALL_REQUEST = "roll_call_request"  # the engine cannot decide: ask the phone
    LOCATION_REQUEST = "location_request"  # suggestive evidence: ask the phone for a fix now


@dataclass(frozen=True, slots=True)
class Fix:
    """One location report, as decoded; lon/lat in the CRS named by `crs`."""

    device_id: str
    time: float  # fix time, UTC epoch seconds
    lon: float
    lat: float
    crs: CRS = CRS.WGS84
    accuracy: float | None = None  # metres, radius of the ~68% circle
    altitude: float | None = None
    speed: float | None = None  # m/s
    heading: float | None = None
    battery: float | None = None  # percent 0..100
    provider: str | None = None  # gps, network, fused, cell, ...
    mock: bool = False
    seq: int | None = None
    source: Source = Source.NATIVE_MQTT


# One piece of an exit streak's evidence: (t, beyond m, accuracy m, weight, lon, lat, link).
Evidence = tuple[float, float, float, float, float, float, float]


@dataclass(frozen=True, slots=True)
class Track:
    """Debounced standing of one person towards one area (allowed area, exclusion, curfew)."""

    status: AreaStatus = AreaStatus.UNKNOWN
    since: float | None = None  # fix time the current status began (first evidence)
    pending: int = 0  # evidence collected towards the opposite status
    pending_since: float | None = None
    flag: float | None = None  # exclusion: warned; curfew: window start already reported
    deep_count: int = 0  # the latest run of "deep" evidence (far beyond its accuracy circle)...
    deep_since: float | None = None  # ...and when it began
    suspect: bool = False  # the streak began with a jump the phone's movement cannot explain
    weight: float = 0.0  # allowed area: evidence weight of the pending streak (see engine)
    asked: float | None = None  # allowed area: when this streak last asked the phone for a fix
    # allowed area: the streak's latest fixes (t, beyond m, accuracy m, weight, lon, lat, link):
    # link 1.0 when the fix can be a step of a departure path (a satellite fix of positive
    # weight after a believable journey), 0.0 otherwise and in states stored before it existed
    evidence: tuple[Evidence, ...] = ()
    followup: float | None = None  # allowed area: when the clock last asked a silent phone

    def to_list(self) -> list[object]:
        """Compact serialisable form."""
        return [self.status.value, self.since, self.pending, self.pending_since, self.flag,
                self.deep_count, self.deep_since, self.suspect, self.weight, self.asked,
                [list(e) for e in self.evidence], self.followup]


    @classmethod
    def from_list(cls, v: list[object]) -> Track:
        """Inverse of `to_list` (an older, shorter form takes the defaults for what it lacks)."""
        st, since, pend, psince, flag, dcount, dsince, suspect, weight, asked, evidence, fup = (
            list(v) + [None] * 12)[:12]
        ev = tuple(tuple(float(x) for x in (e + [0.0] if len(e) == 6 else e))
                   for e in evidence  # type: ignore[attr-defined]
                   if isinstance(e, list) and len(e) in (6, 7)) if isinstance(evidence, list) else ()
        return cls(AreaStatus(str(st)), _f(since), int(pend or 0), _f(psince),  # type: ignore[call-overload]
                   _f(flag), int(dcount or 0) if not isinstance(dcount, bool) else 0,  # type: ignore[call-overload]
                   _f(dsince), bool(suspect), _f(weight) or 0.0, _f(asked),
                   ev, _f(fup))  # type: ignore[arg-type]


def _f(v: object) -> float | None:
    return float(v) if isinstance(v, int | float) else None


class LastFix(NamedTuple):
    """The last decidable fix (WGS-84): the start of the next segment and speed check.

    A named tuple rather than a dataclass: the engine makes one per decidable fix, and a tuple
    is made in half the time."""

    time: float
    lon: float
    lat: float
    accuracy: float


@dataclass(slots=True)
class DeviceState:
    """What the engine remembers about one device between fixes.

    Not frozen, for speed: the engine works on its own copy (`copy()`) and never mutates a
    state it was given.
    """

    last_fix_time: float = float("-inf")
    area: Track = field(default_factory=Track)
    zones: tuple[tuple[str, Track], ...] = ()  # ("x12", track) exclusion, Curfew.key: curfew
    last: LastFix | None = None
    undecidable: int = 0
    undecidable_since: float | None = None
    rollcall_asked: bool = False
    same_key: tuple[float, float, float | None] | None = None
    same_count: int = 0
    same_since: float | None = None
    frozen_flagged: bool = False
    mock_flagged: bool = False
    before: LastFix | None = None  # the decidable fix before `last`: was the phone still?
    requests: tuple[float, ...] = ()  # when location requests were emitted (the last hour)
    gap_s: float | None = None  # the phone's usual time between reports (answers left out)

    def copy(self) -> DeviceState:
        """A working copy (tracks and tuples inside are immutable, so shallow is enough)."""
        return DeviceState(self.last_fix_time, self.area, self.zones, self.last, self.undecidable,
                           self.undecidable_since, self.rollcall_asked, self.same_key,
                           self.same_count, self.same_since, self.frozen_flagged, self.mock_flagged,
                           self.before, self.requests, self.gap_s)

    def zone(self, key: str) -> Track:
        """The track of an exclusion or curfew zone."""
        for k, t in self.zones:
            if k == key:
                return t
        return Track()

    def set_zone(self, key: str, track: Track) -> None:
        """Replace one zone track (on a working copy)."""
        rest = tuple((k, t) for k, t in self.zones if k != key)
        self.zones = tuple(sorted(rest + ((key, track),)))

    def to_dict(self) -> dict[str, object]:
        """Serialisable form (for the per-device store)."""
        last = self.last
        return {
            "t": self.last_fix_time if self.last_fix_time != float("-inf") else None,
            "area": self.area.to_list(),
            "zones": {k: t.to_list() for k, t in self.zones},
            "last": None if last is None else [last.time, last.lon, last.lat, last.accuracy],
            "und": [self.undecidable, self.undecidable_since, self.rollcall_asked],
            "same": [None if self.same_key is None else list(self.same_key), self.same_count,
                     self.same_since, self.frozen_flagged],
            "mock": self.mock_flagged,
            "before": None if self.before is None else [self.before.time, self.before.lon,
                                                        self.before.lat, self.before.accuracy],
            "req": list(self.requests),
            "gap": self.gap_s,
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> DeviceState:
        """Inverse of `to_dict` (tolerates missing parts: a new field starts at its default)."""
        t = _f(d.get("t"))
        last = d.get("last")
        und = list(d.get("und") or [0, None, False])  # type: ignore[call-overload]
        same = list(d.get("same") or [None, 0, None, False])  # type: ignore[call-overload]
        zones = d.get("zones") or {}
        return cls(
            last_fix_time=t if t is not None else float("-inf"),
            area=Track.from_list(d["area"]) if isinstance(d.get("area"), list) else Track(),  # type: ignore[arg-type]
            zones=tuple(sorted((k, Track.from_list(v)) for k, v in zones.items())),  # type: ignore[attr-defined]
            last=LastFix(*last) if isinstance(last, list) else None,
            undecidable=int(und[0] or 0), undecidable_since=_f(und[1]), rollcall_asked=bool(und[2]),
            same_key=tuple(same[0]) if same[0] is not None else None,  # type: ignore[arg-type]
            same_count=int(same[1] or 0), same_since=_f(same[2]), frozen_flagged=bool(same[3]),
            mock_flagged=bool(d.get("mock", False)),
            before=LastFix(*before) if isinstance(before := d.get("before"), list) else None,
            requests=tuple(float(x) for x in d.get("req") or ()),  # type: ignore[attr-defined]
            gap_s=_f(d.get("gap")),
        )


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a decision was taken: shown to the officer."""

    rule: str
    zone_id: int | None
    membership: Membership
    distance_m: float | None  # signed distance to the border: >0 outside, <0 inside
    accuracy_m: float | None
    detail: tuple[tuple[str, object], ...] = ()

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "rule": self.rule,
            "zone_id": self.zone_id,
            "membership": self.membership.value,
            "distance_m": None if self.distance_m is None else round(self.distance_m, 1),
            "accuracy_m": self.accuracy_m,
            **dict(self.detail),
        }


@dataclass(frozen=True, slots=True)
class Event:
    """A change worth telling the alert layer about."""

    kind: EventKind
    device_id: str
    fix_time: float  # the fix that decided it
    lon: float  # WGS-84
    lat: float
    reason: Reason
    since: float | None = None  # when the condition began (first evidence)
    late: bool = False  # found well after its fix time (buffered upload, out-of-order fix)
    detected_at: float | None = None
    retro: bool = False  # from fixes older than the device state, judged on their own


@dataclass(frozen=True, slots=True)
class Decision:
    """The engine's verdict on one fix."""

    fix: Fix
    lon: float  # WGS-84
    lat: float
    membership: Membership  # in the allowed area
    usable: bool  # can decide something (accuracy within the limit, not cell-only)
    evaluated: bool  # False when the fix was older than the device state (stored, judged apart)
    index: int = -1  # position of `fix` in the sequence given to `evaluate`


@dataclass(frozen=True, slots=True)
class Permit:
    """An approved travel permit: its destination joins the allowed area during [start, end).

    With a `corridor_zone_id` (see `geofence/corridor.py`), the way between the home area and
    the destination is allowed too, but only within the `transit` spans [from, until) that lie
    inside [start, end): going there after the start, coming back before the end. Staying
    somewhere on the way beyond them is an exit like any other.
    """

    zone_id: int
    start: float
    end: float
    corridor_zone_id: int | None = None
    transit: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True, slots=True)
class Exclusion:
    """A zone the person must not enter (prohibition order); buffer > 0 warns on approach."""

    zone_id: int
    buffer_m: float = 0.0


@dataclass(frozen=True, slots=True)
class Curfew:
    """Must be inside `zone_id` between local `start` and `end` ("22:00", "06:00")."""

    zone_id: int
    start: str
    end: str
    tz: str = "Asia/Shanghai"

    @property
    def key(self) -> str:
        """State key of this curfew: its own identity, never its place in a list."""
        return f"c{self.zone_id}-{self.start}-{self.end}"

    def window_start(self, t: float) -> float | None:
        """Epoch start of the window containing `t`, or None when `t` is outside every window."""
        tz = ZoneInfo(self.tz)
        local = datetime.fromtimestamp(t, tz)
        sh, sm = (int(x) for x in self.start.split(":"))
        eh, em = (int(x) for x in self.end.split(":"))
        for back in (0, 1):
            day = (local - timedelta(days=back)).date()
            start = datetime.combine(day, time(sh, sm), tz)
            end_day = day if (eh, em) > (sh, sm) else day + timedelta(days=1)
            end = datetime.combine(end_day, time(eh, em), tz)
            if start.timestamp() <= t < end.timestamp():
                return start.timestamp()
        return None


@dataclass(frozen=True, slots=True)
class Subject:
    """Who a device speaks for, the zones that apply to them, and their thresholds."""

    supervisee_id: int
    home_zone_id: int | None
    permits: tuple[Permit, ...] = ()
    exclusions: tuple[Exclusion, ...] = ()
    curfews: tuple[Curfew, ...] = ()
    rules: Rules = field(default_factory=Rules)
    profile: str = ""  # the rule profile label these rules came from

    def allowed_zone_ids(self, t: float) -> list[int]:
        """Home area plus the destinations of permits valid at `t` (and their corridors in transit)."""
        ids = [] if self.home_zone_id is None else [self.home_zone_id]
        if not self.permits:
            return ids
        for p in self.permits:
            if p.start <= t < p.end:
                ids.append(p.zone_id)
                if p.corridor_zone_id is not None and any(a <= t < b for a, b in p.transit):
                    ids.append(p.corridor_zone_id)
        return ids
