"""The audit log for auditors: query it, verify its hash chain. Reading it is itself audited.

An auditor sees the rows written by staff of their own organisation subtree; rows without a
staff member (logins, failed logins, devices, workers) only at city level.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel
from sqlalchemy import ColumnElement, or_, select

from api.authz import access
from api.deps import CurrentStaff, SessionDep, SettingsDep, StaffContext, audit
from api.errors import Invalid
from api.schemas import DbId
from store.audit import verify
from store.enums import OrgKind, Role
from store.models import AuditLog, Staff

router = APIRouter(prefix="/audit", tags=["audit"])

# Only auditors and city administrators read the audit log.
AUDIT_ROLES = frozenset({Role.AUDITOR, Role.CITY_ADMIN})

AuditPurposeQ = Query("audit review", max_length=200,
                      description="Why the audit log is read; recorded in the audit log")


class AuditEntryOut(BaseModel):
    """One audit row with its place in the hash chain."""

    id: int
    seq: int | None
    at: datetime
    staff_id: int | None
    staff_username: str | None
    action: str
    target: str
    purpose: str
    remote: str | None
    detail: dict[str, Any]
    hash: str | None  # hex


class AuditPage(BaseModel):
    """Newest first; pass `next_before_seq` as `before_seq` for the next page."""

    items: list[AuditEntryOut]
    next_before_seq: int | None


class AuditProblemOut(BaseModel):
    kind: str
    seq: int | None
    id: int | None
    message: str


class AuditVerifyOut(BaseModel):
    """The outcome of recomputing the whole chain."""

    ok: bool
    rows: int
    head_seq: int
    head_hash: str
    first_problem: AuditProblemOut | None
    problem_count: int


def visible_rows(ctx: StaffContext) -> ColumnElement[bool]:
    """Rows by staff of the caller's subtree; rows without staff only for city-level staff."""
    by_subtree = AuditLog.staff_id.in_(select(Staff.id).where(Staff.org_unit_id.in_(ctx.unit_ids)))
    if ctx.unit.kind == OrgKind.CITY_BUREAU:
        return or_(by_subtree, AuditLog.staff_id.is_(None))
    return by_subtree


@router.get("", response_model=AuditPage, **access(AUDIT_ROLES))
def list_audit(
    ctx: CurrentStaff,
    session: SessionDep,
    request: Request,
    staff_id: DbId | None = None,
    action: str | None = Query(None, max_length=100),
    target_prefix: str | None = Query(None, max_length=200),
    since: datetime | None = Query(None, description="at >= since (with a timezone)"),
    until: datetime | None = Query(None, description="at < until (with a timezone)"),
    before_seq: int | None = Query(None, ge=1, le=2**62,
                                   description="page cursor: rows before this seq"),
    limit: int = Query(100, ge=1, le=1000),
    purpose: str = AuditPurposeQ,
) -> AuditPage:
    """Audit rows, newest first (chain order), filtered and paged."""
    for name, t in (("since", since), ("until", until)):
        if t is not None and t.tzinfo is None:
            raise Invalid(f"{name} needs a timezone (e.g. 2026-11-26T08:00:00Z)")
    q = (select(AuditLog, Staff.username).outerjoin(Staff, Staff.id == AuditLog.staff_id)
         .where(visible_rows(ctx), AuditLog.seq.is_not(None)))
    if staff_id is not None:
        q = q.where(AuditLog.staff_id == staff_id)
    if action is not None:
        q = q.where(AuditLog.action == action)
    if target_prefix:
        q = q.where(AuditLog.target.startswith(target_prefix, autoescape=True))
    if since is not None:
        q = q.where(AuditLog.at >= since)
    if until is not None:
        q = q.where(AuditLog.at < until)
    if before_seq is not None:
        q = q.where(AuditLog.seq < before_seq)
    rows = session.execute(q.order_by(AuditLog.seq.desc()).limit(limit)).all()
    items = [
        AuditEntryOut(
            id=a.id, seq=a.seq, at=a.at, staff_id=a.staff_id, staff_username=username,
            action=a.action, target=a.target, purpose=a.purpose, remote=a.remote, detail=a.detail,
            hash=a.hash.hex() if a.hash is not None else None,
        )
        for a, username in rows
    ]
    filters = {k: v.isoformat() if isinstance(v, datetime) else v
               for k, v in (("staff_id", staff_id), ("action", action),
                            ("target_prefix", target_prefix), ("since", since),
                            ("until", until), ("before_seq", before_seq))
               if v is not None}
    audit(session, ctx, request, "audit.read", "audit_log", purpose, count=len(items),
          filters=filters)
    session.commit()
    more = len(items) == limit
    return AuditPage(items=items, next_before_seq=items[-1].seq if items and more else None)


@router.get("/verify", response_model=AuditVerifyOut, **access(AUDIT_ROLES))
def verify_chain(
    ctx: CurrentStaff, session: SessionDep, request: Request, settings: SettingsDep,
    purpose: str = AuditPurposeQ,
) -> AuditVerifyOut:
    """Recompute the whole hash chain (store/audit.py) and report the first broken link."""
    result = verify(settings.psycopg_dsn)
    first = result.problems[0] if result.problems else None
    audit(session, ctx, request, "audit.verify", "audit_log", purpose, ok=result.ok,
          rows=result.rows, head_seq=result.last_seq)
    session.commit()
    return AuditVerifyOut(
        ok=result.ok, rows=result.rows, head_seq=result.last_seq, head_hash=result.last_hash.hex(),
        first_problem=AuditProblemOut(kind=first.kind, seq=first.seq, id=first.id,
                                      message=first.message) if first else None,
        problem_count=len(result.problems),
    )
