"""Request and response bodies."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, computed_field, model_validator

from alerts.explain import explain
from geofence.model import CRS, ZoneKind
from store.enums import AlertStatus, Level, MonitoringBasis, Role, SupervisionType

# Every table's id is a PostgreSQL integer: a larger number can name nothing, and would fail in
# the database ("integer out of range") rather than as a clear 422 at the door.
DbId = Annotated[int, Field(ge=-(2**31), le=2**31 - 1, description="an id (32-bit integer)")]

# A short label (a key flag, a time zone name ...).
Label = Annotated[str, Field(min_length=1, max_length=64)]


def _fits_real(value: float) -> float:
    """PostgreSQL's real (float4) refuses magnitudes below ~1e-38 ("value out of range:
    underflow"); such a value is 0 for every quantity we keep."""
    return 0.0 if abs(value) < 1e-30 else value


Real = Annotated[float, AfterValidator(_fits_real)]  # a number stored in a real column


def _no_nul(data: Any) -> Any:
    """Refuse a NUL character anywhere in a request body: PostgreSQL text cannot hold one."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise ValueError("text must not contain NUL (\\u0000) characters")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return data


class NoNulModel(BaseModel):
    """A request body with no NUL in any text (a body whose sender may add fields: the broker's
    hooks)."""

    @model_validator(mode="before")
    @classmethod
    def _refuse_nul(cls, data: Any) -> Any:
        return _no_nul(data)


class InputModel(NoNulModel):
    """Base of every request body: unknown fields refused, no NUL in any text."""

    model_config = ConfigDict(extra="forbid")


_EMAIL = re.compile(r"[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+")


class Token(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int
    refresh_token: str
    refresh_expires_in: int


class PasswordChangeIn(InputModel):
    model_config = ConfigDict(extra="forbid")
    current_password: str = Field(min_length=1, max_length=200)
    new_password: str = Field(min_length=12, max_length=200,
                              description="at least 12 characters")


class StaffIn(InputModel):
    """A new staff account; the password is set by the creator and should be changed."""

    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=3, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$")
    full_name: str = Field(min_length=1, max_length=200)
    role: Role
    org_unit_id: int = Field(ge=1, le=2**31 - 1)
    password: str = Field(min_length=12, max_length=200)


class StaffPatch(InputModel):
    """Changes to an account; each ends the account's sessions."""

    model_config = ConfigDict(extra="forbid")
    active: bool | None = None
    role: Role | None = None
    unlock: bool = False


class StaffOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    username: str
    full_name: str
    role: str
    org_unit_id: int
    active: bool = True
    locked_until: datetime | None = None


class OrgUnitOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    parent_id: int | None
    kind: str
    name: str
    name_en: str | None
    adcode: str | None


class SuperviseeIn(InputModel):
    model_config = ConfigDict(extra="forbid")
    office_id: DbId
    full_name: str = Field(min_length=1, max_length=200)
    case_number: str = Field(min_length=1, max_length=64)
    supervision_type: SupervisionType
    level: Level = Level.NORMAL
    key_flags: list[Label] = Field(default_factory=list, max_length=20)
    monitoring_basis: MonitoringBasis = MonitoringBasis.INFORMATION_CHECK
    home_zone_id: DbId | None = None


class SuperviseeOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    office_id: int
    full_name: str
    case_number: str
    supervision_type: str
    level: str
    key_flags: list[str]
    monitoring_basis: str
    home_zone_id: int | None
    active: bool
    rule_overrides: dict[str, Any]


class HomeAreaIn(InputModel):
    model_config = ConfigDict(extra="forbid")
    zone_id: DbId


class DeviceIn(InputModel):
    model_config = ConfigDict(extra="forbid")
    label: str | None = Field(default=None, max_length=100)


class DeviceOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    supervisee_id: int
    label: str | None
    active: bool
    created_at: datetime
    revoked_at: datetime | None


class DeviceCredentials(BaseModel):
    """Returned once at enrolment: the secret is never shown again."""

    device_id: str
    secret: str
    mqtt: dict[str, Any]
    http: dict[str, Any]
    enrolment: dict[str, Any] = Field(description=(
        "owntracks_link: the OwnTracks app's remote configuration (owntracks:///config?inline="
        "base64 JSON, MQTT or HTTP mode per CCS_OWNTRACKS_MODE); owntracks_qr_svg: a QR code of "
        "it (SVG data URI); traccar_client_url: the Traccar Client server URL"))


