"""ORM mirror of the schema built by the migrations (the API and slow workflows use it)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from geoalchemy2 import Geometry
from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    FetchedValue,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    Text,
    case,
    func,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, column_property, mapped_column


class Base(DeclarativeBase):
    """Declarative base for every mapped table."""


def _now() -> Any:
    return mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class OrgUnit(Base):
    __tablename__ = "org_units"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("org_units.id"))
    kind: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)
    name_en: Mapped[str | None] = mapped_column(Text)
    adcode: Mapped[str | None] = mapped_column(Text)
    path: Mapped[str] = mapped_column(Text, unique=True)
    created_at: Mapped[datetime] = _now()


class Staff(Base):
    __tablename__ = "staff"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    org_unit_id: Mapped[int] = mapped_column(ForeignKey("org_units.id"))
    username: Mapped[str] = mapped_column(Text, unique=True)
    full_name: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(Text)
    password_hash: Mapped[str] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, server_default="true")
    created_at: Mapped[datetime] = _now()
    failed_logins: Mapped[int] = mapped_column(Integer, server_default="0")
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    password_changed_at: Mapped[datetime] = _now()


class Zone(Base):
    __tablename__ = "zones"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)
    owner_unit_id: Mapped[int] = mapped_column(ForeignKey("org_units.id"))
    adcode: Mapped[str | None] = mapped_column(Text)
    crs: Mapped[str] = mapped_column(Text)
    source_geojson: Mapped[dict[str, Any]] = mapped_column(JSONB)
    geom: Mapped[Any] = mapped_column(Geometry("MULTIPOLYGON", srid=4326, spatial_index=False))
    version: Mapped[int] = mapped_column(Integer, server_default="1")
    active: Mapped[bool] = mapped_column(Boolean, server_default="true")
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class Supervisee(Base):
    __tablename__ = "supervisees"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    office_id: Mapped[int] = mapped_column(ForeignKey("org_units.id"))
    full_name: Mapped[str] = mapped_column(Text)
    case_number: Mapped[str] = mapped_column(Text, unique=True)
    supervision_type: Mapped[str] = mapped_column(Text)
    level: Mapped[str] = mapped_column(Text, server_default="normal")
    key_flags: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default="{}")
    monitoring_basis: Mapped[str] = mapped_column(Text, server_default="information_check")
    home_zone_id: Mapped[int | None] = mapped_column(ForeignKey("zones.id"))
    active: Mapped[bool] = mapped_column(Boolean, server_default="true")
    created_at: Mapped[datetime] = _now()
    rule_overrides: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")


class RuleProfileRow(Base):
    __tablename__ = "rule_profiles"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer)
    body: Mapped[dict[str, Any]] = mapped_column(JSONB)
    active: Mapped[bool] = mapped_column(Boolean, server_default="false")
    created_at: Mapped[datetime] = _now()


class SuperviseeZone(Base):
    __tablename__ = "supervisee_zones"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    supervisee_id: Mapped[int] = mapped_column(ForeignKey("supervisees.id"))
    zone_id: Mapped[int] = mapped_column(ForeignKey("zones.id"))
    role: Mapped[str] = mapped_column(Text)
    buffer_m: Mapped[float] = mapped_column(Float, server_default="0")
    curfew_start: Mapped[str | None] = mapped_column(Text)
    curfew_end: Mapped[str | None] = mapped_column(Text)
    timezone: Mapped[str] = mapped_column(Text, server_default="Asia/Shanghai")
    active: Mapped[bool] = mapped_column(Boolean, server_default="true")
    created_at: Mapped[datetime] = _now()


class TravelPermit(Base):
    __tablename__ = "travel_permits"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    supervisee_id: Mapped[int] = mapped_column(ForeignKey("supervisees.id"))
    office_id: Mapped[int] = mapped_column(ForeignKey("org_units.id"))
    reason: Mapped[str] = mapped_column(Text)
    details: Mapped[str] = mapped_column(Text, server_default="")
    destination_zone_id: Mapped[int] = mapped_column(ForeignKey("zones.id"))
    start_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    end_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(Text, server_default="requested")
    required_tier: Mapped[str] = mapped_column(Text)
    office_opinion: Mapped[str | None] = mapped_column(Text)
    office_opinion_by: Mapped[int | None] = mapped_column(ForeignKey("staff.id"))
    decided_by: Mapped[int | None] = mapped_column(ForeignKey("staff.id"))
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    decision_note: Mapped[str | None] = mapped_column(Text)
    returned_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    overdue_alerted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    approved_end_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    requested_by_staff: Mapped[int | None] = mapped_column(ForeignKey("staff.id"))
    requested_by_device: Mapped[str | None] = mapped_column(Text)
    profile: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class PermitEvent(Base):
    __tablename__ = "permit_events"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    permit_id: Mapped[int] = mapped_column(ForeignKey("travel_permits.id"))
    at: Mapped[datetime] = _now()
    staff_id: Mapped[int | None] = mapped_column(ForeignKey("staff.id"))
    device_id: Mapped[str | None] = mapped_column(Text)
    action: Mapped[str] = mapped_column(Text)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")


class KeyPeriod(Base):
    __tablename__ = "key_periods"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    starts_on: Mapped[Any] = mapped_column(Date)
    ends_on: Mapped[Any] = mapped_column(Date)
    levels: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default="{}")
    flags: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default="{}")
    interval_factor: Mapped[float] = mapped_column(Float, server_default="0.5")
    extra_rollcalls: Mapped[int] = mapped_column(Integer, server_default="1")
    created_by: Mapped[int | None] = mapped_column(ForeignKey("staff.id"))
    created_at: Mapped[datetime] = _now()


class SuperviseeChange(Base):
    __tablename__ = "supervisee_changes"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    supervisee_id: Mapped[int] = mapped_column(ForeignKey("supervisees.id"))
    at: Mapped[datetime] = _now()
    staff_id: Mapped[int | None] = mapped_column(ForeignKey("staff.id"))
    field: Mapped[str] = mapped_column(Text)
    old_value: Mapped[Any] = mapped_column(JSONB)
    new_value: Mapped[Any] = mapped_column(JSONB)
    reason: Mapped[str] = mapped_column(Text)


class Sanction(Base):
    __tablename__ = "sanctions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    supervisee_id: Mapped[int] = mapped_column(ForeignKey("supervisees.id"))
    kind: Mapped[str] = mapped_column(Text)
    decided_by: Mapped[int] = mapped_column(ForeignKey("staff.id"))
    decided_at: Mapped[datetime] = _now()
    reason: Mapped[str] = mapped_column(Text)
    alert_id: Mapped[int | None] = mapped_column(ForeignKey("alerts.id"))


class Device(Base):
    __tablename__ = "devices"
    id: Mapped[str] = mapped_column(Text, primary_key=True)
    supervisee_id: Mapped[int] = mapped_column(ForeignKey("supervisees.id"))
    label: Mapped[str | None] = mapped_column(Text)
    secret_hash: Mapped[str] = mapped_column(Text)
    # The secret in Mosquitto's password-file format (store/broker_sync.py); None before 0011.
    broker_hash: Mapped[str | None] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, server_default="true")
    created_at: Mapped[datetime] = _now()
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Alert(Base):
    __tablename__ = "alerts"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    kind: Mapped[str] = mapped_column(Text)
    severity: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default="open")
    supervisee_id: Mapped[int] = mapped_column(ForeignKey("supervisees.id"))
    office_id: Mapped[int] = mapped_column(ForeignKey("org_units.id"))
    device_id: Mapped[str | None] = mapped_column(Text)
    opened_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()
    first_fix_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_fix_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    lon: Mapped[float | None] = mapped_column(Float)
    lat: Mapped[float | None] = mapped_column(Float)
    count: Mapped[int] = mapped_column(Integer, server_default="1")
    late: Mapped[bool] = mapped_column(Boolean, server_default="false")
    reason: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    acknowledged_by: Mapped[int | None] = mapped_column(ForeignKey("staff.id"))
    acknowledged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    resolved_by: Mapped[int | None] = mapped_column(ForeignKey("staff.id"))
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    resolution_note: Mapped[str | None] = mapped_column(Text)
    cleared_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    detected_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    disposition: Mapped[str | None] = mapped_column(Text)
    suppressed: Mapped[bool] = mapped_column(Boolean, server_default="false")
    escalation_level: Mapped[int] = mapped_column(Integer, server_default="0")
    ack_deadline: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


# The name of the zone an alert's reason names (its number alone means nothing to an officer);
# a reason without a zone, or with one that is not a whole number, has none.
_REASON_ZONE = Alert.__table__.c.reason["zone_id"].astext
Alert.zone_name = column_property(  # type: ignore[attr-defined]
    select(Zone.name).where(Zone.id == case(
        (_REASON_ZONE.regexp_match("^[0-9]{1,9}$"), _REASON_ZONE.cast(Integer)))
    ).scalar_subquery())


class AlertSuspension(Base):
    __tablename__ = "alert_suspensions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    supervisee_id: Mapped[int] = mapped_column(ForeignKey("supervisees.id"))
    kind: Mapped[str | None] = mapped_column(Text)
    starts_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    reason: Mapped[str] = mapped_column(Text)
    staff_id: Mapped[int] = mapped_column(ForeignKey("staff.id"))
    cancelled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now()


class AlertEvent(Base):
    __tablename__ = "alert_events"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id"))
    at: Mapped[datetime] = _now()
    staff_id: Mapped[int | None] = mapped_column(ForeignKey("staff.id"))
    action: Mapped[str] = mapped_column(Text)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoints"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    org_unit_id: Mapped[int] = mapped_column(ForeignKey("org_units.id"))
    name: Mapped[str] = mapped_column(Text)
    url: Mapped[str] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, server_default="true")
    created_by: Mapped[int | None] = mapped_column(ForeignKey("staff.id"))
    created_at: Mapped[datetime] = _now()


class StaffChannel(Base):
    __tablename__ = "staff_channels"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    staff_id: Mapped[int] = mapped_column(ForeignKey("staff.id"))
    channel: Mapped[str] = mapped_column(Text)
    address: Mapped[str] = mapped_column(Text)
    webhook_id: Mapped[int | None] = mapped_column(ForeignKey("webhook_endpoints.id"))
    min_severity: Mapped[str] = mapped_column(Text, server_default="low")
    active: Mapped[bool] = mapped_column(Boolean, server_default="true")
    created_at: Mapped[datetime] = _now()
    alerts: Mapped[bool] = mapped_column(Boolean, server_default="true")  # alert notifications
    reports: Mapped[bool] = mapped_column(Boolean, server_default="false")  # monthly reports


class Notification(Base):
    __tablename__ = "notifications"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    outbox_id: Mapped[int] = mapped_column(BigInteger)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id"))
    staff_id: Mapped[int] = mapped_column(ForeignKey("staff.id"))
    channel_id: Mapped[int] = mapped_column(ForeignKey("staff_channels.id"))
    channel: Mapped[str] = mapped_column(Text)
    topic: Mapped[str] = mapped_column(Text)
    escalation_level: Mapped[int] = mapped_column(Integer, server_default="0")
    idempotency_key: Mapped[str] = mapped_column(Text, unique=True)
    status: Mapped[str] = mapped_column(Text, server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    next_attempt_at: Mapped[datetime] = _now()
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class NotificationAttempt(Base):
    __tablename__ = "notification_attempts"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    notification_id: Mapped[int] = mapped_column(ForeignKey("notifications.id"))
    started_at: Mapped[datetime] = _now()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    outcome: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str] = mapped_column(Text)


class DeadLetter(Base):
    __tablename__ = "dead_letters"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    received_at: Mapped[datetime] = _now()
    source: Mapped[str] = mapped_column(Text)
    topic: Mapped[str | None] = mapped_column(Text)
    device_id: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    detail: Mapped[str] = mapped_column(Text, server_default="")
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    raw_size: Mapped[int] = mapped_column(Integer)
    remote: Mapped[str | None] = mapped_column(Text)


class AuditLog(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    at: Mapped[datetime] = _now()
    staff_id: Mapped[int | None] = mapped_column(ForeignKey("staff.id"))
    action: Mapped[str] = mapped_column(Text)
    target: Mapped[str] = mapped_column(Text, server_default="")
    purpose: Mapped[str] = mapped_column(Text, server_default="")
    remote: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    # Chain columns, set by the database when the row commits (migration 0012, store/audit.py).
    seq: Mapped[int | None] = mapped_column(BigInteger, server_default=FetchedValue())
    prev_hash: Mapped[bytes | None] = mapped_column(LargeBinary, server_default=FetchedValue())
    hash: Mapped[bytes | None] = mapped_column(LargeBinary, server_default=FetchedValue())
