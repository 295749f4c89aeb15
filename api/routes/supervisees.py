"""Supervisees, their devices, and their location data (every read audited)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import select, text

from api.authz import EVERYONE, SUPERVISORS, access
from api.deps import (
    CurrentStaff,
    RedisDep,
    SessionDep,
    SettingsDep,
    audit,
    commit_config_change,
    device_in_jurisdiction,
    supervisee_in_jurisdiction,
)
from api.enrolment import seed_device_clocks
from api.errors import Conflict, Invalid, NotFound
from api.exports import POSITION_COLUMNS, ExportFormat, TrackResponse, iso_times, open_track, point_feature
from api.routes.broker import device_credentials
from api.routes.zones import visible_zone
from api.schemas import (
    DbId,
    DeviceCredentials,
    DeviceIn,
    DeviceOut,
    HomeAreaIn,
    RuleOverridesIn,
    SuperviseeIn,
    SuperviseeOut,
    ZoneAssignmentIn,
    ZoneAssignmentOut,
)
from api.security import hash_device_secret, new_device_id, new_device_secret
from geofence.profile import validate_overrides
from store.broker_sync import broker_hash
from store.enums import OrgKind
from store.models import Device, OrgUnit, Supervisee, SuperviseeZone

router = APIRouter(tags=["supervisees"])

# Location data may be used only for corrections: every read states why, and the audit log
# keeps it with who, when and from where.
PurposeQ = Query(
    ..., min_length=3, max_length=200,
    description="Why location data is read (required; recorded in the audit log)",
)
MAX_TRACK_SPAN = timedelta(days=31)


def _check_home_zone(session: Any, ctx: Any, zone_id: int) -> None:
    zone = visible_zone(session, ctx, zone_id, active=True)
    if zone.kind != "home_area":
        raise Invalid(f"zone {zone_id} is a {zone.kind}, not a home area")


@router.post("/supervisees", response_model=SuperviseeOut, status_code=201, **access(SUPERVISORS))
def create_supervisee(
    body: SuperviseeIn, ctx: CurrentStaff, session: SessionDep, request: Request,
    r: RedisDep, settings: SettingsDep,
) -> Supervisee:
    """Register a supervisee with a judicial office of the caller's jurisdiction."""
    office = session.get(OrgUnit, body.office_id)
    if office is None or not ctx.can_see_unit(office.id):
        raise NotFound(f"organisation unit {body.office_id} not found")
    if office.kind != OrgKind.JUDICIAL_OFFICE:
        raise Invalid("a supervisee belongs to a judicial office, not to a bureau")
    if body.home_zone_id is not None:
        _check_home_zone(session, ctx, body.home_zone_id)
    if session.scalars(select(Supervisee).where(Supervisee.case_number == body.case_number)).first():
        raise Conflict(f"case number {body.case_number!r} is already registered")
    sup = Supervisee(**body.model_dump(mode="json"))
    session.add(sup)
    session.flush()
    commit_config_change(session, ctx, request, r, settings,
                         "supervisee.create", f"supervisee:{sup.id}")
    return sup


@router.get("/supervisees", response_model=list[SuperviseeOut], **access(EVERYONE))
def list_supervisees(
    ctx: CurrentStaff, session: SessionDep, office_id: DbId | None = None,
    offset: int = Query(0, ge=0, le=2**31 - 1), limit: int = Query(100, ge=1, le=1000),
) -> list[Supervisee]:
    """Supervisees of the caller's jurisdiction."""
    q = select(Supervisee).where(Supervisee.office_id.in_(ctx.unit_ids))
    if office_id is not None:
        q = q.where(Supervisee.office_id == office_id)
    return list(session.scalars(q.order_by(Supervisee.id).offset(offset).limit(limit)))


@router.get("/supervisees/{supervisee_id}", response_model=SuperviseeOut, **access(EVERYONE))
def get_supervisee(supervisee_id: DbId, ctx: CurrentStaff, session: SessionDep) -> Supervisee:
    """One supervisee."""
    return supervisee_in_jurisdiction(session, ctx, supervisee_id)


