"""Supervision policy for staff: levels and key-person flags, key periods, roll-calls on demand,
and the engine's requests for a fresh fix (active confirmation)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select, text

from alerts import rollcalls, service
from alerts.sanctions import suggest
from api.authz import CITY, SUPERVISORS, access
from api.deps import (
    CurrentStaff,
    RedisDep,
    SessionDep,
    SettingsDep,
    audit,
    commit_config_change,
    supervisee_in_jurisdiction,
)
from api.errors import Forbidden, Invalid, NotFound
from api.schemas import DbId, InputModel, Label, SuperviseeOut
from store.enums import AlertKind, Role
from store.models import (
    Alert,
    AlertSuspension,
    Device,
    KeyPeriod,
    Sanction,
    Supervisee,
    SuperviseeChange,
)
from store.registry import load_profile

router = APIRouter(tags=["supervision"])


class LevelIn(InputModel):
    model_config = ConfigDict(extra="forbid")
    level: Literal["strict", "normal", "lenient"]
    key_flags: list[Label] = Field(default_factory=list, max_length=20)
    reason: str = Field(min_length=3, max_length=2000)


class SanctionIn(InputModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["reprimand", "warning", "revocation_request"]
    reason: str = Field(min_length=3, max_length=2000)
    alert_id: DbId | None = None


class SanctionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    supervisee_id: int
    kind: str
    decided_by: int
    decided_at: datetime
    reason: str
    alert_id: int | None


class SuspensionIn(InputModel):
    """Pause notifications (alerts are still recorded, marked suppressed), e.g. a hospital stay."""

    model_config = ConfigDict(extra="forbid")
    kind: str | None = Field(default=None, max_length=64, description="one alert kind, or every kind")
    starts_at: datetime
    ends_at: datetime
    reason: str = Field(min_length=3, max_length=2000)


class SuspensionOut(SuspensionIn):
    model_config = ConfigDict(from_attributes=True)
    id: int
    supervisee_id: int
    staff_id: int
    cancelled_at: datetime | None


class KeyPeriodIn(InputModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    starts_on: date
    ends_on: date
    levels: list[Literal["strict", "normal", "lenient"]] = Field(default_factory=list, max_length=3)
    flags: list[Label] = Field(default_factory=list, max_length=20)
    # a real column: a factor below 1e-38 underflows it (and below 0.01 means nothing)
    interval_factor: float = Field(default=0.5, ge=0.01, le=1)
    extra_rollcalls: int = Field(default=1, ge=0, le=10)


class KeyPeriodOut(KeyPeriodIn):
    model_config = ConfigDict(from_attributes=True)
    id: int


class RollCallIn(InputModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=3, max_length=1000)


class RollCallOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    origin: str
    status: str
    scheduled_at: datetime
    sent_at: datetime | None
    deadline: datetime | None
    answered_at: datetime | None
    answer_fix_time: datetime | None
    reason: str


class LocationRequestOut(BaseModel):
    """One request for a fresh fix (active confirmation): times and outcome, no coordinates."""

    model_config = ConfigDict(from_attributes=True)
    id: int
    device_id: str
    rule: str
    status: str = Field(description="sent, throttled (not sent: battery limit or one already "
                                    "pending), answered, expired (no alert)")
    throttle_reason: str | None
    requested_at: datetime
    evidence_fix_time: datetime
    sent_at: datetime | None
    deadline: datetime | None
    answered_at: datetime | None
    answer_fix_time: datetime | None
    answer_accuracy_m: float | None
    latency_s: float | None = Field(description="from queuing the command to receiving the answer")
    expired_at: datetime | None


def tell_interval(session: SessionDep, sup: Supervisee, interval_s: float) -> None:
    """Queue the reporting interval for the supervisee's phones (command topic)."""
    devices = session.scalars(select(Device.id).where(Device.supervisee_id == sup.id,
                                                      Device.active)).all()
    if devices:
        service.command(session, devices, {"type": "config", "report_interval_s": interval_s})


