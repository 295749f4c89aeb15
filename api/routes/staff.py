"""Staff accounts: listed within one's subtree; created, disabled, re-roled and unlocked by
heads and administrators, never above their own rank."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import select

from api.authz import CITY, EVERYONE, MANAGERS, RANK, access
from api.deps import CurrentStaff, RedisDep, SessionDep, SettingsDep, StaffContext, audit, require_unit
from api.errors import Conflict, DomainError, Forbidden, NotFound
from api.schemas import DbId, StaffIn, StaffOut, StaffPatch
from api.security import hash_password
from api.sessions import end_all_sessions
from store.enums import OrgKind, Role
from store.models import OrgUnit, Staff

router = APIRouter(prefix="/staff", tags=["staff"])

# Where each role sits in the organisation (an auditor audits the subtree it sits at).
ROLE_UNIT = {Role.OFFICER: {OrgKind.JUDICIAL_OFFICE}, Role.OFFICE_HEAD: {OrgKind.JUDICIAL_OFFICE},
             Role.DISTRICT_SUPERVISOR: {OrgKind.DISTRICT_BUREAU},
             Role.CITY_ADMIN: {OrgKind.CITY_BUREAU},
             Role.AUDITOR: {OrgKind.CITY_BUREAU, OrgKind.DISTRICT_BUREAU}}


def _check_unit(role: Role, unit: OrgUnit) -> None:
    if unit.kind not in {k.value for k in ROLE_UNIT[role]}:
        raise DomainError(f"a {role.value} belongs to a "
                          f"{' or '.join(sorted(k.value for k in ROLE_UNIT[role]))}, not a {unit.kind}",
                          "role_unit_mismatch")


def _may_grant(ctx: StaffContext, role: Role) -> None:
    mine = Role(ctx.staff.role)
    if role in (CITY, Role.AUDITOR) and mine != CITY:
        raise Forbidden("only a city administrator creates city administrators and auditors")
    if RANK[role] > RANK[mine]:
        raise Forbidden(f"a {mine.value} cannot give the role {role.value}")


def _target(session: SessionDep, ctx: StaffContext, staff_id: int) -> Staff:
    staff = session.get(Staff, staff_id)
    if staff is None or not ctx.can_see_unit(staff.org_unit_id):
        raise NotFound(f"staff member {staff_id} not found")
    return staff


@router.get("", response_model=list[StaffOut], **access(EVERYONE))
def list_staff(ctx: CurrentStaff, session: SessionDep) -> list[Staff]:
    """Accounts of the caller's subtree."""
    return list(session.scalars(select(Staff).where(Staff.org_unit_id.in_(ctx.unit_ids))
                                .order_by(Staff.id)))


@router.post("", response_model=StaffOut, status_code=201, **access(MANAGERS))
def create_staff(body: StaffIn, ctx: CurrentStaff, session: SessionDep, request: Request) -> Staff:
    """A new account in the caller's subtree, at a rank no higher than the caller's."""
    require_unit(ctx, body.org_unit_id)
    _may_grant(ctx, body.role)
    unit = session.get(OrgUnit, body.org_unit_id)
    assert unit is not None
    _check_unit(body.role, unit)
    if session.scalar(select(Staff.id).where(Staff.username == body.username)) is not None:
        raise Conflict(f"username {body.username} is taken")
    staff = Staff(org_unit_id=unit.id, username=body.username, full_name=body.full_name,
                  role=body.role.value, password_hash=hash_password(body.password))
    session.add(staff)
    session.flush()
    audit(session, ctx, request, "staff.create", f"staff:{staff.id}", role=body.role.value,
          unit=unit.id)
    session.commit()
    return staff


@router.patch("/{staff_id}", response_model=StaffOut, **access(MANAGERS))
def update_staff(staff_id: DbId, body: StaffPatch, ctx: CurrentStaff, session: SessionDep,
                 request: Request, r: RedisDep, settings: SettingsDep) -> Staff:
    """Disable or enable an account, change its role, or lift a lockout. Every change ends the
    account's sessions at once (its tokens and live feeds stop)."""
    staff = _target(session, ctx, staff_id)
    if staff.id == ctx.id and (body.role is not None or body.active is False):
        raise Forbidden("you cannot change your own role or disable yourself")
    _may_grant(ctx, Role(staff.role))  # no acting on a higher rank
    changes: dict[str, Any] = {}
    if body.role is not None and body.role.value != staff.role:
        _may_grant(ctx, body.role)
        unit = session.get(OrgUnit, staff.org_unit_id)
        assert unit is not None
        _check_unit(body.role, unit)
        changes["role"] = [staff.role, body.role.value]
        staff.role = body.role.value
    if body.active is not None and body.active != staff.active:
        changes["active"] = body.active
        staff.active = body.active
    if body.unlock and (staff.locked_until is not None or staff.failed_logins):
        changes["unlocked"] = True
        staff.locked_until, staff.failed_logins = None, 0
    audit(session, ctx, request, "staff.update", f"staff:{staff.id}", **changes)
    session.commit()
    if "role" in changes or changes.get("active") is False:
        end_all_sessions(r, settings, staff.id)
    return staff
