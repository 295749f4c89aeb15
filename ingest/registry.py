"""Who each device speaks for, and its zones: cached in the worker, invalidated through Redis."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import psycopg
import redis
import shapely

from geofence.model import Subject, ZoneKind
from geofence.zones import PreparedZone

CONFIG_VERSION_KEY = "config_version"
UNKNOWN_TTL_S = 5.0


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """A device as the hot path needs it."""

    device_id: str
    supervisee_id: int
    office_id: int
    home_zone_id: int | None
    active: bool


def bump_config_version(r: redis.Redis, prefix: str) -> None:
    """Tell every worker that devices, supervisees or zones changed."""
    r.incr(prefix + CONFIG_VERSION_KEY)


class Registry:
    """Device and zone cache for one worker; reloads everything when the config version moves."""

    def __init__(self, r: redis.Redis, prefix: str) -> None:
        self._redis = r
        self._prefix = prefix
        self._version: bytes | None = None
        self.devices: dict[str, DeviceInfo] = {}
        self._unknown: dict[str, float] = {}
        self.zones: dict[int, PreparedZone] = {}

    def refresh_if_changed(self) -> None:
        """One Redis GET per batch: drop caches when someone changed the configuration."""
        v = cast(bytes | None, self._redis.get(self._prefix + CONFIG_VERSION_KEY))
        if v != self._version:
            self._version = v
            self.devices.clear()
            self._unknown.clear()
            self.zones.clear()

    def lookup(self, conn: psycopg.Connection, device_ids: Iterable[str]) -> dict[str, DeviceInfo]:
        """Known, active devices among `device_ids` (loading misses in one query)."""
        now = time.monotonic()
        wanted = set(device_ids)
        missing = [
            d for d in wanted
            if d not in self.devices and self._unknown.get(d, 0.0) < now
        ]
        if missing:
            rows = conn.execute(
                """SELECT d.id, d.supervisee_id, s.office_id, s.home_zone_id,
                          d.active AND s.active
                     FROM devices d JOIN supervisees s ON s.id = d.supervisee_id
                    WHERE d.id = ANY(%s)""",
                (missing,),
            ).fetchall()
            for dev_id, sup_id, office_id, zone_id, active in rows:
                self.devices[dev_id] = DeviceInfo(dev_id, sup_id, office_id, zone_id, active)
            for d in set(missing) - {r[0] for r in rows}:
                self._unknown[d] = now + UNKNOWN_TTL_S
            zone_ids = {r[3] for r in rows if r[3] is not None} - set(self.zones)
            if zone_ids:
                self._load_zones(conn, zone_ids)
        return {d: self.devices[d] for d in wanted if d in self.devices and self.devices[d].active}

    def _load_zones(self, conn: psycopg.Connection, zone_ids: set[int]) -> None:
        rows = conn.execute(
            "SELECT id, version, kind, ST_AsBinary(geom) FROM zones WHERE id = ANY(%s)",
            (list(zone_ids),),
        ).fetchall()
        for zid, version, kind, wkb in rows:
            self.zones[zid] = PreparedZone(zid, version, ZoneKind(kind), shapely.from_wkb(wkb))

    def subjects(self, infos: dict[str, DeviceInfo]) -> dict[str, Subject]:
        """Engine-facing view of the devices."""
        return {d: Subject(i.supervisee_id, i.home_zone_id) for d, i in infos.items()}