@router.put("/supervisees/{supervisee_id}/level", response_model=SuperviseeOut, **access(SUPERVISORS))
def set_level(supervisee_id: DbId, body: LevelIn, ctx: CurrentStaff, session: SessionDep,
              request: Request, r: RedisDep, settings: SettingsDep) -> Supervisee:
    """Change the supervision level and key-person flags, with the reason; phones are told."""
    sup = supervisee_in_jurisdiction(session, ctx, supervisee_id)
    for name, old, new in (("level", sup.level, body.level),
                           ("key_flags", list(sup.key_flags), sorted(set(body.key_flags)))):
        if old != new:
            session.add(SuperviseeChange(supervisee_id=sup.id, staff_id=ctx.id, field=name,
                                         old_value=old, new_value=new, reason=body.reason))
    sup.level, sup.key_flags = body.level, sorted(set(body.key_flags))
    conn = session.connection().connection.driver_connection
    assert conn is not None
    profile = load_profile(conn)  # type: ignore[arg-type]
    tell_interval(session, sup, profile.checkin.interval(sup.level, bool(sup.key_flags)))
    commit_config_change(session, ctx, request, r, settings,
                         "supervisee.set_level", f"supervisee:{sup.id}",
          level=body.level, key_flags=body.key_flags, reason=body.reason)
    return sup


@router.get("/supervisees/{supervisee_id}/changes", **access(SUPERVISORS))
def level_history(supervisee_id: DbId, ctx: CurrentStaff, session: SessionDep) -> list[dict[str, Any]]:
    """Who changed the level or flags, when, and why."""
    supervisee_in_jurisdiction(session, ctx, supervisee_id)
    rows = session.scalars(select(SuperviseeChange).where(
        SuperviseeChange.supervisee_id == supervisee_id).order_by(SuperviseeChange.id))
    return [{"at": c.at, "staff_id": c.staff_id, "field": c.field, "old": c.old_value,
             "new": c.new_value, "reason": c.reason} for c in rows]


@router.post("/key-periods", response_model=KeyPeriodOut, status_code=201, **access({CITY}, "city"))
def create_key_period(body: KeyPeriodIn, ctx: CurrentStaff, session: SessionDep,
                      request: Request, r: RedisDep, settings: SettingsDep) -> KeyPeriod:
    """A key period (重点时段): tighter reporting and more roll-calls for a date range."""
    if ctx.staff.role != Role.CITY_ADMIN:
        # A key period applies to the whole city (its reporting and roll-calls).
        raise Forbidden("key periods are set by the city bureau")
    if body.ends_on < body.starts_on:
        raise Invalid("ends_on is before starts_on")
    kp = KeyPeriod(**body.model_dump(), created_by=ctx.id)
    session.add(kp)
    session.flush()
    commit_config_change(session, ctx, request, r, settings,
                         "key_period.create", f"key_period:{kp.id}")
    return kp


@router.get("/key-periods", response_model=list[KeyPeriodOut], **access(SUPERVISORS))
def list_key_periods(ctx: CurrentStaff, session: SessionDep) -> list[KeyPeriod]:
    """All key periods (they apply city-wide)."""
    del ctx
    return list(session.scalars(select(KeyPeriod).order_by(KeyPeriod.starts_on)))


@router.post("/supervisees/{supervisee_id}/rollcalls", response_model=RollCallOut,
             status_code=201, **access(SUPERVISORS))
def roll_call_now(supervisee_id: DbId, body: RollCallIn, ctx: CurrentStaff, session: SessionDep,
                  request: Request) -> Any:
    """An officer's roll-call on demand: sent within seconds, answered by a fresh fix."""
    sup = supervisee_in_jurisdiction(session, ctx, supervisee_id)
    conn = session.connection().connection.driver_connection
    rid = rollcalls.request_now(conn, sup.id, "officer", body.reason, staff_id=ctx.id)  # type: ignore[arg-type]
    audit(session, ctx, request, "rollcall.request", f"supervisee:{sup.id}", roll_call_id=rid)
    session.commit()
    row = session.execute(text("SELECT * FROM roll_calls WHERE id = :i"), {"i": rid}).first()
    return RollCallOut.model_validate(row._mapping if row else {})


