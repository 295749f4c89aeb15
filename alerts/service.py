"""Turning engine events into stored alerts and outbox records (inside the caller's transaction)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg

from geofence.model import Event, EventKind
from store.enums import AlertKind, Severity

OUTBOX_CHANNEL = "ccs_outbox"

# Which engine events open an alert, and with which default severity.
EVENT_ALERTS: dict[EventKind, tuple[AlertKind, Severity]] = {
    EventKind.AREA_EXIT: (AlertKind.AREA_EXIT, Severity.HIGH),
}

_UPSERT = """
INSERT INTO alerts AS a (kind, severity, supervisee_id, office_id, device_id, first_fix_time,
                         last_fix_time, lon, lat, late, reason)
VALUES (%(kind)s, %(severity)s, %(supervisee_id)s, %(office_id)s, %(device_id)s, %(fix_time)s,
        %(fix_time)s, %(lon)s, %(lat)s, %(late)s, %(reason)s)
ON CONFLICT (supervisee_id, kind) WHERE status <> 'resolved' DO UPDATE
   SET count = a.count + 1, last_fix_time = excluded.last_fix_time, lon = excluded.lon,
       lat = excluded.lat, reason = excluded.reason, device_id = excluded.device_id,
       updated_at = now()
 WHERE a.last_fix_time IS NULL OR a.last_fix_time < excluded.last_fix_time
RETURNING id, kind, severity, status, supervisee_id, office_id, device_id, count,
          (xmax = 0) AS inserted, opened_at
"""


class AlertTarget:
    """The supervisee and office an event belongs to (from the device registry)."""

    __slots__ = ("supervisee_id", "office_id")

    def __init__(self, supervisee_id: int, office_id: int) -> None:
        self.supervisee_id = supervisee_id
        self.office_id = office_id


def _ts(t: float) -> datetime:
    return datetime.fromtimestamp(t, tz=UTC)


def record_events(
    conn: psycopg.Connection,
    events: Sequence[Event],
    targets: Mapping[str, AlertTarget],
) -> list[dict[str, Any]]:
    """Open or update one alert per supervisee and kind; queue the notifications in the outbox."""
    published: list[dict[str, Any]] = []
    with conn.cursor() as cur:
        for ev in events:
            spec = EVENT_ALERTS.get(ev.kind)
            target = targets.get(ev.device_id)
            if spec is None or target is None:
                continue
            kind, severity = spec
            reason = {**ev.reason.to_dict(), "fix_time": _ts(ev.fix_time).isoformat()}
            cur.execute(
                _UPSERT,
                {
                    "kind": kind.value,
                    "severity": severity.value,
                    "supervisee_id": target.supervisee_id,
                    "office_id": target.office_id,
                    "device_id": ev.device_id,
                    "fix_time": _ts(ev.fix_time),
                    "lon": ev.lon,
                    "lat": ev.lat,
                    "late": ev.late,
                    "reason": orjson.dumps(reason).decode(),
                },
            )
            row = cur.fetchone()
            if row is None:  # a replay of a fix the alert already reflects
                continue
            payload = {
                "alert_id": row[0],
                "kind": row[1],
                "severity": row[2],
                "status": row[3],
                "supervisee_id": row[4],
                "office_id": row[5],
                "device_id": row[6],
                "count": row[7],
                "new": bool(row[8]),
                "opened_at": row[9].isoformat(),
                "fix_time": reason["fix_time"],
                "lon": ev.lon,
                "lat": ev.lat,
                "late": ev.late,
                "reason": reason,
            }
            topic = "alert.opened" if row[8] else "alert.updated"
            cur.execute(
                "INSERT INTO outbox (topic, payload) VALUES (%s, %s)",
                (topic, orjson.dumps(payload).decode()),
            )
            published.append(payload)
        if published:
            cur.execute(f"NOTIFY {OUTBOX_CHANNEL}")
    return published