@router.put("/supervisees/{supervisee_id}/home-area", response_model=SuperviseeOut, **access(SUPERVISORS))
def set_home_area(
    supervisee_id: DbId, body: HomeAreaIn, ctx: CurrentStaff, session: SessionDep,
    request: Request, r: RedisDep, settings: SettingsDep,
) -> Supervisee:
    """Set the approved movement area (执行地)."""
    sup = supervisee_in_jurisdiction(session, ctx, supervisee_id)
    _check_home_zone(session, ctx, body.zone_id)
    sup.home_zone_id = body.zone_id
    commit_config_change(session, ctx, request, r, settings,
                         "supervisee.set_home_area", f"supervisee:{sup.id}",
          zone_id=body.zone_id)
    return sup


@router.post(
    "/supervisees/{supervisee_id}/devices", response_model=DeviceCredentials, status_code=201,
    **access(SUPERVISORS))
def enrol_device(
    supervisee_id: DbId, body: DeviceIn, ctx: CurrentStaff, session: SessionDep,
    request: Request, r: RedisDep, settings: SettingsDep,
) -> DeviceCredentials:
    """Enrol a phone; its credentials are returned once and stored only hashed."""
    sup = supervisee_in_jurisdiction(session, ctx, supervisee_id)
    device_id, secret = new_device_id(), new_device_secret()
    session.add(Device(id=device_id, supervisee_id=sup.id, label=body.label,
                       secret_hash=hash_device_secret(secret), broker_hash=broker_hash(secret)))
    commit_config_change(session, ctx, request, r, settings,
                         "device.enrol", f"device:{device_id}", supervisee_id=sup.id)
    seed_device_clocks(settings, r, device_id)
    return device_credentials(settings, device_id, secret)


@router.get("/supervisees/{supervisee_id}/devices", response_model=list[DeviceOut], **access(SUPERVISORS))
def list_devices(supervisee_id: DbId, ctx: CurrentStaff, session: SessionDep) -> list[Device]:
    """A supervisee's phones (never their secrets)."""
    supervisee_in_jurisdiction(session, ctx, supervisee_id)
    return list(session.scalars(select(Device).where(Device.supervisee_id == supervisee_id)))


@router.delete("/devices/{device_id}", response_model=DeviceOut, **access(SUPERVISORS))
def revoke_device(
    device_id: str, ctx: CurrentStaff, session: SessionDep, request: Request,
    r: RedisDep, settings: SettingsDep,
) -> Device:
    """Revoke a phone at once: its further messages are dead-lettered as unknown."""
    dev = device_in_jurisdiction(session, ctx, device_id)
    dev.active = False
    dev.revoked_at = datetime.now().astimezone()
    commit_config_change(session, ctx, request, r, settings,
                         "device.revoke", f"device:{device_id}")
    return dev


def _position_row(row: Any) -> dict[str, Any]:
    return iso_times(dict(row._mapping))


@router.get("/supervisees/{supervisee_id}/position", **access(SUPERVISORS))
def latest_position(
    supervisee_id: DbId, ctx: CurrentStaff, session: SessionDep, request: Request,
    purpose: str = PurposeQ,
) -> dict[str, Any]:
    """The newest accepted fix (WGS-84) as a GeoJSON Feature."""
    supervisee_in_jurisdiction(session, ctx, supervisee_id)
    # Which fix is the newest comes from last_positions (kept by ingest); the row itself from
    # its one daily partition (both keys bound: the planner prunes every other partition).
    last = session.execute(text("SELECT device_id, fix_time FROM last_positions "
                                "WHERE supervisee_id = :s"), {"s": supervisee_id}).first()
    row = None if last is None else session.execute(
        text(f"""SELECT {POSITION_COLUMNS} FROM positions WHERE device_id = :d AND fix_time = :t"""),
        {"d": last.device_id, "t": last.fix_time},
    ).first()
    audit(session, ctx, request, "location.read_latest", f"supervisee:{supervisee_id}", purpose)
    session.commit()
    if row is None:
        raise NotFound(f"no position yet for supervisee {supervisee_id}")
    props = _position_row(row)
    return {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [props["lon"], props["lat"]]},
        "properties": props,
    }


