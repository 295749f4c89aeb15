"""Travel permits (外出): requests by phones or officers, tiered approval, return check-in (销假)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select, text

from alerts import service
from api.authz import HEAD, OFFICER, SUPERVISORS, access, declared
from api.deps import (
    CurrentDevice,
    CurrentStaff,
    RedisDep,
    SessionDep,
    SettingsDep,
    StaffContext,
    audit,
    supervisee_in_jurisdiction,
    unit_path_ids,
)
from api.errors import DomainError, Invalid, NotFound
from api.routes.zones import visible_zone
from api.schemas import DbId, InputModel
from store import permits as flow
from store.models import Device, OrgUnit, PermitEvent, Supervisee, TravelPermit, Zone
from store.registry import bump_config_version
from store.state import StateStore

router = APIRouter(tags=["travel permits"])

Reason = Literal["medical", "schooling", "litigation", "family", "work"]


class PermitIn(InputModel):
    model_config = ConfigDict(extra="forbid")
    reason: Reason
    destination_zone_id: DbId
    start_at: datetime
    end_at: datetime
    details: str = Field(default="", max_length=2000)


class OpinionIn(InputModel):
    model_config = ConfigDict(extra="forbid")
    recommend: bool
    note: str = Field(min_length=2, max_length=2000)


class DecisionIn(InputModel):
    model_config = ConfigDict(extra="forbid")
    note: str | None = Field(default=None, max_length=2000)


class NoteIn(InputModel):
    model_config = ConfigDict(extra="forbid")
    note: str = Field(min_length=2, max_length=2000)


class AmendIn(InputModel):
    model_config = ConfigDict(extra="forbid")
    end_at: datetime
    note: str = Field(min_length=2, max_length=2000)


class PermitOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    supervisee_id: int
    office_id: int
    reason: str
    details: str
    destination_zone_id: int
    start_at: datetime
    end_at: datetime
    status: str
    required_tier: str
    office_opinion: str | None
    decided_by: int | None
    decided_at: datetime | None
    decision_note: str | None
    returned_at: datetime | None
    approved_end_at: datetime | None = Field(
        description="the end in force while an amendment waits for its decision (the trip goes "
                    "on under it; the return is due by it)")
    profile: str


class PermitEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    at: datetime
    staff_id: int | None
    device_id: str | None
    action: str
    detail: dict[str, Any]


class PermitDetail(PermitOut):
    history: list[PermitEventOut]


class PermitProblem(DomainError):
    code = "permit"


def _raise(e: flow.PermitError) -> None:
    err = PermitProblem(e.detail, code=f"permit.{e.code}")
    err.status_code = e.status
    raise err from e


def _aware(*ds: datetime) -> None:
    if any(d.tzinfo is None for d in ds):
        raise Invalid("times need a timezone (e.g. 2026-12-01T08:00:00+08:00)")


def _permit(session: SessionDep, ctx: StaffContext, permit_id: int) -> TravelPermit:
    # Locked for the request: two staff deciding at once are served one after the other.
    p = session.get(TravelPermit, permit_id, with_for_update=True)
    if p is None or not ctx.can_see_unit(p.office_id):
        raise NotFound(f"permit {permit_id} not found")
    return p


def _destination(session: SessionDep, zone_id: int) -> Zone:
    zone = session.get(Zone, zone_id)
    if zone is None or not zone.active or zone.kind not in ("destination", "home_area"):
        raise Invalid(f"zone {zone_id} is not a destination (a district or city boundary, or a "
                      "drawn destination area)")
    return zone


def _tell_phone(session: SessionDep, permit: TravelPermit) -> None:
    """Queue the permit's new state for the supervisee's phones (`devices/{id}/cmd`, QoS 1)."""
    devices = session.scalars(select(Device.id).where(Device.supervisee_id == permit.supervisee_id,
                                                      Device.active)).all()
    if devices:
        service.command(session, devices, {
            "type": "permit", "permit_id": permit.id, "status": permit.status,
            "start": permit.start_at.isoformat(), "end": permit.end_at.isoformat(),
            "note": permit.decision_note or ""})


def _returned(session: SessionDep, permit: TravelPermit) -> None:
    """After the return check-in: the overdue-return alert closes, and the phones are told."""
    service.close_overdue_return(session, permit.supervisee_id, permit.id)
    _tell_phone(session, permit)


def _done(session: SessionDep, r: RedisDep, settings: SettingsDep) -> None:
    session.commit()
    bump_config_version(r, settings.redis_prefix)  # the engine's allowed areas change


@router.post("/supervisees/{supervisee_id}/permits", response_model=PermitOut, status_code=201,
             **access(SUPERVISORS))
def request_for(supervisee_id: DbId, body: PermitIn, ctx: CurrentStaff, session: SessionDep,
                request: Request, r: RedisDep, settings: SettingsDep) -> TravelPermit:
    """An officer requests a permit on the supervisee's behalf."""
    sup = supervisee_in_jurisdiction(session, ctx, supervisee_id)
    _aware(body.start_at, body.end_at)
    visible_zone(session, ctx, body.destination_zone_id)
    _destination(session, body.destination_zone_id)
    try:
        p = flow.request(session, sup, body.reason, body.destination_zone_id, body.start_at,
                         body.end_at, body.details, time.time(), staff_id=ctx.id)
    except flow.PermitError as e:
        _raise(e)
    audit(session, ctx, request, "permit.request", f"permit:{p.id}")
    _done(session, r, settings)
    return p


