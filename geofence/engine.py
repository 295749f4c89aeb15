"""The decision engine: (state, fixes) -> (new state, decisions, events), vectorised per batch.

Kept in two steps after Traccar: `membership` answers "where is this fix relative to its zones",
`fold` answers "what changed since the last fix". Both are pure; `now` is a parameter.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from geofence.crs import CRS_CODE, to_wgs84_mixed
from geofence.model import (
    AreaStatus,
    Decision,
    DeviceState,
    Event,
    EventKind,
    Fix,
    Membership,
    Reason,
    Subject,
)
from geofence.zones import M_UNDECIDABLE, MEMBERSHIPS, PreparedZone

RULE_AREA_EXIT = "area_exit.accuracy_circle_wholly_outside"
RULE_AREA_RETURN = "area_return.accuracy_circle_wholly_inside"


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Thresholds of the engine (a rule profile will supply them per person)."""

    max_decision_accuracy_m: float = 200.0


@dataclass
class BatchResult:
    """Everything the engine concluded from one batch."""

    decisions: list[Decision] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    states: dict[str, DeviceState] = field(default_factory=dict)  # only devices whose state changed


def _home_memberships(
    fixes: Sequence[Fix],
    lon: np.ndarray,
    lat: np.ndarray,
    subjects: Mapping[str, Subject],
    zones: Mapping[int, PreparedZone],
    config: EngineConfig,
) -> np.ndarray:
    """Membership of every fix in its subject's home area, one vectorised call per zone."""
    n = len(fixes)
    memb = np.full(n, M_UNDECIDABLE, dtype=np.int8)
    acc = np.array([np.nan if f.accuracy is None else f.accuracy for f in fixes], dtype=np.float64)
    usable = np.isfinite(acc) & (acc <= config.max_decision_accuracy_m)
    by_zone: dict[int, list[int]] = defaultdict(list)
    for i, f in enumerate(fixes):
        subj = subjects.get(f.device_id)
        if usable[i] and subj is not None and subj.home_zone_id in zones:
            by_zone[subj.home_zone_id].append(i)  # type: ignore[index]
    for zone_id, idx_list in by_zone.items():
        idx = np.asarray(idx_list)
        memb[idx] = zones[zone_id].membership(lon[idx], lat[idx], acc[idx])
    return memb


def fold(
    state: DeviceState, fix: Fix, membership: Membership
) -> tuple[DeviceState, EventKind | None]:
    """Advance one device's state by one in-order fix; return the new state and any change."""
    new = replace(state, last_fix_time=fix.time)
    if membership == Membership.OUTSIDE and state.area != AreaStatus.OUTSIDE:
        return replace(new, area=AreaStatus.OUTSIDE, area_since=fix.time), EventKind.AREA_EXIT
    if membership == Membership.INSIDE and state.area != AreaStatus.INSIDE:
        kind = EventKind.AREA_RETURN if state.area == AreaStatus.OUTSIDE else None
        return replace(new, area=AreaStatus.INSIDE, area_since=fix.time), kind
    return new, None


def evaluate(
    fixes: Sequence[Fix],
    subjects: Mapping[str, Subject],
    zones: Mapping[int, PreparedZone],
    states: Mapping[str, DeviceState],
    now: float,
    config: EngineConfig = EngineConfig(),
) -> BatchResult:
    """Decide a batch of fixes of many devices; each device's fixes are folded in fix-time order."""
    del now  # the first rule needs no clock; later rules (debounce spans, curfews) will
    result = BatchResult()
    if not fixes:
        return result
    order = sorted(range(len(fixes)), key=lambda i: (fixes[i].device_id, fixes[i].time))
    fixes = [fixes[i] for i in order]
    codes = np.fromiter((CRS_CODE[f.crs] for f in fixes), dtype=np.int8, count=len(fixes))
    lon, lat = to_wgs84_mixed(
        np.fromiter((f.lon for f in fixes), dtype=np.float64, count=len(fixes)),
        np.fromiter((f.lat for f in fixes), dtype=np.float64, count=len(fixes)),
        codes,
    )
    memb = _home_memberships(fixes, lon, lat, subjects, zones, config)
    current: dict[str, DeviceState] = {}
    for i, fix in enumerate(fixes):
        dev = fix.device_id
        state = current.get(dev) or states.get(dev) or DeviceState()
        m = MEMBERSHIPS[memb[i]]
        if fix.time <= state.last_fix_time:
            # Older than what this device already told us: stored, never allowed to undo
            # a later decision.
            result.decisions.append(
                Decision(fix, float(lon[i]), float(lat[i]), m, None, evaluated=False)
            )
            continue
        new_state, kind = fold(state, fix, m)
        current[dev] = new_state
        distance = None
        if kind is not None:
            subj = subjects[dev]
            zone = zones[subj.home_zone_id]  # type: ignore[index]
            distance = zone.signed_distance(float(lon[i]), float(lat[i]))
            rule = RULE_AREA_EXIT if kind == EventKind.AREA_EXIT else RULE_AREA_RETURN
            reason = Reason(rule, zone.zone_id, m, distance, fix.accuracy)
            result.events.append(Event(kind, dev, fix.time, float(lon[i]), float(lat[i]), reason))
        result.decisions.append(Decision(fix, float(lon[i]), float(lat[i]), m, distance, True))
    for dev, st in current.items():
        if st != states.get(dev):
            result.states[dev] = st
    return result