@router.get("/supervisees/{supervisee_id}/track", response_model=None, **access(SUPERVISORS))
def track(
    supervisee_id: DbId, ctx: CurrentStaff, session: SessionDep, request: Request,
    start: datetime = Query(..., alias="from"), end: datetime = Query(..., alias="to"),
    purpose: str = PurposeQ,
    limit: int = Query(10_000, ge=1, le=100_000,
                       description="the JSON answer's most fixes (it says `truncated` and the "
                                   "period's `total`); a file (`format`) always holds them all"),
    export: ExportFormat | None = Query(
        None, alias="format",
        description="download the whole period as a file, streamed however many fixes it holds: "
                    "geojson, gpx (GPX 1.1; accuracy in the urn:ccs:gpx:1 extensions), csv (with "
                    "a header) or kml (KML 2.2: the track as a LineString, each fix a Placemark "
                    "with its TimeStamp and accuracy/provider/source in ExtendedData); audited "
                    "with the format and the number of fixes"),
) -> dict[str, Any] | StreamingResponse:
    """Fixes in [from, to) as a FeatureCollection: the track line first, then each fix.

    As JSON at most `limit` fixes, the first ones; `truncated` says when the period holds more
    (`total`). As a file (`format`) every fix of the period, streamed from one database snapshot
    on a connection of the export's own (api/exports.py). The audit row is written when the
    export starts, before the first byte is sent: purpose, format, period and the number of fixes
    the file holds (a download the client abandons midway is recorded all the same).
    """
    sup = supervisee_in_jurisdiction(session, ctx, supervisee_id)
    if start.tzinfo is None or end.tzinfo is None:
        raise Invalid("from and to need a timezone (e.g. 2026-11-26T08:00:00Z)")
    if not start < end or end - start > MAX_TRACK_SPAN:
        raise Invalid("need from < to, at most 31 days apart")
    if export is None:
        return _track_json(session, ctx, request, supervisee_id, start, end, purpose, limit)
    track_export = open_track(supervisee_id, start, end)
    try:
        audit(session, ctx, request, "location.export_track", f"supervisee:{supervisee_id}",
              purpose, start=start.isoformat(), end=end.isoformat(), fixes=track_export.total,
              format=export)
        session.commit()
        # The request's session is done with: its pooled connection goes back now, not when the
        # response ends (the dependency's cleanup), however long the download takes.
        session.close()
    except BaseException:
        track_export.close()
        raise
    stamp = f"{start.astimezone(UTC):%Y%m%dT%H%MZ}-{end.astimezone(UTC):%Y%m%dT%H%MZ}"
    filename = f"track-{sup.case_number}-{stamp}.{export}"
    ascii_name = re.sub(r"[^A-Za-z0-9._-]", "_", filename)
    return TrackResponse(
        track_export, export, f"{sup.case_number} {stamp}", supervisee_id,
        headers={"Content-Disposition": f"attachment; filename=\"{ascii_name}\"; "
                                        f"filename*=UTF-8''{quote(filename)}",
                 "Cache-Control": "no-store"})


def _track_json(session: Any, ctx: Any, request: Request, supervisee_id: int, start: datetime,
                end: datetime, purpose: str, limit: int) -> dict[str, Any]:
    period = {"s": supervisee_id, "a": start, "b": end}
    where = "WHERE supervisee_id = :s AND fix_time >= :a AND fix_time < :b"
    rows = session.execute(
        text(f"SELECT {POSITION_COLUMNS} FROM positions {where} ORDER BY fix_time, device_id "
             "LIMIT :n"), {**period, "n": limit + 1}).all()
    truncated = len(rows) > limit
    total = len(rows)
    if truncated:
        rows = rows[:limit]
        total = max(total, session.execute(text(f"SELECT count(*) FROM positions {where}"),
                                           period).scalar_one())
    audit(session, ctx, request, "location.read_track", f"supervisee:{supervisee_id}", purpose,
          start=start.isoformat(), end=end.isoformat(), fixes=len(rows), total=total)
    session.commit()
    points = [_position_row(r) for r in rows]
    features: list[dict[str, Any]] = []
    if len(points) >= 2:
        features.append({
            "type": "Feature",
            "geometry": {"type": "LineString",
                         "coordinates": [[p["lon"], p["lat"]] for p in points]},
            "properties": {"kind": "track", "supervisee_id": supervisee_id},
        })
    features += [point_feature(p) for p in points]
    return {"type": "FeatureCollection", "features": features, "crs_note": "WGS-84 (EPSG:4326)",
            "total": total, "truncated": truncated}