@router.post("/phone/permits", response_model=PermitOut, status_code=201, **declared("device", "device"))
def request_from_phone(body: PermitIn, device: CurrentDevice, session: SessionDep,
                       r: RedisDep, settings: SettingsDep) -> TravelPermit:
    """The supervisee's phone requests a permit for its own supervisee (and nobody else)."""
    sup = session.get(Supervisee, device.supervisee_id)
    assert sup is not None
    _aware(body.start_at, body.end_at)
    zone = _destination(session, body.destination_zone_id)
    office = session.get(OrgUnit, sup.office_id)
    assert office is not None
    # Only zones drawn for the supervisee's office or above (not another district's).
    if zone.owner_unit_id not in unit_path_ids(office):
        raise Invalid(f"zone {zone.id} is not a destination (a district or city boundary, or a "
                      "drawn destination area)")
    try:
        p = flow.request(session, sup, body.reason, body.destination_zone_id, body.start_at,
                         body.end_at, body.details, time.time(), device_id=device.id)
    except flow.PermitError as e:
        _raise(e)
    _done(session, r, settings)
    return p


@router.get("/phone/permits", response_model=list[PermitOut], **declared("device", "device"))
def my_permits(device: CurrentDevice, session: SessionDep) -> list[TravelPermit]:
    """The phone's own supervisee's permits."""
    return list(session.scalars(select(TravelPermit).where(
        TravelPermit.supervisee_id == device.supervisee_id).order_by(TravelPermit.id.desc())))


@router.get("/permits", response_model=list[PermitOut], **access(SUPERVISORS))
def list_permits(ctx: CurrentStaff, session: SessionDep, status: str | None = None,
                 supervisee_id: DbId | None = None) -> list[TravelPermit]:
    """Permits of the caller's jurisdiction."""
    q = select(TravelPermit).where(TravelPermit.office_id.in_(ctx.unit_ids))
    if status is not None:
        q = q.where(TravelPermit.status == status)
    if supervisee_id is not None:
        q = q.where(TravelPermit.supervisee_id == supervisee_id)
    return list(session.scalars(q.order_by(TravelPermit.id.desc()).limit(500)))


@router.get("/permits/{permit_id}", response_model=PermitDetail, **access(SUPERVISORS))
def get_permit(permit_id: DbId, ctx: CurrentStaff, session: SessionDep) -> PermitDetail:
    """One permit with its full history (who did what, when)."""
    p = _permit(session, ctx, permit_id)
    events = session.scalars(select(PermitEvent).where(PermitEvent.permit_id == p.id)
                             .order_by(PermitEvent.id)).all()
    return PermitDetail(**PermitOut.model_validate(p).model_dump(),
                        history=[PermitEventOut.model_validate(e) for e in events])


@router.post("/permits/{permit_id}/opinion", response_model=PermitOut, **access({OFFICER, HEAD}))
def give_opinion(permit_id: DbId, body: OpinionIn, ctx: CurrentStaff, session: SessionDep,
                 request: Request) -> TravelPermit:
    """The judicial office's opinion on a permit the district or city bureau decides."""
    p = _permit(session, ctx, permit_id)
    try:
        flow.opinion(session, p, ctx.id, ctx.staff.role, body.recommend, body.note)
    except flow.PermitError as e:
        _raise(e)
    audit(session, ctx, request, "permit.opinion", f"permit:{p.id}")
    session.commit()
    return p


def _decide(permit_id: int, approve: bool, note: str | None, ctx: StaffContext,
            session: SessionDep, request: Request, r: RedisDep, settings: SettingsDep
            ) -> TravelPermit:
    p = _permit(session, ctx, permit_id)
    try:
        flow.decide(session, p, ctx.id, ctx.staff.role, approve, note)
    except flow.PermitError as e:
        _raise(e)
    _tell_phone(session, p)
    audit(session, ctx, request, "permit.approve" if approve else "permit.reject", f"permit:{p.id}")
    _done(session, r, settings)
    return p


@router.post("/permits/{permit_id}/approve", response_model=PermitOut, **access(SUPERVISORS))
def approve(permit_id: DbId, body: DecisionIn, ctx: CurrentStaff, session: SessionDep,
            request: Request, r: RedisDep, settings: SettingsDep) -> TravelPermit:
    """Approve (only staff of the tier the permit's length requires)."""
    return _decide(permit_id, True, body.note, ctx, session, request, r, settings)


