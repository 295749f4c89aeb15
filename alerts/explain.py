"""One sentence per alert saying why it fired, from the engine's recorded reason."""

from __future__ import annotations

from typing import Any

_TEMPLATES = {
    "area_exit.accuracy_circle_wholly_outside":
        "Left the allowed area: from {since} the reported position, with its {acc} accuracy "
        "circle, lay wholly outside zone {zone} ({dist} beyond the border).",
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


_EXIT_HOW = {
    "one_strong_fix": "one fix of good accuracy lay {beyond} beyond the border, further than a "
                      "reflection or its accuracy can throw a phone that did not move",
    "evidence_weight": "{n} fixes lay outside, at least one beyond a reflection's reach "
                       "(evidence {weight} of {needed} needed): {fixes}",
    "shallow_evidence_over_time": "{n} fixes lay outside for {minutes}, each within a "
                                  "reflection's reach but together too long for one: {fixes}",
}


def _exit_how(reason: dict[str, Any]) -> str:
    """The evidence behind an area exit (the engine's `evidence` list), as a clause."""
    how = _EXIT_HOW.get(str(reason.get("decided_by")))
    evidence = reason.get("evidence")
    if how is None or not isinstance(evidence, list) or not evidence:
        return ""
    items = [e for e in evidence if isinstance(e, dict)]
    fixes = "; ".join(f"{_m(e.get('beyond_m'))} out at ±{_m(e.get('accuracy_m'))}" for e in items)
    times = [float(e["t"]) for e in items if isinstance(e.get("t"), int | float)]
    minutes = f"{(max(times) - min(times)) / 60:.0f} min" if times else "some time"
    return " Evidence: " + how.format(
        beyond=_m(items[-1].get("beyond_m")), n=reason.get("fixes", len(items)),
        weight=reason.get("weight"), needed=reason.get("needed", 1.0), fixes=fixes, minutes=minutes) + "."


def explain(reason: dict[str, Any]) -> str:
    """Render the engine's reason as a sentence for the officer."""
    if reason.get("rule") == "area_exit.accuracy_circle_wholly_outside":
        return _render(reason) + _exit_how(reason)
    return _render(reason)


def _render(reason: dict[str, Any]) -> str:
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
