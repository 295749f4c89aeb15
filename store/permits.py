"""Travel permit workflow (外出/销假): request, opinion, decision, amendment, return.

Orchestration over the ORM (a slow, human-paced workflow); the rules themselves are pure, in
`geofence/travel.py`, read from the active rule profile. Every step leaves a permit event, and
every outcome the phone must know is queued as a device command in the outbox.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session

from geofence.profile import DEFAULT_PROFILE, RuleProfile
from geofence.travel import TIER_ORDER, PermitRefused, Span, Tier, check_request
from store.enums import Role
from store.models import PermitEvent, RuleProfileRow, Supervisee, TravelPermit

ROLE_TIER = {
    Role.OFFICER: Tier.OFFICE,
    Role.OFFICE_HEAD: Tier.OFFICE,
    Role.DISTRICT_SUPERVISOR: Tier.DISTRICT,
    Role.CITY_ADMIN: Tier.CITY,
}
REASONS = ("medical", "schooling", "litigation", "family", "work")
OPEN = ("requested", "approved")


class PermitError(Exception):
    """A workflow step that is not allowed now; `status` is the HTTP status to answer with."""

    def __init__(self, code: str, detail: str, status: int = 409) -> None:
        super().__init__(detail)
        self.code, self.detail, self.status = code, detail, status


def active_profile(session: Session) -> RuleProfile:
    """The stored active rule profile, or the national default."""
    row = session.scalars(select(RuleProfileRow).where(RuleProfileRow.active)).first()
    return DEFAULT_PROFILE if row is None else RuleProfile.from_dict(row.body)


def _ts(d: datetime) -> float:
    return d.timestamp()


def _others(session: Session, supervisee_id: int, exclude: int | None = None) -> list[Span]:
    q = select(TravelPermit).where(TravelPermit.supervisee_id == supervisee_id,
                                   TravelPermit.status.in_(OPEN + ("returned",)))
    spans = []
    for p in session.scalars(q):
        if p.id == exclude:
            continue
        end = p.returned_at if p.status == "returned" and p.returned_at else p.end_at
        spans.append(Span(_ts(p.start_at), _ts(end)))
    return spans


def record(session: Session, permit: TravelPermit, action: str, staff_id: int | None = None,
           device_id: str | None = None, **detail: Any) -> None:
    """Append to the permit's history."""
    session.add(PermitEvent(permit_id=permit.id, staff_id=staff_id, device_id=device_id,
                            action=action, detail=orjson.loads(orjson.dumps(detail, default=str))))


def request(session: Session, supervisee: Supervisee, reason: str, destination_zone_id: int,
            start: datetime, end: datetime, details: str, now: float,
            staff_id: int | None = None, device_id: str | None = None) -> TravelPermit:
    """Create a permit request after checking it against the profile."""
    if reason not in REASONS:
        raise PermitError("bad_reason", f"reason must be one of {', '.join(REASONS)}", 422)
    profile = active_profile(session)
    try:
        tier = check_request(profile.travel, _ts(start), _ts(end), now,
                             _others(session, supervisee.id))
    except PermitRefused as e:
        raise PermitError(e.code, e.detail, 422) from e
    permit = TravelPermit(supervisee_id=supervisee.id, office_id=supervisee.office_id,
                          reason=reason, details=details, destination_zone_id=destination_zone_id,
                          start_at=start, end_at=end, required_tier=tier.value,
                          requested_by_staff=staff_id, requested_by_device=device_id,
                          profile=profile.label)
    session.add(permit)
    session.flush()
    record(session, permit, "requested", staff_id, device_id, tier=tier.value,
           start=start, end=end, profile=profile.label)
    return permit


def _tier_of(role: str) -> Tier | None:
    try:
        return ROLE_TIER.get(Role(role))
    except ValueError:
        return None


def opinion(session: Session, permit: TravelPermit, staff_id: int, role: str, recommend: bool,
            note: str) -> None:
    """The judicial office's opinion, required before a district or city decision."""
    if _tier_of(role) != Tier.OFFICE:
        raise PermitError("wrong_tier", "only the judicial office gives the office's opinion", 403)
    if permit.status != "requested":
        raise PermitError("not_pending", f"permit is {permit.status}")
    permit.office_opinion = ("recommend: " if recommend else "do not recommend: ") + note
    permit.office_opinion_by = staff_id
    record(session, permit, "office_opinion", staff_id, recommend=recommend, note=note)