@router.post("/supervisees/{supervisee_id}/zones", response_model=ZoneAssignmentOut,
             status_code=201, **access(SUPERVISORS))
def assign_zone(
    supervisee_id: DbId, body: ZoneAssignmentIn, ctx: CurrentStaff, session: SessionDep,
    request: Request, r: RedisDep, settings: SettingsDep,
) -> SuperviseeZone:
    """Apply a prohibition-order zone or a curfew to one person."""
    sup = supervisee_in_jurisdiction(session, ctx, supervisee_id)
    zone = visible_zone(session, ctx, body.zone_id, active=True)
    if body.role == "exclusion" and zone.kind != "exclusion":
        raise Invalid(f"zone {zone.id} is a {zone.kind}; a prohibition order needs an exclusion zone")
    if body.role == "curfew" and (body.curfew_start is None or body.curfew_end is None):
        raise Invalid("a curfew needs curfew_start and curfew_end (hh:mm)")
    try:
        ZoneInfo(body.timezone)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise Invalid(f"unknown time zone {body.timezone!r}") from e
    row = SuperviseeZone(supervisee_id=sup.id, **body.model_dump())
    session.add(row)
    session.flush()
    commit_config_change(session, ctx, request, r, settings,
                         "supervisee.assign_zone", f"supervisee:{sup.id}",
          zone_id=zone.id, role=body.role)
    return row


@router.get("/supervisees/{supervisee_id}/zones", response_model=list[ZoneAssignmentOut],
            **access(SUPERVISORS))
def list_zone_assignments(
    supervisee_id: DbId, ctx: CurrentStaff, session: SessionDep
) -> list[SuperviseeZone]:
    """Exclusion zones and curfews of one person."""
    supervisee_in_jurisdiction(session, ctx, supervisee_id)
    return list(session.scalars(select(SuperviseeZone).where(
        SuperviseeZone.supervisee_id == supervisee_id).order_by(SuperviseeZone.id)))


@router.delete("/supervisees/{supervisee_id}/zones/{assignment_id}",
               response_model=ZoneAssignmentOut, **access(SUPERVISORS))
def end_zone_assignment(
    supervisee_id: DbId, assignment_id: DbId, ctx: CurrentStaff, session: SessionDep,
    request: Request, r: RedisDep, settings: SettingsDep,
) -> SuperviseeZone:
    """Lift an exclusion zone or curfew (kept, marked inactive)."""
    supervisee_in_jurisdiction(session, ctx, supervisee_id)
    row = session.get(SuperviseeZone, assignment_id)
    if row is None or row.supervisee_id != supervisee_id:
        raise NotFound(f"assignment {assignment_id} not found")
    row.active = False
    commit_config_change(session, ctx, request, r, settings,
                         "supervisee.end_zone", f"supervisee:{supervisee_id}",
          assignment_id=assignment_id)
    return row


@router.put("/supervisees/{supervisee_id}/rules", response_model=SuperviseeOut, **access(SUPERVISORS))
def set_rule_overrides(
    supervisee_id: DbId, body: RuleOverridesIn, ctx: CurrentStaff, session: SessionDep,
    request: Request, r: RedisDep, settings: SettingsDep,
) -> Supervisee:
    """Override thresholds of the rule profile for one person (with the reason, audited)."""
    sup = supervisee_in_jurisdiction(session, ctx, supervisee_id)
    try:
        overrides = validate_overrides(body.overrides)
    except ValueError as e:
        raise Invalid(str(e), code="invalid.rule_override") from e
    sup.rule_overrides = overrides
    commit_config_change(session, ctx, request, r, settings,
                         "supervisee.set_rules", f"supervisee:{sup.id}",
          overrides=overrides, reason=body.reason)
    return sup