class ZoneShapeIn(InputModel):
    """A zone's name and shape: a GeoJSON Polygon/MultiPolygon, or a circle (a Point with
    `radius_m`), drawn in `crs`. The body of `PUT /zones/{id}` (kind and owner stay)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    crs: CRS = CRS.WGS84
    geometry: dict[str, Any]
    radius_m: float | None = Field(default=None, description="for a circle around a Point")
    # geometry: any GeoJSON object, bounded by the zone upload's body limit (CCS_MAX_ZONE_BODY_BYTES)
    # and checked by geofence.zones (shape, number of points, size)


class ZoneIn(ZoneShapeIn):
    """A new zone: its shape, kind and owning unit."""

    kind: ZoneKind
    owner_unit_id: DbId


class ZoneRetireIn(InputModel):
    """Why a zone is retired (kept, marked inactive; the audit log records the reason)."""

    reason: str = Field(min_length=2, max_length=1000)  # "合并" is a reason


class ZoneAssignmentIn(InputModel):
    """A prohibition-order zone (with an optional early-warning buffer) or a curfew."""

    model_config = ConfigDict(extra="forbid")
    zone_id: DbId
    role: Literal["exclusion", "curfew"]
    buffer_m: Real = Field(default=0.0, ge=0, le=5000)
    curfew_start: str | None = Field(default=None, pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
    curfew_end: str | None = Field(default=None, pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
    timezone: str = Field(default="Asia/Shanghai", min_length=1, max_length=64)


class ZoneAssignmentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    supervisee_id: int
    zone_id: int
    role: str
    buffer_m: float
    curfew_start: str | None
    curfew_end: str | None
    timezone: str
    active: bool


class RuleOverridesIn(InputModel):
    """Per-person threshold overrides (names and meaning: geofence/profile.py `Rules`)."""

    model_config = ConfigDict(extra="forbid")
    overrides: dict[Label, float] = Field(max_length=64)
    reason: str = Field(min_length=3, max_length=1000)


class AlertOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    kind: str
    severity: str
    status: str
    supervisee_id: int
    office_id: int
    device_id: str | None
    opened_at: datetime
    updated_at: datetime
    first_fix_time: datetime | None
    last_fix_time: datetime | None
    lon: float | None
    lat: float | None
    count: int
    late: bool
    reason: dict[str, Any]
    acknowledged_by: int | None
    acknowledged_at: datetime | None
    resolved_by: int | None
    resolved_at: datetime | None
    resolution_note: str | None
    cleared_at: datetime | None
    detected_at: datetime | None
    disposition: str | None
    escalation_level: int
    ack_deadline: datetime | None
    suppressed: bool
    zone_name: str | None = None  # the name of the zone `reason.zone_id` names

    @computed_field  # type: ignore[prop-decorator]
    @property
    def explanation(self) -> str:
        """Why the alert fired, in one sentence (from `reason`, the zone named)."""
        return explain(self.reason, zone_name=self.zone_name)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def explanation_zh(self) -> str:
        """The same sentence in Chinese."""
        return explain(self.reason, "zh", self.zone_name)


class AlertPage(BaseModel):
    items: list[AlertOut]
    total: int
    offset: int
    limit: int


class ResolveIn(InputModel):
    """Closing an alert: what it turned out to be, and what was done."""

    model_config = ConfigDict(extra="forbid")
    disposition: Literal["confirmed_violation", "false_alarm", "device_problem", "authorised"]
    note: str = Field(min_length=3, max_length=4000)


class AlertEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    at: datetime
    staff_id: int | None
    action: str
    detail: dict[str, Any]


class AlertFilter(BaseModel):
    status: AlertStatus | None = None


class DeadLetterOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    received_at: datetime
    source: str
    topic: str | None
    device_id: str | None
    reason: str
    detail: str
    raw_size: int
    raw_preview: str
    remote: str | None


class WebhookIn(InputModel):
    """A receiver of signed alert notifications (Standard Webhooks)."""

    model_config = ConfigDict(extra="forbid")
    org_unit_id: DbId
    name: str = Field(min_length=1, max_length=200)
    url: str = Field(min_length=8, max_length=2000)


class WebhookOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    org_unit_id: int
    name: str
    url: str
    active: bool


class WebhookCreated(WebhookOut):
    secret: str = Field(description="signing secret (whsec_…), shown only once")


class ChannelIn(InputModel):
    """One way a staff member wants to hear of alerts."""

    model_config = ConfigDict(extra="forbid")
    channel: Literal["email", "webhook"]
    address: str = Field(min_length=3, max_length=320,
                         description="e-mail address, or the receiver's handle (phone number…)")
    webhook_id: DbId | None = None
    min_severity: Literal["low", "medium", "high", "critical"] = "low"
    alerts: bool = Field(True, description="alert notifications on this channel")
    reports: bool = Field(False, description="the monthly compliance report (PDF) by e-mail: "
                                             "office heads and bureau staff")

    @model_validator(mode="after")
    def _email_shape(self) -> ChannelIn:
        if self.channel == "email" and not _EMAIL.fullmatch(self.address):
            raise ValueError("address is not an e-mail address")
        if self.reports and self.channel != "email":
            raise ValueError("reports are sent by e-mail only")
        if not (self.alerts or self.reports):
            raise ValueError("a channel carries alerts, reports or both")
        return self


class ChannelOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    channel: str
    address: str
    webhook_id: int | None
    min_severity: str
    active: bool
    alerts: bool
    reports: bool


class DeliveryAttemptOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    started_at: datetime
    finished_at: datetime | None
    outcome: str | None
    detail: str | None
    worker: str


class NotificationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    staff_id: int
    channel: str
    topic: str
    escalation_level: int
    idempotency_key: str
    status: str
    attempts: int
    created_at: datetime
    delivered_at: datetime | None
    last_error: str | None
    attempt_log: list[DeliveryAttemptOut] = []
