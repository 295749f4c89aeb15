"""Time-driven checks: curfew windows are judged when they open, not only when a fix arrives."""

from __future__ import annotations

import logging
import time

import psycopg
import redis

from alerts import service
from alerts.service import AlertTarget, record_events
from geofence.engine import BatchResult, mark_follow_up, pending_exit, tick
from geofence.model import DeviceState, EventKind
from store.registry import Registry
from store.settings import Settings
from store.state import StateStore

log = logging.getLogger(__name__)


class CurfewChecker:
    """Runs the engine's `tick` for every device of a person under a curfew, and for every
    device in an undecided exit streak (a silent phone is asked again for a fix)."""

    def __init__(self, settings: Settings, conn: psycopg.Connection, r: redis.Redis) -> None:
        if not conn.autocommit:
            raise ValueError("the checker needs an autocommit connection")
        self.conn = conn
        self.redis = r
        self.prefix = settings.redis_prefix
        self.registry = Registry(r, settings.redis_prefix)
        self.store = StateStore(r, settings.redis_prefix)

    def run(self, now: float | None = None) -> int:
        """One round; returns how many events it raised."""
        now = time.time() if now is None else now
        self.registry.refresh_if_changed()
        devices = [row[0] for row in self.conn.execute(
            """SELECT d.id FROM devices d
                 JOIN supervisee_zones z ON z.supervisee_id = d.supervisee_id
                WHERE d.active AND z.active AND z.role = 'curfew'""")]
        pending = self.store.pending_exits()
        devices = sorted(set(devices) | set(pending))
        if not devices:
            return 0
        # A device an ingest pipeline holds right now is judged at the next round.
        owned = self.store.own(devices)
        try:
            return self._run(sorted(owned), [d for d in pending if d in owned], now)
        finally:
            self.store.release(owned)

    def _run(self, devices: list[str], pending: list[str], now: float) -> int:
        infos = self.registry.lookup(self.conn, devices)
        states, versions = self.store.load_versioned(infos)
        # A device whose streak ended (or that left the registry) leaves the follow-up set.
        done = [d for d in pending if d not in states  # (states are loaded for `infos` only)
                or not _still_followed(states[d], infos[d].subject.rules.follow_up_until_s, now)]
        if done:  # unless the pipeline stored a fresher state meanwhile
            self.store.drop_pending_exits({d: states.get(d) for d in done})
        result = tick(self.registry.subjects(infos), self.registry.zones, states, now)
        if result.events:
            targets = {d: AlertTarget(i.supervisee_id, i.office_id) for d, i in infos.items()}
            with self.conn.transaction():
                record_events(self.conn, result.events, targets, self.redis, self.prefix)
        self._save(result, versions, now)
        if result.events:
            log.info("clock check raised %d event(s)", len(result.events))
        return len(result.events)

    def _save(self, result: BatchResult, versions: dict[str, int], now: float) -> None:
        """Store what the round changed, compare-and-set on the version the round read.

        The round owns its devices, so the write only fails when its lease ran out. Curfew
        windows are marked as reported; a device that stored a newer state meanwhile keeps it
        and is judged again (flag unset) on the next round, never twice for one window. A
        follow-up request that went out is recorded on the newer state too, while it holds the
        same exit streak, so that the phone's answer is known as one.
        """
        saved = self.store.save(result.states, versions)
        asked = {e.device_id for e in result.events if e.kind == EventKind.LOCATION_REQUEST}
        lost = [d for (d, _), ok in zip(result.states.items(), saved, strict=True)
                if not ok and d in asked]
        if not lost:
            return
        merged: dict[str, DeviceState] = {}
        now_states, now_versions = self.store.load_versioned(lost)
        for d, st in now_states.items():
            if pending_exit(st) and st.area.pending_since == result.states[d].area.pending_since:
                st = st.copy()
                mark_follow_up(st, now)
                merged[d] = st
        self.store.save(merged, now_versions)


def _still_followed(st: DeviceState, until_s: float, now: float) -> bool:
    """An undecided exit streak young enough for the clock to ask the phone again."""
    since = st.area.pending_since
    return pending_exit(st) and since is not None and now - since <= until_s


_OVERDUE = """
WITH due AS (
    SELECT p.id, p.supervisee_id, p.office_id, p.approved_end_at AS end_at
      FROM travel_permits p
     WHERE p.status IN ('approved', 'requested') AND p.approved_end_at IS NOT NULL
       AND p.returned_at IS NULL AND p.overdue_alerted_at IS NULL
       AND p.approved_end_at + make_interval(secs => %(grace_s)s) < %(now)s
     FOR UPDATE SKIP LOCKED
)
UPDATE travel_permits t SET overdue_alerted_at = %(now)s, updated_at = now()
  FROM due WHERE t.id = due.id RETURNING due.*
"""


def check_overdue_returns(conn: psycopg.Connection, now: float | None = None) -> int:
    """Open an overdue-return alert for every approved permit past its end plus grace."""
    from datetime import UTC, datetime

    from store.registry import load_profile

    now_dt = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    profile = load_profile(conn)
    grace_h = profile.travel.return_grace_hours
    with conn.transaction():
        first: dict[int, tuple] = {}  # one alert per person, for the earliest end
        for row in conn.execute(_OVERDUE, {"grace_s": grace_h * 3600, "now": now_dt}).fetchall():
            if row[1] not in first or row[3] < first[row[1]][3]:
                first[row[1]] = row
        return service.open_alerts(conn, "overdue_return", "high", [
            {"supervisee_id": sid, "office_id": office, "first_fix_time": end_at,
             "last_fix_time": end_at, "detected_at": now_dt,
             "reason": {"rule": "overdue_return.no_check_in", "permit_id": pid,
                        "permit_end": end_at.isoformat(), "grace_hours": float(grace_h),
                        "profile": profile.label}}
            for pid, sid, office, end_at in first.values()], "repeat_keep_times")