@router.post("/permits/{permit_id}/reject", response_model=PermitOut, **access(SUPERVISORS))
def reject(permit_id: DbId, body: NoteIn, ctx: CurrentStaff, session: SessionDep,
           request: Request, r: RedisDep, settings: SettingsDep) -> TravelPermit:
    """Reject, with the reason."""
    return _decide(permit_id, False, body.note, ctx, session, request, r, settings)


@router.post("/permits/{permit_id}/revoke", response_model=PermitOut, **access(SUPERVISORS))
def revoke(permit_id: DbId, body: NoteIn, ctx: CurrentStaff, session: SessionDep,
           request: Request, r: RedisDep, settings: SettingsDep) -> TravelPermit:
    """Withdraw an approved permit."""
    p = _permit(session, ctx, permit_id)
    try:
        flow.revoke(session, p, ctx.id, ctx.staff.role, body.note)
    except flow.PermitError as e:
        _raise(e)
    _tell_phone(session, p)
    audit(session, ctx, request, "permit.revoke", f"permit:{p.id}")
    _done(session, r, settings)
    return p


@router.post("/permits/{permit_id}/amend", response_model=PermitOut, **access(SUPERVISORS))
def amend(permit_id: DbId, body: AmendIn, ctx: CurrentStaff, session: SessionDep,
          request: Request, r: RedisDep, settings: SettingsDep) -> TravelPermit:
    """Change the end date; the permit goes back for a decision at the tier it now needs."""
    p = _permit(session, ctx, permit_id)
    _aware(body.end_at)
    try:
        flow.amend(session, p, ctx.id, None, body.end_at, body.note, time.time())
    except flow.PermitError as e:
        _raise(e)
    _tell_phone(session, p)
    audit(session, ctx, request, "permit.amend", f"permit:{p.id}")
    _done(session, r, settings)
    return p


@router.post("/permits/{permit_id}/return", response_model=PermitOut, **access(SUPERVISORS))
def record_return(permit_id: DbId, body: NoteIn, ctx: CurrentStaff, session: SessionDep,
                  request: Request, r: RedisDep, settings: SettingsDep) -> TravelPermit:
    """An officer records the return check-in (销假), e.g. made in person at the office."""
    p = _permit(session, ctx, permit_id)
    try:
        flow.check_in(session, p, datetime.now(UTC), staff_id=ctx.id, note=body.note)
    except flow.PermitError as e:
        _raise(e)
    _returned(session, p)
    audit(session, ctx, request, "permit.return", f"permit:{p.id}")
    _done(session, r, settings)
    return p


RETURN_FIX_MAX_AGE_S = 1800


@router.post("/phone/permits/{permit_id}/return", response_model=PermitOut, **declared("device", "device"))
def phone_return(permit_id: DbId, device: CurrentDevice, session: SessionDep,
                 r: RedisDep, settings: SettingsDep) -> TravelPermit:
    """The phone checks back in (销假); accepted only from inside the home area, by a fresh fix."""
    p = session.get(TravelPermit, permit_id, with_for_update=True)
    if p is None or p.supervisee_id != device.supervisee_id:
        raise NotFound(f"permit {permit_id} not found")
    state = StateStore(r, settings.redis_prefix).load([device.id]).get(device.id)
    last = state.last if state else None
    if state is not None and state.mock_flagged:
        raise PermitProblem("the phone's latest fix is a mock location", code="permit.mock_location")
    if state is None or last is None or time.time() - last.time > RETURN_FIX_MAX_AGE_S:
        raise PermitProblem("send a fresh location first: no fix in the last 30 minutes",
                            code="permit.no_fresh_fix")
    sup = session.get(Supervisee, device.supervisee_id)
    at_home = sup is not None and sup.home_zone_id is not None and session.execute(text(
        """SELECT ST_Covers(geom, p) AND NOT ST_DWithin(ST_Boundary(geom)::geography,
                                                        p::geography, :acc)
             FROM zones, ST_SetSRID(ST_MakePoint(:lon, :lat), 4326) p WHERE id = :z"""),
        {"acc": last.accuracy, "lon": last.lon, "lat": last.lat, "z": sup.home_zone_id}
    ).scalar()
    if not at_home:
        raise PermitProblem("the latest fix (with its accuracy circle) is not wholly inside the "
                            "home area", code="permit.not_home")
    try:
        flow.check_in(session, p, datetime.now(UTC), device_id=device.id,
                      fix_time=datetime.fromtimestamp(last.time, UTC), accuracy=last.accuracy,
                      inside_home_area=True)  # no coordinates: the permit's history is not audited
    except flow.PermitError as e:
        _raise(e)
    _returned(session, p)
    _done(session, r, settings)
    return p
