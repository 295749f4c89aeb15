"""Sanction suggestions from the profile's ladder: shown to officers, never applied."""

from __future__ import annotations

from dataclasses import dataclass

from geofence.profile import SanctionLadder


@dataclass(frozen=True, slots=True)
class Suggestion:
    """What the ladder suggests, and why."""

    kind: str | None  # reprimand, warning, revocation_request, or None
    reason: str
    reason_zh: str = ""  # the same, in Chinese (the console's first language)


def suggest(ladder: SanctionLadder, out_of_contact_days: float | None,
            recent_reprimands: int) -> Suggestion:
    """The ladder: out of contact ≤10 days → reprimand, >10 → warning, >30 → revocation request;
    repeated reprimands → warning. Pure: the caller supplies the facts."""
    days = out_of_contact_days
    if days is not None and days > ladder.revocation_after_days:
        return Suggestion("revocation_request",
                          f"out of contact for {days:.1f} days "
                          f"(more than {ladder.revocation_after_days:g})",
                          f"失联 {days:.1f} 天（超过 {ladder.revocation_after_days:g} 天）")
    if days is not None and days > ladder.warning_after_days:
        return Suggestion("warning", f"out of contact for {days:.1f} days "
                                     f"(more than {ladder.warning_after_days:g})",
                          f"失联 {days:.1f} 天（超过 {ladder.warning_after_days:g} 天）")
    if days is not None and days > ladder.reprimand_after_days:
        if recent_reprimands + 1 >= ladder.reprimands_for_warning:
            return Suggestion("warning", f"out of contact again after {recent_reprimands} "
                                         f"reprimand(s) within {ladder.reprimand_window_days} days",
                              f"{ladder.reprimand_window_days} 天内已受 {recent_reprimands} 次训诫后"
                              f"再次失联")
        return Suggestion("reprimand", f"out of contact for {days:.1f} days",
                          f"失联 {days:.1f} 天")
    return Suggestion(None, "no current ground on the ladder", "目前没有处罚依据")
