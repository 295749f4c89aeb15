"""Time-driven checks: curfew windows are judged when they open, not only when a fix arrives."""

from __future__ import annotations

import logging
import time

import psycopg
import redis

from alerts.service import AlertTarget, record_events
from geofence.engine import tick
from ingest.registry import Registry
from ingest.state import StateStore
from store.settings import Settings

log = logging.getLogger(__name__)


class CurfewChecker:
    """Runs the engine's `tick` for every device of a person under a curfew."""

    def __init__(self, settings: Settings, conn: psycopg.Connection, r: redis.Redis) -> None:
        if not conn.autocommit:
            raise ValueError("the checker needs an autocommit connection")
        self.conn = conn
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
        if not devices:
            return 0
        infos = self.registry.lookup(self.conn, devices)
        result = tick(self.registry.subjects(infos), self.registry.zones,
                      self.store.load(infos), now)
        if result.events:
            targets = {d: AlertTarget(i.supervisee_id, i.office_id) for d, i in infos.items()}
            with self.conn.transaction():
                record_events(self.conn, result.events, targets)
        # Marks the windows as reported; a device that sent a newer fix meanwhile keeps its state
        # and is judged again (flag unset) on the next round, never twice for one window.
        self.store.save(result.states, same_time=True)
        if result.events:
            log.info("curfew check raised %d event(s)", len(result.events))
        return len(result.events)
