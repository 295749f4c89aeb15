"""Building blocks for organisations and the Wuhan demo (used by `make run` and by tests)."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geoalchemy2.shape import from_shape
from shapely.geometry import MultiPolygon, shape
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from geofence.crs import transform_geometry
from geofence.model import CRS, ZoneKind
from store.enums import Level, OrgKind, Role, SupervisionType
from store.models import OrgUnit, Staff, Supervisee, Zone

DATA = Path(__file__).with_name("data")


def load_regions(name: str = "wuhan.geojson") -> dict[str, Any]:
    """A FeatureCollection of real boundaries (GCJ-02) shipped with the project."""
    return json.loads((DATA / name).read_text(encoding="utf-8"))


def create_unit(
    session: Session, parent: OrgUnit | None, kind: OrgKind, name: str,
    name_en: str | None = None, adcode: str | None = None,
) -> OrgUnit:
    """Add an organisation unit below `parent`, with its materialised path."""
    unit = OrgUnit(parent_id=parent.id if parent else None, kind=kind.value, name=name,
                   name_en=name_en, adcode=adcode, path="pending:" + secrets.token_hex(8))
    session.add(unit)
    session.flush()
    unit.path = (parent.path if parent else "/") + f"{unit.id}/"
    session.flush()
    return unit


def create_staff(
    session: Session, unit: OrgUnit, username: str, role: Role, password: str,
    full_name: str | None = None, password_hash: str | None = None,
) -> Staff:
    """Add a staff account with an argon2-hashed password (or a hash computed before)."""
    from api.security import hash_password

    staff = Staff(org_unit_id=unit.id, username=username, full_name=full_name or username,
                  role=role.value, password_hash=password_hash or hash_password(password))
    session.add(staff)
    session.flush()
    return staff


def create_zone(
    session: Session, owner: OrgUnit, name: str, geometry: dict[str, Any], crs: CRS,
    kind: ZoneKind = ZoneKind.HOME_AREA, adcode: str | None = None,
) -> Zone:
    """Add a zone from GeoJSON drawn in `crs` (stored in WGS-84, the drawing kept as is)."""
    geom = transform_geometry(shape(geometry), crs, CRS.WGS84)
    if not isinstance(geom, MultiPolygon):
        geom = MultiPolygon([geom])
    zone = Zone(kind=kind.value, name=name, owner_unit_id=owner.id, adcode=adcode,
                crs=crs.value, source_geojson=geometry, geom=from_shape(geom, srid=4326))
    session.add(zone)
    session.flush()
    return zone


@dataclass
class DemoOrg:
    """What the demo seed created: ids, and the passwords to print once."""

    city: OrgUnit
    districts: dict[str, OrgUnit] = field(default_factory=dict)  # adcode -> bureau
    offices: dict[str, OrgUnit] = field(default_factory=dict)  # adcode -> office
    zones: dict[str, Zone] = field(default_factory=dict)  # adcode -> home-area zone
    credentials: list[tuple[str, str, str, str]] = field(default_factory=list)


def seed_demo(session: Session, supervisees_per_office: int = 3) -> DemoOrg | None:
    """Seed Wuhan's city bureau, 13 district bureaus, an office each, staff and supervisees.

    Does nothing (returns None) when the database already has an organisation.
    """
    if session.scalar(select(func.count()).select_from(OrgUnit)):
        return None
    fc = load_regions()
    city_f = next(f for f in fc["features"] if f["properties"]["level"] == "city")
    city = create_unit(session, None, OrgKind.CITY_BUREAU, "武汉市司法局", "Wuhan Justice Bureau",
                       city_f["properties"]["adcode"])
    demo = DemoOrg(city)

    def account(unit: OrgUnit, username: str, role: Role) -> None:
        password = secrets.token_urlsafe(12)
        create_staff(session, unit, username, role, password)
        demo.credentials.append((username, password, role.value, unit.name))

    account(city, "admin", Role.CITY_ADMIN)
    for f in fc["features"]:
        p = f["properties"]
        if p["level"] != "district":
            continue
        slug = p["name_en"].lower().replace("'", "")
        bureau = create_unit(session, city, OrgKind.DISTRICT_BUREAU, f"{p['name']}司法局",
                             f"{p['name_en']} District Justice Bureau", p["adcode"])
        office = create_unit(session, bureau, OrgKind.JUDICIAL_OFFICE, f"{p['name']}中心司法所",
                             f"{p['name_en']} Central Judicial Office", None)
        zone = create_zone(session, bureau, f"{p['name']} (执行地)", f["geometry"], CRS.GCJ02,
                           adcode=p["adcode"])
        demo.districts[p["adcode"]], demo.offices[p["adcode"]] = bureau, office
        demo.zones[p["adcode"]] = zone
        account(bureau, f"{slug}-supervisor", Role.DISTRICT_SUPERVISOR)
        account(office, f"{slug}-officer", Role.OFFICER)
        for k in range(supervisees_per_office):
            session.add(Supervisee(
                office_id=office.id, full_name=f"Demo {p['name_en']} {k + 1}",
                case_number=f"DEMO-{p['adcode']}-{k + 1:03d}",
                supervision_type=list(SupervisionType)[k % 4].value,
                level=list(Level)[k % 3].value, home_zone_id=zone.id,
            ))
    session.flush()
    return demo


def main() -> None:
    """`python -m store.demo`: seed an empty database and print the accounts once."""
    from store.db import session_factory

    with session_factory()() as session:
        demo = seed_demo(session)
        session.commit()
    if demo is None:
        print("database already has an organisation: demo seed skipped")
        return
    print("\nDemo organisation seeded: Wuhan city bureau, 13 district bureaus, 13 offices.")
    print("Staff accounts (shown once, store them now):")
    print(f"  {'username':24} {'password':18} {'role':20} unit")
    for username, password, role, unit in demo.credentials:
        print(f"  {username:24} {password:18} {role:20} {unit}")
    print()


if __name__ == "__main__":
    main()
