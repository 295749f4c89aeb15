"""Zones as GeoJSON: home areas, exclusion zones, destinations."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from fastapi import APIRouter, Request
from geoalchemy2.shape import from_shape, to_shape
from shapely.geometry import mapping
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from api.authz import SUPERVISORS, access
from api.deps import (
    CurrentStaff,
    RedisDep,
    SessionDep,
    SettingsDep,
    StaffContext,
    commit_config_change,
    pg_now,
    unit_path_ids,
)
from api.errors import Conflict, Forbidden, Invalid, NotFound
from api.schemas import DbId, ZoneIn, ZoneRetireIn, ZoneShapeIn
from geofence.model import CRS, ZoneKind
from geofence.zones import InvalidZone, circle_zone, parse_zone_geojson
from store.models import OrgUnit, Supervisee, SuperviseeZone, Zone

router = APIRouter(prefix="/zones", tags=["zones"])


def visible_zone(session: Session, ctx: StaffContext, zone_id: int, *, active: bool = False,
                 lock: bool = False) -> Zone:
    """A zone owned in the caller's subtree or by one of its ancestors (404 otherwise); with
    `active`, a retired one is refused (409) — it can no longer be assigned or changed."""
    zone = session.get(Zone, zone_id, with_for_update=lock)
    if zone is None or not (
        ctx.can_see_unit(zone.owner_unit_id) or zone.owner_unit_id in unit_path_ids(ctx.unit)
    ):
        raise NotFound(f"zone {zone_id} not found")
    if active and not zone.active:
        raise Conflict(f"zone {zone_id} is retired", code="zone_retired")
    return zone


def owned_zone(session: Session, ctx: StaffContext, zone_id: int) -> Zone:
    """A zone the caller may change: owned in its subtree (a unit above's: 403), locked, active."""
    zone = visible_zone(session, ctx, zone_id, active=True, lock=True)
    if not ctx.can_see_unit(zone.owner_unit_id):
        owner = session.get(OrgUnit, zone.owner_unit_id)
        raise Forbidden(f"zone {zone_id} belongs to {owner.name if owner else 'a unit above yours'}"
                        ", a unit above yours: only its staff can change or retire it",
                        code="zone_of_unit_above")
    return zone


def zone_shape(body: ZoneShapeIn) -> tuple[Any, dict[str, Any]]:
    """The validated WGS-84 geometry (for PostGIS) and the shape as drawn, of a create or update.

    Refusals are the engine's (geofence/zones.py): 422 with code `invalid_zone.<reason>`.
    """
    try:
        if body.geometry.get("type") == "Point" and body.radius_m is not None:
            coords = body.geometry.get("coordinates")
            if not (isinstance(coords, list) and len(coords) == 2
                    and all(isinstance(c, int | float) for c in coords)):
                raise InvalidZone("bad_position", "a circle's centre is a Point [lon, lat]")
            geom = circle_zone(float(coords[0]), float(coords[1]), body.radius_m, CRS(body.crs))
        else:
            geom = parse_zone_geojson(body.geometry, CRS(body.crs))
    except InvalidZone as e:
        raise Invalid(str(e), code=f"invalid_zone.{e.reason}") from e
    source = orjson.loads(orjson.dumps(
        body.geometry if body.radius_m is None else {**body.geometry, "radius_m": body.radius_m}))
    return from_shape(geom, srid=4326), source


def zone_feature(zone: Zone) -> dict[str, Any]:
    """GeoJSON Feature (WGS-84) with the zone as drawn in its original system."""
    return {
        "type": "Feature",
        "id": zone.id,
        "geometry": mapping(to_shape(zone.geom)),
        "properties": {
            "name": zone.name,
            "kind": zone.kind,
            "owner_unit_id": zone.owner_unit_id,
            "adcode": zone.adcode,
            "version": zone.version,
            "active": zone.active,
            "crs": "wgs84",
            "drawn_crs": zone.crs,
            "drawn_geometry": zone.source_geojson,
        },
    }


@router.post("", status_code=201, **access(SUPERVISORS))
def create_zone(
    body: ZoneIn, ctx: CurrentStaff, session: SessionDep, r: RedisDep, settings: SettingsDep,
    request: Request,
) -> dict[str, Any]:
    """Create a zone from a GeoJSON Polygon/MultiPolygon drawn in `crs`; invalid shapes are refused."""
    if not (ctx.can_see_unit(body.owner_unit_id)):
        raise NotFound(f"organisation unit {body.owner_unit_id} not found")
    geom, source = zone_shape(body)
    zone = Zone(
        kind=ZoneKind(body.kind).value, name=body.name, owner_unit_id=body.owner_unit_id,
        crs=CRS(body.crs).value, source_geojson=source, geom=geom,
    )
    session.add(zone)
    session.flush()
    commit_config_change(session, ctx, request, r, settings, "zone.create", f"zone:{zone.id}")
    session.refresh(zone)
    return zone_feature(zone)


@router.get("", **access(SUPERVISORS))
def list_zones(ctx: CurrentStaff, session: SessionDep, kind: ZoneKind | None = None) -> dict[str, Any]:
    """Zones the caller may use, as a FeatureCollection."""
    q = select(Zone).where(
        or_(Zone.owner_unit_id.in_(ctx.unit_ids), Zone.owner_unit_id.in_(unit_path_ids(ctx.unit)))
    )
    if kind is not None:
        q = q.where(Zone.kind == kind.value)
    zones = session.scalars(q.order_by(Zone.id)).all()
    return {"type": "FeatureCollection", "features": [zone_feature(z) for z in zones]}


@router.get("/{zone_id}", **access(SUPERVISORS))
def get_zone(zone_id: DbId, ctx: CurrentStaff, session: SessionDep) -> dict[str, Any]:
    """One zone as a GeoJSON Feature."""
    return zone_feature(visible_zone(session, ctx, zone_id))


@router.put("/{zone_id}", **access(SUPERVISORS))
def update_zone(
    zone_id: DbId, body: ZoneShapeIn, ctx: CurrentStaff, session: SessionDep, r: RedisDep,
    settings: SettingsDep, request: Request,
) -> dict[str, Any]:
    """Replace a zone's name and shape (validated as on create); its version goes up.

    Kind and owner stay. The audit row keeps the previous version, name, drawing system and
    shape as drawn: what the zone was when an earlier alert fired stays recoverable. Workers
    reload the zone at their next batch (config version).
    """
    zone = owned_zone(session, ctx, zone_id)
    geom, source = zone_shape(body)
    previous: dict[str, Any] = {"previous_version": zone.version, "previous_name": zone.name,
                "previous_crs": zone.crs, "previous_geojson": zone.source_geojson}
    zone.name, zone.crs, zone.source_geojson, zone.geom = body.name, CRS(body.crs).value, source, geom
    zone.version = zone.version + 1
    zone.updated_at = pg_now(session)
    commit_config_change(session, ctx, request, r, settings, "zone.update", f"zone:{zone.id}",
                         version=zone.version, **previous)
    session.refresh(zone)
    return zone_feature(zone)


@router.post("/{zone_id}/retire", **access(SUPERVISORS))
def retire_zone(
    zone_id: DbId, body: ZoneRetireIn, ctx: CurrentStaff, session: SessionDep, r: RedisDep,
    settings: SettingsDep, request: Request,
) -> dict[str, Any]:
    """Retire a zone no one uses (kept, inactive: it can no longer be assigned).

    Refused (409) while it is an active supervisee's home area or has active prohibition-order
    or curfew assignments; the refusal names the cases the caller may see.
    """
    zone = owned_zone(session, ctx, zone_id)
    homes = session.scalars(select(Supervisee).where(
        Supervisee.home_zone_id == zone.id, Supervisee.active)).all()
    assigned = session.scalars(select(Supervisee).join(
        SuperviseeZone, SuperviseeZone.supervisee_id == Supervisee.id).where(
        SuperviseeZone.zone_id == zone.id, SuperviseeZone.active).distinct()).all()
    uses = [(what, people) for what, people in (("the home area of", homes), ("assigned to", assigned))
            if people]
    if uses:
        raise Conflict(f"zone {zone.id} is still in use: " + "; ".join(
            f"{what} {_cases(ctx, people)}" for what, people in uses)
            + " (lift the assignments or set another home area first)", code="zone_in_use")
    zone.active = False
    zone.updated_at = pg_now(session)
    commit_config_change(session, ctx, request, r, settings, "zone.retire", f"zone:{zone.id}",
                         reason=body.reason, version=zone.version)
    session.refresh(zone)
    return zone_feature(zone)


def _cases(ctx: StaffContext, people: Sequence[Supervisee]) -> str:
    """Case numbers the caller may see, and how many others (of other offices) there are."""
    seen = [p.case_number for p in people if ctx.can_see_unit(p.office_id)]
    hidden = len(people) - len(seen)
    return ", ".join(seen + ([f"{hidden} outside your jurisdiction"] if hidden else []))
