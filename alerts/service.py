"""Turning engine events into stored alerts and outbox records (inside the caller's transaction)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
import redis

from alerts.confirm import request_location
from alerts.outbox import OUTBOX_CHANNEL
from alerts.rollcalls import request_now
from geofence.model import Event, EventKind
from store.enums import AlertKind, Severity

# Which engine events open (or update) an alert, and with which default severity.
EVENT_ALERTS: dict[EventKind, tuple[AlertKind, Severity]] = {
    EventKind.AREA_EXIT: (AlertKind.AREA_EXIT, Severity.HIGH),
    EventKind.EXCLUSION_ENTRY: (AlertKind.EXCLUSION_ENTRY, Severity.CRITICAL),
    EventKind.EXCLUSION_CROSSING: (AlertKind.EXCLUSION_ENTRY, Severity.CRITICAL),
    EventKind.EXCLUSION_APPROACH: (AlertKind.EXCLUSION_APPROACH, Severity.MEDIUM),
    EventKind.CURFEW_BREACH: (AlertKind.CURFEW_BREACH, Severity.HIGH),
    EventKind.SPOOFING: (AlertKind.SUSPECTED_SPOOFING, Severity.MEDIUM),
}
# Which events end the condition behind an open alert (the alert stays for an officer to close).
EVENT_CLEARS: dict[EventKind, AlertKind] = {
    EventKind.AREA_RETURN: AlertKind.AREA_EXIT,
    EventKind.EXCLUSION_LEFT: AlertKind.EXCLUSION_ENTRY,
}

_UPSERT = """
INSERT INTO alerts AS a (kind, severity, supervisee_id, office_id, device_id, first_fix_time,
                         last_fix_time, lon, lat, late, reason, detected_at)
VALUES (%(kind)s, %(severity)s, %(supervisee_id)s, %(office_id)s, %(device_id)s, %(since)s,
        %(fix_time)s, %(lon)s, %(lat)s, %(late)s, %(reason)s, %(detected_at)s)
ON CONFLICT (supervisee_id, kind) WHERE status <> 'resolved' DO UPDATE
   SET count = a.count + 1, last_fix_time = excluded.last_fix_time, lon = excluded.lon,
       lat = excluded.lat, reason = excluded.reason, device_id = excluded.device_id,
       late = excluded.late, cleared_at = NULL, updated_at = now()
 WHERE a.last_fix_time IS NULL OR a.last_fix_time < excluded.last_fix_time
RETURNING id, kind, severity, status, supervisee_id, office_id, device_id, count,
          (xmax = 0) AS inserted, opened_at
"""

_CLEAR = """
UPDATE alerts SET cleared_at = %(fix_time)s, updated_at = now()
 WHERE supervisee_id = %(supervisee_id)s AND kind = %(kind)s AND status <> 'resolved'
   AND cleared_at IS NULL AND (last_fix_time IS NULL OR last_fix_time < %(fix_time)s)
RETURNING id, kind, severity, status, supervisee_id, office_id, device_id, count
"""


class AlertTarget:
    """The supervisee and office an event belongs to (from the device registry)."""

    __slots__ = ("supervisee_id", "office_id")

    def __init__(self, supervisee_id: int, office_id: int) -> None:
        self.supervisee_id = supervisee_id
        self.office_id = office_id


def _ts(t: float | None) -> datetime | None:
    return None if t is None else datetime.fromtimestamp(t, tz=UTC)


def _iso(t: float | None) -> str | None:
    d = _ts(t)
    return None if d is None else d.isoformat()


def record_events(
    conn: psycopg.Connection,
    events: Sequence[Event],
    targets: Mapping[str, AlertTarget],
    r: redis.Redis | None = None,
    prefix: str = "",
) -> list[dict[str, Any]]:
    """Open or update one alert per supervisee and kind; queue the notifications in the outbox.

    Location requests (active confirmation) raise no alert: `alerts/confirm.py` records them and
    queues the phone's command; `r` lets it mark the device pending at once.
    """
    outbox: list[tuple[str, dict[str, Any]]] = []
    asks: list[tuple[Event, AlertTarget]] = []
    with conn.cursor() as cur:
        for ev in events:
            target = targets.get(ev.device_id)
            if target is None:
                continue
            if ev.kind == EventKind.LOCATION_REQUEST:
                asks.append((ev, target))
                continue
            reason = {**ev.reason.to_dict(), "fix_time": _iso(ev.fix_time),
                      "since": _iso(ev.since), "detected_at": _iso(ev.detected_at)}
            base = {"supervisee_id": target.supervisee_id, "office_id": target.office_id,
                    "device_id": ev.device_id, "fix_time": _iso(ev.fix_time), "lon": ev.lon,
                    "lat": ev.lat, "late": ev.late, "reason": reason}
            if ev.kind == EventKind.ROLL_CALL_REQUEST:
                # The engine cannot decide (undecidable streak, curfew unknown): ask the phone.
                origin = "curfew" if str(reason.get("rule", "")).startswith("roll_call.curfew") \
                    else "engine"
                rid = request_now(conn, target.supervisee_id, origin, str(reason.get("rule")))
                outbox.append(("rollcall.requested", {**base, "roll_call_id": rid}))
                continue
            if ev.kind in EVENT_CLEARS:
                cur.execute(_CLEAR, {"fix_time": _ts(ev.fix_time), "kind": EVENT_CLEARS[ev.kind].value,
                                     "supervisee_id": target.supervisee_id})
                for cleared in cur.fetchall():
                    outbox.append(("alert.cleared", {**base, "alert_id": cleared[0],
                                                     "kind": cleared[1], "severity": cleared[2],
                                                     "status": cleared[3]}))
                continue
            spec = EVENT_ALERTS.get(ev.kind)
            if spec is None:
                continue
            kind, severity = spec
            cur.execute(_UPSERT, {
                "kind": kind.value, "severity": severity.value,
                "supervisee_id": target.supervisee_id, "office_id": target.office_id,
                "device_id": ev.device_id, "since": _ts(ev.since if ev.since is not None else ev.fix_time),
                "fix_time": _ts(ev.fix_time), "lon": ev.lon, "lat": ev.lat, "late": ev.late,
                "reason": orjson.dumps(reason).decode(), "detected_at": _ts(ev.detected_at),
            })
            row = cur.fetchone()
            if row is None:  # a replay of a fix the alert already reflects
                continue
            outbox.append(("alert.opened" if row[8] else "alert.updated", {
                **base, "alert_id": row[0], "kind": row[1], "severity": row[2], "status": row[3],
                "count": row[7], "new": bool(row[8]), "opened_at": row[9].isoformat()}))
        # In device order: each takes its device's advisory lock until commit.
        for ev, target in sorted(asks, key=lambda a: (a[0].device_id, a[0].fix_time)):
            request_location(conn, ev, target.supervisee_id, target.office_id, r, prefix)
        for topic, payload in outbox:
            cur.execute("INSERT INTO outbox (topic, payload) VALUES (%s, %s)",
                        (topic, orjson.dumps(payload).decode()))
        if outbox:
            cur.execute(f"NOTIFY {OUTBOX_CHANNEL}")
    return [p for _, p in outbox]
