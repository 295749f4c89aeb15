"""Sanction suggestions from the profile's ladder: shown to officers, never applied."""

from __future__ import annotations

from dataclasses import dataclass

from geofence.profile import SanctionLadder


@dataclass(frozen=True, slots=True)
class Suggestion:
    """What the ladder suggests, and why."""

    kind: str | None  # reprimand, warning, revocation_request, or None
    reason: str


def suggest(ladder: SanctionLadder, out_of_contact_days: float | None,
            recent_reprimands: int) -> Suggestion:
    """The ladder: out of contact ≤10 days → reprimand, >10 → warning, >30 → revocation request;
    repeated reprimands → warning. Pure: the caller supplies the facts."""
    if out_of_contact_days is not None and out_of_contact_days > ladder.revocation_after_days:
        return Suggestion("revocation_request",
                          f"out of contact for {out_of_contact_days:.1f} days "
                          f"(more than {ladder.revocation_after_days:g})")
    if out_of_contact_days is not None and out_of_contact_days > ladder.warning_after_days:
        return Suggestion("warning", f"out of contact for {out_of_contact_days:.1f} days "
                                     f"(more than {ladder.warning_after_days:g})")
    if out_of_contact_days is not None and out_of_contact_days > ladder.reprimand_after_days:
        if recent_reprimands + 1 >= ladder.reprimands_for_warning:
            return Suggestion("warning", f"out of contact again after {recent_reprimands} "
                                         f"reprimand(s) within {ladder.reprimand_window_days} days")
        return Suggestion("reprimand", f"out of contact for {out_of_contact_days:.1f} days")
    return Suggestion(None, "no current ground on the ladder")
