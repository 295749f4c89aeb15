"""Who each device speaks for, their zones and rules: cached in the worker, invalidated via Redis."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, cast
from zoneinfo import ZoneInfo

import psycopg
import redis
import shapely

from geofence.corridor import Corridor, build_corridor, corridor_zone_id, with_corridor
from geofence.model import Curfew, Exclusion, Permit, Subject, ZoneKind
from geofence.profile import DEFAULT_PROFILE, RuleProfile
from geofence.zones import PreparedZone

log = logging.getLogger(__name__)

CONFIG_VERSION_KEY = "config_version"
LOCAL = ZoneInfo("Asia/Shanghai")
UNKNOWN_TTL_S = 5.0


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """A device as the hot path needs it."""

    device_id: str
    supervisee_id: int
    office_id: int
    active: bool
    subject: Subject
    interval_s: float = 900.0  # expected reporting interval (level, key person, key period)
    silence_s: float = 1800.0  # silence before a communication or location failure


def bump_config_version(r: redis.Redis, prefix: str) -> None:
    """Tell every worker that devices, supervisees, zones or rules changed. The value is new
    each time, not a counter: a Redis failover can lose the last change's write, and a counter
    would then reach a value a worker already saw with the next change, which it would miss."""
    r.set(prefix + CONFIG_VERSION_KEY, uuid.uuid4().hex)


def load_profile(conn: psycopg.Connection) -> RuleProfile:
    """The active rule profile, or the built-in national default when none is stored."""
    row = conn.execute("SELECT body FROM rule_profiles WHERE active").fetchone()
    return DEFAULT_PROFILE if row is None else RuleProfile.from_dict(row[0])


class Registry:
    """Device, rule and zone cache for one worker; reloads when the config version moves."""

    def __init__(self, r: redis.Redis, prefix: str) -> None:
        self._redis = r
        self._prefix = prefix
        self._version: bytes | None = None
        self._day: date | None = None
        self.devices: dict[str, DeviceInfo] = {}
        self._unknown: dict[str, float] = {}
        self.zones: dict[int, PreparedZone] = {}
        self.profile: RuleProfile | None = None
        # Permit corridors (synthetic negative zone ids in `zones`), keyed by what they were
        # built from: (home id, home version, destination id, destination version).
        self._corridors: dict[int, tuple[tuple[int, int, int, int], Corridor]] = {}
        self._corridors_used: set[int] = set()

    def refresh_if_changed(self) -> None:
        """One Redis GET per batch: drop caches when someone changed the configuration."""
        v = cast(bytes | None, self._redis.get(self._prefix + CONFIG_VERSION_KEY))
        # A new local day can start or end a key period: reload then too.
        day = datetime.now(LOCAL).date()
        if v != self._version or day != self._day:
            self._version, self._day = v, day
            self.devices.clear()
            self._unknown.clear()
            self.profile = None
            # Zones are keyed by id and checked by version on load: keep prepared geometry.
            # Corridors no device needed since the last reload belong to ended or withdrawn
            # permits: drop them (the devices that use them were just cleared).
            for cid in set(self._corridors) - self._corridors_used:
                del self._corridors[cid]
                self.zones.pop(cid, None)
            self._corridors_used.clear()

    def lookup(self, conn: psycopg.Connection, device_ids: Iterable[str]) -> dict[str, DeviceInfo]:
        """Known, active devices among `device_ids` (loading misses in a few queries)."""
        now = time.monotonic()
        wanted = set(device_ids)
        missing = [d for d in wanted if d not in self.devices and self._unknown.get(d, 0.0) < now]
        if missing:
            self._load(conn, missing, now)
        return {d: self.devices[d] for d in wanted if d in self.devices and self.devices[d].active}

    def _load(self, conn: psycopg.Connection, missing: list[str], now: float) -> None:
        if self.profile is None:
            self.profile = load_profile(conn)
        profile = self.profile
        rows = conn.execute(
            """SELECT d.id, d.supervisee_id, s.office_id, s.home_zone_id, d.active AND s.active,
                      s.level, s.rule_overrides, s.key_flags,
                      (SELECT min(k.interval_factor) FROM key_periods k
                        WHERE (now() AT TIME ZONE 'Asia/Shanghai')::date
                              BETWEEN k.starts_on AND k.ends_on
                          AND (k.levels = '{}' OR s.level = ANY(k.levels))
                          AND (k.flags = '{}' OR s.key_flags && k.flags))
                 FROM devices d JOIN supervisees s ON s.id = d.supervisee_id
                WHERE d.id = ANY(%s)""",
            (missing,),
        ).fetchall()
        sup_ids = list({r[1] for r in rows})
        extra: dict[int, list[Any]] = {s: [] for s in sup_ids}
        if sup_ids:
            for row in conn.execute(
                """SELECT supervisee_id, zone_id, role, buffer_m, curfew_start, curfew_end, timezone
                     FROM supervisee_zones WHERE active AND supervisee_id = ANY(%s)
                    ORDER BY id""",
                (sup_ids,),
            ):
                extra[row[0]].append(row)
        permits: dict[int, list[tuple[int, Permit, float]]] = {s: [] for s in sup_ids}
        if sup_ids:
            # Approved permits (and returned ones up to the return): the destination joins the
            # allowed area until the end plus the grace to travel back and check in.
            for pid, sid, zid, start, approved_end, end, returned in conn.execute(
                """SELECT id, supervisee_id, destination_zone_id, start_at, approved_end_at,
                          approved_end_at + make_interval(secs => %s * 3600), returned_at
                     FROM travel_permits
                    WHERE supervisee_id = ANY(%s) AND approved_end_at IS NOT NULL
                      AND status IN ('approved', 'returned', 'requested')
                      AND approved_end_at > now() - interval '30 days'""",
                (profile.travel.return_grace_hours, sup_ids),
            ):
                stop = min(end, returned) if returned is not None else end
                permits[sid].append((pid, Permit(zid, start.timestamp(), stop.timestamp()),
                                     approved_end.timestamp()))
        # Zones first: a permit's corridor is built from its home area and destination.
        zone_ids: set[int] = {r[3] for r in rows if r[3] is not None}
        zone_ids.update(p.zone_id for ps in permits.values() for _, p, _ in ps)
        zone_ids.update(row[1] for rs in extra.values() for row in rs)
        self._load_zones(conn, zone_ids)
        for dev_id, sup_id, office_id, home, active, level, overrides, flags, factor in rows:
            exclusions, curfews = [], []
            for _, zid, role, buffer_m, cs, ce, tz in extra.get(sup_id, []):
                if role == "exclusion":
                    exclusions.append(Exclusion(zid, float(buffer_m)))
                else:
                    curfews.append(Curfew(zid, cs, ce, tz))
            try:
                rules = profile.rules_for(level, overrides)
            except ValueError:
                log.exception("supervisee %s has invalid rule overrides; using the level's", sup_id)
                rules = profile.rules_for(level)
            travel = tuple(self._with_corridor(pid, p, approved_end, home)
                           for pid, p, approved_end in permits.get(sup_id, ()))
            subject = Subject(sup_id, home, travel, tuple(exclusions), tuple(curfews), rules,
                              profile.label)
            interval = profile.checkin.interval(level, bool(flags), factor or 1.0)
            self.devices[dev_id] = DeviceInfo(dev_id, sup_id, office_id, active, subject, interval,
                                              profile.checkin.deadline_after(interval))
        for d in set(missing) - {r[0] for r in rows}:
            self._unknown[d] = now + UNKNOWN_TTL_S

    def _with_corridor(self, permit_id: int, permit: Permit, approved_end: float,
                       home_id: int | None) -> Permit:
        """The permit with its corridor (home area ↔ destination) allowed in transit.

        The corridor is a synthetic zone, id `-permit_id`, built once per home and destination
        version and cached in `zones` like a stored one. Without a home area there is no way to
        speak of: the permit stays as it is.
        """
        home = self.zones.get(home_id) if home_id is not None else None
        dest = self.zones.get(permit.zone_id)
        if home is None or dest is None:
            return permit
        cid = corridor_zone_id(permit_id)
        key = (home.zone_id, home.version, dest.zone_id, dest.version)
        cached = self._corridors.get(cid)
        if cached is None or cached[0] != key:
            try:
                corridor = build_corridor(cid, home, dest)
            except Exception:  # a geometry the corridor cannot be built from: no corridor
                log.exception("permit %s: corridor not built; transit will raise exits", permit_id)
                return permit
            cached = self._corridors[cid] = (key, corridor)
            self.zones[cid] = corridor.zone
        self._corridors_used.add(cid)
        return with_corridor(permit, cached[1], approved_end)

    def _load_zones(self, conn: psycopg.Connection, zone_ids: set[int]) -> None:
        if not zone_ids:
            return
        rows = conn.execute(
            "SELECT id, version, kind, ST_AsBinary(geom) FROM zones WHERE id = ANY(%s)",
            (list(zone_ids),),
        ).fetchall()
        for zid, version, kind, wkb in rows:
            cached = self.zones.get(zid)
            if cached is None or cached.version != version:
                self.zones[zid] = PreparedZone(zid, version, ZoneKind(kind), shapely.from_wkb(wkb))

    def phone_off_s(self) -> float:
        """Silence after which a phone counts as off (from the profile)."""
        profile = self.profile or DEFAULT_PROFILE
        return profile.checkin.phone_off_hours * 3600.0

    def subjects(self, infos: dict[str, DeviceInfo]) -> dict[str, Subject]:
        """Engine-facing view of the devices."""
        return {d: i.subject for d, i in infos.items()}