@router.get("/supervisees/{supervisee_id}/rollcalls", response_model=list[RollCallOut], **access(SUPERVISORS))
def list_roll_calls(supervisee_id: DbId, ctx: CurrentStaff, session: SessionDep) -> list[Any]:
    """A supervisee's roll-calls, newest first."""
    supervisee_in_jurisdiction(session, ctx, supervisee_id)
    rows = session.execute(text("""SELECT * FROM roll_calls WHERE supervisee_id = :s
                                   ORDER BY scheduled_at DESC LIMIT 200"""), {"s": supervisee_id})
    return [RollCallOut.model_validate(r._mapping) for r in rows]


@router.get("/supervisees/{supervisee_id}/location-requests",
            response_model=list[LocationRequestOut], **access(SUPERVISORS))
def list_location_requests(supervisee_id: DbId, ctx: CurrentStaff, session: SessionDep) -> list[Any]:
    """The engine's requests for a fresh fix of this supervisee's phones, newest first."""
    supervisee_in_jurisdiction(session, ctx, supervisee_id)
    rows = session.execute(text("""SELECT * FROM location_requests WHERE supervisee_id = :s
                                   ORDER BY requested_at DESC, id DESC LIMIT 200"""),
                           {"s": supervisee_id})
    return [LocationRequestOut.model_validate(r._mapping) for r in rows]


@router.post("/supervisees/{supervisee_id}/sanctions", response_model=SanctionOut,
             status_code=201, **access(SUPERVISORS))
def record_sanction(supervisee_id: DbId, body: SanctionIn, ctx: CurrentStaff, session: SessionDep,
                    request: Request, r: RedisDep, settings: SettingsDep) -> Sanction:
    """Record a sanction a person decided; a warning may move the supervisee to strict (profile)."""
    sup = supervisee_in_jurisdiction(session, ctx, supervisee_id)
    if body.alert_id is not None:
        alert = session.get(Alert, body.alert_id)
        if alert is None or alert.supervisee_id != sup.id:
            raise Invalid(f"alert {body.alert_id} is not this supervisee's")
    row = Sanction(supervisee_id=sup.id, kind=body.kind, decided_by=ctx.id, reason=body.reason,
                   alert_id=body.alert_id)
    session.add(row)
    conn = session.connection().connection.driver_connection
    profile = load_profile(conn)  # type: ignore[arg-type]
    if body.kind == "warning" and profile.checkin.warning_makes_strict and sup.level != "strict":
        session.add(SuperviseeChange(
            supervisee_id=sup.id, staff_id=ctx.id, field="level", old_value=sup.level,
            new_value="strict", reason=f"automatic after a warning ({profile.label}): {body.reason}"))
        sup.level = "strict"
        tell_interval(session, sup, profile.checkin.interval(sup.level, bool(sup.key_flags)))
    session.flush()
    commit_config_change(session, ctx, request, r, settings,
                         "sanction.record", f"supervisee:{sup.id}", kind=body.kind)
    return row


@router.post("/supervisees/{supervisee_id}/suspensions", response_model=SuspensionOut,
             status_code=201, **access(SUPERVISORS))
