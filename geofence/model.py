"""Values the engine works on: fixes, zones, per-device state and events."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


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
    """What changed since the previous fix."""

    AREA_EXIT = "area_exit"
    AREA_RETURN = "area_return"


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


@dataclass(frozen=True, slots=True)
class DeviceState:
    """What the engine remembers about one device between fixes."""

    last_fix_time: float = float("-inf")
    area: AreaStatus = AreaStatus.UNKNOWN
    area_since: float | None = None  # fix time at which `area` was decided

    def to_dict(self) -> dict[str, object]:
        """Serialisable form (for the per-device store)."""
        return {"t": self.last_fix_time, "area": self.area.value, "since": self.area_since}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> DeviceState:
        """Inverse of `to_dict`."""
        t = d.get("t")
        since = d.get("since")
        return cls(
            last_fix_time=float(t) if isinstance(t, (int, float)) else float("-inf"),
            area=AreaStatus(str(d.get("area", AreaStatus.UNKNOWN.value))),
            area_since=float(since) if isinstance(since, (int, float)) else None,
        )


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a decision was taken: shown to the officer."""

    rule: str
    zone_id: int | None
    membership: Membership
    distance_m: float | None  # signed distance to the border: >0 outside, <0 inside
    accuracy_m: float | None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "rule": self.rule,
            "zone_id": self.zone_id,
            "membership": self.membership.value,
            "distance_m": None if self.distance_m is None else round(self.distance_m, 1),
            "accuracy_m": self.accuracy_m,
        }


@dataclass(frozen=True, slots=True)
class Event:
    """A change worth telling the alert layer about."""

    kind: EventKind
    device_id: str
    fix_time: float
    lon: float  # WGS-84
    lat: float
    reason: Reason
    late: bool = False  # found after later fixes had already been decided


@dataclass(frozen=True, slots=True)
class Decision:
    """The engine's verdict on one fix."""

    fix: Fix
    lon: float  # WGS-84
    lat: float
    membership: Membership
    distance_m: float | None
    evaluated: bool  # False when the fix was older than the device state (stored, not decided)


@dataclass(frozen=True, slots=True)
class Subject:
    """Who a device speaks for, and the zones that apply to them."""

    supervisee_id: int
    home_zone_id: int | None
    extra: dict[str, object] = field(default_factory=dict)
