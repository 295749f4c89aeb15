"""Provisioning of simulated supervisees and their phones in a seeded demo organisation.

Phone i (0-based) belongs to supervisee `SIM-{i:06d}` with device `sim{i:06d}`, in the district
`simulators.phone.district_index(i, 13)` of the Wuhan districts sorted by adcode: the same rule
the motion model uses, so a phone always moves in the district it is enrolled in.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.security import hash_device_secret
from geofence.model import ZoneKind
from simulators.phone import district_index
from store.demo import load_regions
from store.enums import Level, OrgKind, SupervisionType
from store.models import OrgUnit, Zone
from store.registry import bump_config_version

__all__ = ["ProvisionResult", "device_id", "case_number", "district_adcodes", "provision_fleet"]

_STAGE = """CREATE TEMP TABLE sim_stage (
    case_number text, device_id text, office_id integer, zone_id integer, full_name text,
    supervision_type text, level text, secret_hash text)"""
# Existing rows are rewritten only when they differ, so a re-run writes nothing.
_UPSERT_SUPERVISEES = """
INSERT INTO supervisees AS s (office_id, full_name, case_number, supervision_type, level,
                              home_zone_id)
SELECT office_id, full_name, case_number, supervision_type, level, zone_id FROM sim_stage
ON CONFLICT (case_number) DO UPDATE
   SET office_id = excluded.office_id, home_zone_id = excluded.home_zone_id, active = true
 WHERE s.office_id IS DISTINCT FROM excluded.office_id
    OR s.home_zone_id IS DISTINCT FROM excluded.home_zone_id OR NOT s.active
RETURNING 1"""
_UPSERT_DEVICES = """
INSERT INTO devices AS d (id, supervisee_id, label, secret_hash)
SELECT st.device_id, s.id, 'simulated phone', st.secret_hash
  FROM sim_stage st JOIN supervisees s USING (case_number)
ON CONFLICT (id) DO UPDATE
   SET supervisee_id = excluded.supervisee_id, active = true, revoked_at = NULL
 WHERE d.supervisee_id IS DISTINCT FROM excluded.supervisee_id OR NOT d.active
    OR d.revoked_at IS NOT NULL
RETURNING 1"""


def device_id(i: int) -> str:
    """Device id of simulated phone i."""
    return f"sim{i:06d}"


def case_number(i: int) -> str:
    """Case number of the supervisee carrying simulated phone i."""
    return f"SIM-{i:06d}"


def district_adcodes(fc: dict | None = None) -> list[str]:
    """Adcodes of the districts, sorted: index k is district k of the motion model."""
    fc = fc or load_regions()
    return sorted(f["properties"]["adcode"] for f in fc["features"]
                  if f["properties"]["level"] == "district")


@dataclass(frozen=True)
class ProvisionResult:
    """What provisioning changed."""

    phones: int
    supervisees_written: int  # inserted or corrected
    devices_written: int

    @property
    def changed(self) -> bool:
        """True when anything was written (and workers were told to reload)."""
        return bool(self.supervisees_written or self.devices_written)


class DemoOrgMissing(RuntimeError):
    """The demo organisation (districts, offices, home-area zones) is not seeded."""


def _targets(session: Session, adcodes: list[str]) -> list[tuple[int, int]]:
    """(office id, home-area zone id) per district adcode, in the order of `adcodes`."""
    bureaus = {
        b.adcode: b
        for b in session.scalars(
            select(OrgUnit)
            .where(OrgUnit.kind == OrgKind.DISTRICT_BUREAU.value, OrgUnit.adcode.in_(adcodes))
            .order_by(OrgUnit.id)
        )
    }
    offices: dict[int, int] = {}
    for o in session.scalars(
        select(OrgUnit)
        .where(OrgUnit.kind == OrgKind.JUDICIAL_OFFICE.value,
               OrgUnit.parent_id.in_([b.id for b in bureaus.values()]))
        .order_by(OrgUnit.id)
    ):
        offices.setdefault(o.parent_id, o.id)  # type: ignore[arg-type]
    zones: dict[str, int] = {}
    for z in session.scalars(
        select(Zone)
        .where(Zone.kind == ZoneKind.HOME_AREA.value, Zone.adcode.in_(adcodes), Zone.active)
        .order_by(Zone.id)
    ):
        zones.setdefault(z.adcode, z.id)  # type: ignore[arg-type]
    out = []
    for code in adcodes:
        bureau = bureaus.get(code)
        if bureau is None or bureau.id not in offices or code not in zones:
            raise DemoOrgMissing(
                f"district {code} has no bureau, judicial office or home-area zone: seed the "
                "demo organisation first (`python -m store`)"
            )
        out.append((offices[bureau.id], zones[code]))
    return out


def provision_fleet(
    session: Session, n: int, r: redis.Redis | None = None, redis_prefix: str | None = None
) -> ProvisionResult:
    """Make sure phones 0..n-1 exist, enrolled in their districts; idempotent and bulk.

    Commits. Existing rows are only rewritten when their office, zone or state differ. When
    anything changed and a Redis client is given, the configuration version is bumped so
    running ingest workers reload their device cache.
    """
    adcodes = district_adcodes()
    targets = _targets(session, adcodes)
    types, levels = list(SupervisionType), list(Level)
    # COPY into a staging table, then two set-based upserts: statement compilation of 10,000
    # ORM rows would take seconds, this takes well under one.
    raw = session.connection().connection.driver_connection
    assert raw is not None, "the session's connection is closed"
    raw.execute(_STAGE)
    with raw.cursor().copy(
        "COPY sim_stage (case_number, device_id, office_id, zone_id, full_name, "
        "supervision_type, level, secret_hash) FROM STDIN"
    ) as cp:
        for i in range(n):
            office_id, zone_id = targets[int(district_index(i, len(adcodes)))]
            cp.write_row((
                case_number(i), device_id(i), office_id, zone_id, f"Simulated supervisee {i}",
                types[i % len(types)].value, levels[i % len(levels)].value,
                hash_device_secret(secrets.token_urlsafe(32)),
            ))
    sup_written = len(raw.execute(_UPSERT_SUPERVISEES).fetchall())
    dev_written = len(raw.execute(_UPSERT_DEVICES).fetchall())
    raw.execute("DROP TABLE sim_stage")
    session.commit()

    result = ProvisionResult(n, sup_written, dev_written)
    if result.changed and r is not None:
        if redis_prefix is None:
            raise ValueError("redis_prefix is required with a Redis client")
        bump_config_version(r, redis_prefix)
    return result