def suspend(supervisee_id: DbId, body: SuspensionIn, ctx: CurrentStaff, session: SessionDep,
            request: Request) -> AlertSuspension:
    """Suspend notifications for a supervisee (and kind) over a window, with the reason. When it
    is in force now, the supervisee's alerts still being handled are marked suppressed and the
    change is announced on the live feed (`alert.suspended`)."""
    sup = supervisee_in_jurisdiction(session, ctx, supervisee_id)
    if body.starts_at.tzinfo is None or body.ends_at.tzinfo is None:
        raise Invalid("times need a timezone")
    if body.ends_at <= body.starts_at or body.ends_at - body.starts_at > timedelta(days=90):
        raise Invalid("a suspension ends after it starts, at most 90 days later")
    if body.kind is not None and body.kind not in {k.value for k in AlertKind}:
        raise Invalid(f"unknown alert kind {body.kind!r}")
    row = AlertSuspension(supervisee_id=sup.id, staff_id=ctx.id, **body.model_dump())
    session.add(row)
    session.flush()
    # Alerts already being handled are covered too, and every open console is told.
    alerts = service.suspend(session, sup.id, body.kind, body.starts_at, body.ends_at, ctx.id,
                             row.id, body.reason)
    audit(session, ctx, request, "alert.suspend", f"supervisee:{sup.id}", kind=body.kind,
          reason=body.reason, alerts=alerts)
    session.commit()
    return row


@router.get("/supervisees/{supervisee_id}/suspensions", response_model=list[SuspensionOut],
            **access(SUPERVISORS))
def list_suspensions(supervisee_id: DbId, ctx: CurrentStaff, session: SessionDep
                     ) -> list[AlertSuspension]:
    """A supervisee's suspensions, newest first."""
    supervisee_in_jurisdiction(session, ctx, supervisee_id)
    return list(session.scalars(select(AlertSuspension).where(
        AlertSuspension.supervisee_id == supervisee_id).order_by(AlertSuspension.id.desc())))


@router.delete("/supervisees/{supervisee_id}/suspensions/{suspension_id}",
               response_model=SuspensionOut, **access(SUPERVISORS))
def cancel_suspension(supervisee_id: DbId, suspension_id: DbId, ctx: CurrentStaff,
                      session: SessionDep, request: Request) -> AlertSuspension:
    """End a suspension early."""
    supervisee_in_jurisdiction(session, ctx, supervisee_id)
    row = session.get(AlertSuspension, suspension_id)
    if row is None or row.supervisee_id != supervisee_id:
        raise NotFound(f"suspension {suspension_id} not found")
    row.cancelled_at = datetime.now(UTC)
    audit(session, ctx, request, "alert.suspension_cancel", f"supervisee:{supervisee_id}")
    session.commit()
    return row


@router.get("/supervisees/{supervisee_id}/sanction-suggestion", **access(SUPERVISORS))
def sanction_suggestion(supervisee_id: DbId, ctx: CurrentStaff, session: SessionDep
                        ) -> dict[str, Any]:
    """What the profile's ladder suggests now (a person decides; nothing is applied)."""
    sup = supervisee_in_jurisdiction(session, ctx, supervisee_id)
    conn = session.connection().connection.driver_connection
    profile = load_profile(conn)  # type: ignore[arg-type]
    ladder = profile.sanctions
    since = session.execute(text(
        """SELECT min(first_fix_time) FROM alerts WHERE supervisee_id = :s
             AND kind IN ('communication_failure', 'phone_off') AND status <> 'resolved'
             AND cleared_at IS NULL"""), {"s": sup.id}).scalar()
    days = None if since is None else (datetime.now(UTC) - since).total_seconds() / 86400
    reprimands = session.execute(text(
        """SELECT count(*) FROM sanctions WHERE supervisee_id = :s AND kind = 'reprimand'
             AND decided_at > now() - make_interval(days => :w)"""),
        {"s": sup.id, "w": ladder.reprimand_window_days}).scalar_one()
    s = suggest(ladder, days, int(reprimands))
    return {"suggestion": s.kind, "reason": s.reason, "reason_zh": s.reason_zh,
            "profile": profile.label,
            "out_of_contact_days": None if days is None else round(days, 2),
            "recent_reprimands": reprimands, "decided_by_a_person": True}