def decide(session: Session, permit: TravelPermit, staff_id: int, role: str, approve: bool,
           note: str | None) -> None:
    """Approve or reject: only staff of exactly the required tier may."""
    tier = Tier(permit.required_tier)
    if _tier_of(role) != tier:
        raise PermitError("wrong_tier", f"this permit needs the {tier.value} tier's decision", 403)
    if permit.status != "requested":
        raise PermitError("not_pending", f"permit is {permit.status}")
    if TIER_ORDER[tier] > 0 and permit.office_opinion is None:
        raise PermitError("opinion_missing", "the judicial office's opinion comes first")
    if not approve and not note:
        raise PermitError("note_required", "a rejection needs a reason", 422)
    permit.status = "approved" if approve else "rejected"
    if approve:
        permit.approved_end_at = permit.end_at
    elif permit.approved_end_at is not None:
        # A rejected amendment: the trip goes on under the end approved before.
        permit.status, permit.end_at = "approved", permit.approved_end_at
    permit.decided_by, permit.decision_note = staff_id, note
    permit.decided_at = datetime.now(UTC)
    record(session, permit, "approved" if approve else "rejected", staff_id, note=note)


def revoke(session: Session, permit: TravelPermit, staff_id: int, role: str, note: str) -> None:
    """Withdraw an approved permit (staff of the required tier or above)."""
    t = _tier_of(role)
    if t is None or TIER_ORDER[t] < TIER_ORDER[Tier(permit.required_tier)]:
        raise PermitError("wrong_tier", "revoking needs the approving tier or above", 403)
    if permit.status != "approved":
        raise PermitError("not_approved", f"permit is {permit.status}")
    permit.status, permit.decision_note = "revoked", note
    permit.decided_by, permit.decided_at = staff_id, datetime.now(UTC)
    record(session, permit, "revoked", staff_id, note=note)


def amend(session: Session, permit: TravelPermit, staff_id: int | None, device_id: str | None,
          end: datetime, note: str, now: float) -> None:
    """Change the end; the new span is checked again and decided again (its tier may change)."""
    if permit.status not in OPEN:
        raise PermitError("not_open", f"permit is {permit.status}")
    profile = active_profile(session)
    # No notice period for an amendment: the trip may be under way.
    rules = replace(profile.travel, notice_working_days=0)
    try:
        tier = check_request(rules, _ts(permit.start_at), _ts(end), now,
                             _others(session, permit.supervisee_id, exclude=permit.id))
    except PermitRefused as e:
        raise PermitError(e.code, e.detail, 422) from e
    old = permit.end_at
    # The approved span stays in force (allowed area, return deadline) until the new one is decided.
    permit.end_at, permit.required_tier, permit.status = end, tier.value, "requested"
    permit.overdue_alerted_at = None
    permit.decided_by = permit.decided_at = None
    if TIER_ORDER[tier] > 0:
        permit.office_opinion = permit.office_opinion_by = None
    record(session, permit, "amended", staff_id, device_id, old_end=old, new_end=end,
           tier=tier.value, note=note)


def check_in(session: Session, permit: TravelPermit, at: datetime, staff_id: int | None = None,
             device_id: str | None = None, **detail: Any) -> None:
    """销假: the return is recorded (the caller closes the overdue-return alert, if any, through
    `alerts.service.close_overdue_return`)."""
    # An amended trip waiting for its decision is still under way on its approved span.
    under_way = permit.status == "approved" or (
        permit.status == "requested" and permit.approved_end_at is not None)
    if not under_way:
        raise PermitError("not_approved", f"permit is {permit.status}")
    permit.status, permit.returned_at = "returned", at
    record(session, permit, "returned", staff_id, device_id, **detail)


def grace(profile: RuleProfile) -> timedelta:
    """Time after the end to be back and checked in."""
    return timedelta(hours=profile.travel.return_grace_hours)
