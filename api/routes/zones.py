"""Zones as GeoJSON: home areas, exclusion zones, destinations."""

from __future__ import annotations

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
    unit_path_ids,
)
from api.errors import Invalid, NotFound
from api.schemas import DbId, ZoneIn
from geofence.model import CRS, ZoneKind
from geofence.zones import InvalidZone, circle_zone, parse_zone_geojson
from store.models import Zone

router = APIRouter(prefix="/zones", tags=["zones"])


def visible_zone(session: Session, ctx: StaffContext, zone_id: int) -> Zone:
    """A zone owned in the caller's subtree or by one of its ancestors (404 otherwise)."""
    zone = session.get(Zone, zone_id)
    if zone is None or not (
        ctx.can_see_unit(zone.owner_unit_id) or zone.owner_unit_id in unit_path_ids(ctx.unit)
    ):
        raise NotFound(f"zone {zone_id} not found")
    return zone


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
    zone = Zone(
        kind=ZoneKind(body.kind).value, name=body.name, owner_unit_id=body.owner_unit_id,
        crs=CRS(body.crs).value,
        source_geojson=orjson.loads(orjson.dumps(
            body.geometry if body.radius_m is None else {**body.geometry, "radius_m": body.radius_m})),
        geom=from_shape(geom, srid=4326),
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
