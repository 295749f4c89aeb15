"""One sentence per alert saying why it fired, from the engine's recorded reason."""

from __future__ import annotations

from typing import Any

_TEMPLATES = {
    "area_exit.accuracy_circle_wholly_outside":
        "Left the allowed area: from {since} the reported position, with its {acc} accuracy "
        "circle, lay wholly outside zone {zone} ({dist} beyond the border) on enough "
        "consecutive fixes.",
    "exclusion_entry.accuracy_circle_wholly_inside":
        "Entered prohibited zone {zone}: from {since} the accuracy circle ({acc}) lay wholly "
        "inside it ({dist} inside the border) on enough consecutive fixes.",
    "exclusion_crossing.segment_through_zone":
        "Passed through prohibited zone {zone}: the straight path between the fixes of {since} "
        "and {fix} crosses it deeper than either fix's accuracy.",
    "exclusion_approach.within_buffer":
        "Approaching prohibited zone {zone}: within its early-warning buffer ({dist} from the "
        "border, accuracy {acc}).",
    "curfew_breach.outside_during_window":
        "Curfew breach: outside zone {zone} ({dist} beyond the border, accuracy {acc}) during "
        "the curfew {curfew}.",
    "curfew_breach.outside_when_window_opened":
        "Curfew breach: the last fixes before the curfew {curfew} opened placed the person "
        "outside zone {zone} ({dist} beyond the border).",
    "spoofing.mock_location_flag": "The phone reported a mock (simulated) location at {fix}.",
    "spoofing.impossible_speed":
        "Impossible movement: {jump} between fixes of {since} and {fix}, {speed} beyond both "
        "accuracy circles.",
    "spoofing.identical_fixes":
        "{count} bit-identical fixes since {since}: a frozen or replayed location.",
}


def _m(v: Any) -> str:
    return "unknown" if v is None else f"{abs(float(v)):,.0f} m"


def explain(reason: dict[str, Any]) -> str:
    """Render the engine's reason as a sentence for the officer."""
    template = _TEMPLATES.get(str(reason.get("rule")))
    if template is None:
        return f"Rule {reason.get('rule')!s} fired."
    speed = reason.get("speed_mps")
    return template.format(
        since=reason.get("since") or reason.get("fix_time") or "unknown",
        fix=reason.get("fix_time") or "unknown",
        acc=_m(reason.get("accuracy_m")),
        dist=_m(reason.get("distance_m")),
        zone=reason.get("zone_id"),
        curfew=reason.get("curfew", ""),
        jump=_m(reason.get("jump_m")),
        speed="unknown speed" if speed is None else f"{float(speed) * 3.6:,.0f} km/h",
        count=reason.get("identical_fixes", "many"),
    )
