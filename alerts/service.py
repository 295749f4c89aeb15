"""The alert service: the one place that writes alerts, their workflow events, outbox rows and
the outbox NOTIFY (tests/test_architecture.py keeps it so).

Everything runs inside the caller's transaction, so an alert, its history and its announcement
commit together (or not at all); the notification trigger of migration 0010 fans `alert.opened`
and `alert.escalated` outbox rows out to the recipients in that same commit. Callers hand in a
psycopg connection (ingest, scheduler jobs) or an SQLAlchemy session (API routes).

- Raising: `record_events` (the engine's events), `open_alerts` (scheduled checks that raise
  from rows they selected), `raise_for_devices` (silences), `clear_device_alerts`.
- Workflow: `acknowledge`, `resolve`, `escalate` (by hand), `suspend` (notifications paused for
  a supervisee), `escalate_overdue` (the scheduler's job), `close_overdue_return` (a travel
  permit's return check-in).
- Acknowledgement deadlines come from the active rule profile (`RuleProfile.ack`).
- Outbox: `emit`, `emit_all`, `command` (a command for phones, `device.command`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
import redis
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from geofence.model import Event, EventKind
from geofence.profile import DEFAULT_PROFILE, AckRules, RuleProfile
from store.enums import AlertKind, AlertStatus, Severity
from store.models import Alert, AlertEvent

OUTBOX_CHANNEL = "ccs_outbox"

Db = psycopg.Connection[Any] | Session

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

# ---------------------------------------------------------------------------------------------
# Database access for both kinds of caller
# ---------------------------------------------------------------------------------------------

_PARAM = re.compile(r"%\((\w+)\)s")


def _run(db: Db, sql: str, params: Mapping[str, Any] | None = None,
         fetch: bool = True) -> list[Any]:
    """Execute `sql` (psycopg's %(name)s style) on a connection or a session."""
    if isinstance(db, Session):
        res = db.execute(text(_PARAM.sub(r":\1", sql)), dict(params or {}))
        return list(res.fetchall()) if fetch else []
    cur = db.execute(sql, params)  # type: ignore[arg-type]
    return cur.fetchall() if fetch else []


def active_profile(db: Db) -> RuleProfile:
    """The stored active rule profile, or the national default."""
    rows = _run(db, "SELECT body FROM rule_profiles WHERE active")
    return DEFAULT_PROFILE if not rows else RuleProfile.from_dict(rows[0][0])


def ack_rules(db: Db) -> AckRules:
    """Acknowledgement times by severity, from the active rule profile."""
    return active_profile(db).ack


# ---------------------------------------------------------------------------------------------
# The outbox: every row and its NOTIFY
# ---------------------------------------------------------------------------------------------

_EMIT = "INSERT INTO outbox (topic, payload) VALUES (%(topic)s, %(payload)s) RETURNING id"


def notify(db: Db) -> None:
    """Wake the outbox relay (PostgreSQL folds repeats within one transaction)."""
    _run(db, f"NOTIFY {OUTBOX_CHANNEL}", fetch=False)


def emit_all(db: Db, items: Iterable[tuple[str, Mapping[str, Any]]]) -> list[int]:
    """Queue outbox rows (topic, payload) in the caller's transaction, and one NOTIFY."""
    ids = [int(_run(db, _EMIT, {"topic": topic, "payload": orjson.dumps(payload).decode()})[0][0])
           for topic, payload in items]
    if ids:
        notify(db)
    return ids


def emit(db: Db, topic: str, payload: Mapping[str, Any]) -> int:
    """Queue one outbox row and its NOTIFY; returns the row's id."""
    return emit_all(db, [(topic, payload)])[0]


def commands(db: Db, items: Iterable[tuple[Sequence[str], Mapping[str, Any]]],
             owntracks: bool = False) -> list[int]:
    """Queue commands for phones, (device ids, command) each (`devices/{id}/cmd`, and
    OwnTracks' own form when `owntracks`); one NOTIFY."""
    out: list[tuple[str, Mapping[str, Any]]] = []
    for device_ids, cmd in items:
        payload: dict[str, Any] = {"device_ids": list(device_ids)}
        if owntracks:
            payload["owntracks"] = True
        payload["command"] = dict(cmd)
        out.append(("device.command", payload))
    return emit_all(db, out)


def command(db: Db, device_ids: Sequence[str], cmd: Mapping[str, Any],
            owntracks: bool = False) -> int:
    """Queue one command for phones; returns its outbox row's id."""
    return commands(db, [(device_ids, cmd)], owntracks)[0]


# ---------------------------------------------------------------------------------------------
# Raising alerts: one upsert, one open alert per supervisee and kind
# ---------------------------------------------------------------------------------------------

# How a repeat refreshes the open alert (the upsert's ON CONFLICT ... DO UPDATE SET ... WHERE).
REFRESH = {
    # An engine event: only a later fix moves it (a replay or late fix changes nothing).
    "fix": """count = a.count + 1, last_fix_time = excluded.last_fix_time, lon = excluded.lon,
              lat = excluded.lat, reason = excluded.reason, device_id = excluded.device_id,
              late = excluded.late, cleared_at = NULL, updated_at = now()
        WHERE a.last_fix_time IS NULL OR a.last_fix_time < excluded.last_fix_time""",
    # A silence: counts again only after it had ended (cleared) in between.
    "cleared": """count = a.count + 1, cleared_at = NULL, reason = excluded.reason,
                  device_id = excluded.device_id, updated_at = now()
        WHERE a.cleared_at IS NOT NULL""",
    # A repeated scheduled finding that moves the alert's last time (a missed roll-call).
    "repeat": """count = a.count + 1, reason = excluded.reason,
                 last_fix_time = excluded.last_fix_time, updated_at = now()""",
    # A repeated scheduled finding that keeps the alert's times (an overdue return).
    "repeat_keep_times": "count = a.count + 1, reason = excluded.reason, updated_at = now()",
}

_UPSERT = """
INSERT INTO alerts AS a (kind, severity, supervisee_id, office_id, device_id, first_fix_time,
                         last_fix_time, lon, lat, late, reason, detected_at, ack_deadline)
VALUES (%(kind)s, %(severity)s, %(supervisee_id)s, %(office_id)s, %(device_id)s,
        %(first_fix_time)s, %(last_fix_time)s, %(lon)s, %(lat)s, %(late)s,
        CAST(%(reason)s AS jsonb), %(detected_at)s,
        now() + %(ack_min)s * interval '1 minute')
ON CONFLICT (supervisee_id, kind) WHERE status <> 'resolved' DO UPDATE
   SET {refresh}
RETURNING id, kind, severity, status, supervisee_id, office_id, device_id, count,
          (xmax = 0) AS inserted, opened_at
"""
_UPSERTS = {mode: _UPSERT.format(refresh=sql) for mode, sql in REFRESH.items()}


def _upsert(db: Db, kind: str, severity: str, opening: Mapping[str, Any], refresh: str,
            ack: AckRules) -> Any | None:
    """Open the alert or refresh the open one; None when the refresh's condition says no."""
    params = {"kind": kind, "severity": severity, "device_id": None, "lon": None, "lat": None,
              "late": False, "detected_at": None, **opening,
              "reason": orjson.dumps(opening.get("reason") or {}).decode(),
              "ack_min": ack.minutes(severity)}
    params.setdefault("last_fix_time", params.get("first_fix_time"))
    rows = _run(db, _UPSERTS[refresh], params)
    return rows[0] if rows else None


def open_alerts(db: Db, kind: str, severity: str, openings: Iterable[Mapping[str, Any]],
                refresh: str) -> int:
    """Open (or refresh) one alert per opening and announce each (alert.opened / alert.updated).

    An opening has supervisee_id, office_id, first_fix_time, reason and optionally device_id,
    last_fix_time, detected_at. Returns how many alerts were opened or refreshed.
    """
    ack = ack_rules(db)
    out: list[tuple[str, dict[str, Any]]] = []
    for o in openings:
        row = _upsert(db, kind, severity, o, refresh, ack)
        if row is None:
            continue
        if refresh == "cleared" and not row[8]:
            # A silence that had ended came back: a new spell of the same alert, from when.
            _run(db, """INSERT INTO alert_events (alert_id, action, detail)
                        VALUES (%(id)s, 'recurred', jsonb_build_object('since', %(since)s::text))""",
                 {"id": row[0], "since": o["first_fix_time"].isoformat()}, fetch=False)
        payload: dict[str, Any] = {
            "alert_id": row[0], "kind": kind, "severity": severity, "status": "open",
            "supervisee_id": row[4], "office_id": row[5]}
        if o.get("device_id") is not None:
            payload["device_id"] = o["device_id"]
        payload.update({"count": row[7], "new": bool(row[8]), "reason": o.get("reason") or {}})
        out.append(("alert.opened" if row[8] else "alert.updated", payload))
    emit_all(db, out)
    return len(out)


def raise_for_devices(db: Db, kind: str, severity: str,
                      items: Sequence[tuple[str, datetime, Mapping[str, Any]]],
                      now: datetime) -> int:
    """Raise a device's alert (device, since, reason) for the person it belongs to, if both are
    active; an open one counts again only if it had been cleared (a silence that came back)."""
    if not items:
        return 0
    people = {row[0]: (row[1], row[2]) for row in _run(
        db, """SELECT d.id, s.id, s.office_id FROM devices d JOIN supervisees s ON s.id = d.supervisee_id
                WHERE d.id = ANY(%(devices)s) AND d.active AND s.active""",
        {"devices": [d for d, _, _ in items]})}
    openings = [{"supervisee_id": people[d][0], "office_id": people[d][1], "device_id": d,
                 "first_fix_time": since, "last_fix_time": since, "reason": reason,
                 "detected_at": now}
                for d, since, reason in items if d in people]
    return open_alerts(db, kind, severity, openings, "cleared")


def clear_device_alerts(db: Db, ended: Iterable[tuple[str, str]]) -> int:
    """Mark open alerts whose condition ended as cleared: (device, alert kind) pairs."""
    pairs = list(ended)
    if not pairs:
        return 0
    # Each end is kept in the alert's history: a silence that comes back reopens the same
    # alert, and the compliance report measures every spell from these steps.
    rows = _run(db, """WITH up AS (
                           UPDATE alerts a SET cleared_at = now(), updated_at = now()
                             FROM unnest(CAST(%(devs)s AS text[]), CAST(%(kinds)s AS text[]))
                                  AS e(dev, kind)
                            WHERE a.device_id = e.dev AND a.kind = e.kind
                              AND a.status <> 'resolved' AND a.cleared_at IS NULL
                        RETURNING a.id, a.cleared_at)
                       INSERT INTO alert_events (alert_id, at, action)
                       SELECT id, cleared_at, 'cleared' FROM up RETURNING alert_id""",
                {"devs": [d for d, _ in pairs], "kinds": [k for _, k in pairs]})
    return len(rows)


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


_CLEAR = """
UPDATE alerts SET cleared_at = %(fix_time)s, updated_at = now()
 WHERE supervisee_id = %(supervisee_id)s AND kind = %(kind)s AND status <> 'resolved'
   AND cleared_at IS NULL AND (last_fix_time IS NULL OR last_fix_time < %(fix_time)s)
RETURNING id, kind, severity, status, supervisee_id, office_id, device_id, count
"""


def _zone_names(conn: psycopg.Connection, ids: Iterable[int | None]) -> dict[int, str]:
    """Names of the zones alerts are about to name (one query, none when no alert names one;
    the travel corridors' made-up negative ids have none)."""
    wanted = sorted({i for i in ids if isinstance(i, int) and 0 < i < 2**31})
    if not wanted:
        return {}
    return dict(conn.execute("SELECT id, name FROM zones WHERE id = ANY(%s)",
                             (wanted,)).fetchall())


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
    # Imported here: both queue their phone commands through this module.
    from alerts.confirm import request_location
    from alerts.rollcalls import request_now

    outbox: list[tuple[str, dict[str, Any]]] = []
    asks: list[tuple[Event, AlertTarget]] = []
    ack: AckRules | None = None
    names = _zone_names(conn, {ev.reason.zone_id for ev in events if ev.kind in EVENT_ALERTS})
    for ev in events:
        target = targets.get(ev.device_id)
        if target is None:
            continue
        if ev.kind == EventKind.LOCATION_REQUEST:
            asks.append((ev, target))
            continue
        reason = {**ev.reason.to_dict(), "fix_time": _iso(ev.fix_time),
                  "since": _iso(ev.since), "detected_at": _iso(ev.detected_at)}
        if ev.reason.zone_id in names:  # the zone's name when it decided (names can change)
            reason["zone_name"] = names[ev.reason.zone_id]
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
            for cleared in _run(conn, _CLEAR, {
                    "fix_time": _ts(ev.fix_time), "kind": EVENT_CLEARS[ev.kind].value,
                    "supervisee_id": target.supervisee_id}):
                outbox.append(("alert.cleared", {**base, "alert_id": cleared[0],
                                                 "kind": cleared[1], "severity": cleared[2],
                                                 "status": cleared[3]}))
            continue
        spec = EVENT_ALERTS.get(ev.kind)
        if spec is None:
            continue
        kind, severity = spec
        if ack is None:
            ack = ack_rules(conn)
        row = _upsert(conn, kind.value, severity.value, {
            "supervisee_id": target.supervisee_id, "office_id": target.office_id,
            "device_id": ev.device_id,
            "first_fix_time": _ts(ev.since if ev.since is not None else ev.fix_time),
            "last_fix_time": _ts(ev.fix_time), "lon": ev.lon, "lat": ev.lat, "late": ev.late,
            "reason": reason, "detected_at": _ts(ev.detected_at)}, "fix", ack)
        if row is None:  # a replay of a fix the alert already reflects
            continue
        outbox.append(("alert.opened" if row[8] else "alert.updated", {
            **base, "alert_id": row[0], "kind": row[1], "severity": row[2], "status": row[3],
            "count": row[7], "new": bool(row[8]), "opened_at": row[9].isoformat()}))
    # In device order: each takes its device's advisory lock until commit.
    for ev, target in sorted(asks, key=lambda a: (a[0].device_id, a[0].fix_time)):
        request_location(conn, ev, target.supervisee_id, target.office_id, r, prefix)
    emit_all(conn, outbox)
    return [p for _, p in outbox]


def queue_raised(db: Db, kind: str, severity: str, rows: Iterable[Sequence[Any]]) -> int:
    """Announce alerts stored by the caller: rows of (id, supervisee, office, count, new, reason)."""
    out = [("alert.opened" if inserted else "alert.updated",
            {"alert_id": alert_id, "kind": kind, "severity": severity, "status": "open",
             "supervisee_id": sup, "office_id": office, "count": count, "new": bool(inserted),
             "reason": reason})
           for alert_id, sup, office, count, inserted, reason in rows]
    emit_all(db, out)
    return len(out)


# ---------------------------------------------------------------------------------------------
# The workflow: acknowledge, resolve, escalate
# ---------------------------------------------------------------------------------------------


def announce(session: Session, alert: Alert, topic: str, staff_id: int | None,
             **extra: Any) -> int:
    """Put an alert's change on the live feed (through the outbox, committed with the change),
    so every open console of the jurisdiction sees it at once."""
    return emit(session, topic, {"alert_id": alert.id, "office_id": alert.office_id,
                                 "supervisee_id": alert.supervisee_id, "kind": alert.kind,
                                 "severity": alert.severity, "status": alert.status,
                                 "by": staff_id, **extra})


def _now(session: Session) -> Any:
    return session.execute(text("SELECT now()")).scalar_one()


def acknowledge(session: Session, alert: Alert, staff_id: int) -> None:
    """Take responsibility for an open alert (the caller checked that it is open)."""
    alert.status = AlertStatus.ACKNOWLEDGED.value
    alert.acknowledged_by = staff_id
    alert.acknowledged_at = _now(session)
    session.add(AlertEvent(alert_id=alert.id, staff_id=staff_id, action="acknowledged"))
    announce(session, alert, "alert.acknowledged", staff_id)


def resolve(session: Session, alert: Alert, staff_id: int, disposition: str, note: str) -> None:
    """Close an alert with its disposition and a note (the caller checked it is not resolved)."""
    alert.status = AlertStatus.RESOLVED.value
    alert.resolved_by = staff_id
    alert.resolved_at = _now(session)
    alert.resolution_note = note
    alert.disposition = disposition
    session.add(AlertEvent(alert_id=alert.id, staff_id=staff_id, action="resolved",
                           detail={"disposition": disposition, "note": note}))
    announce(session, alert, "alert.resolved", staff_id, disposition=disposition)


def escalate(session: Session, alert: Alert, staff_id: int) -> None:
    """Hand an alert (locked by the caller, below the top) up one level by hand; the new level
    gets its own acknowledgement time."""
    alert.escalation_level += 1
    alert.ack_deadline = _now(session) + timedelta(minutes=ack_rules(session).minutes(alert.severity))
    session.add(AlertEvent(alert_id=alert.id, staff_id=staff_id, action="escalated",
                           detail={"to_level": alert.escalation_level, "by_hand": True}))
    announce(session, alert, "alert.escalated", staff_id, escalation_level=alert.escalation_level)


def suspend(session: Session, supervisee_id: int, kind: str | None, starts_at: datetime,
            ends_at: datetime, staff_id: int, suspension_id: int, reason: str) -> list[int]:
    """A suspension of notifications that is in force now also covers the supervisee's alerts
    still being handled (of its kind, or every kind): they are marked suppressed, the step is in
    their history, and it is announced so every open console shows it at once. Returns their ids."""
    now = _now(session)
    if not starts_at <= now < ends_at:
        return []  # a suspension that starts later marks its alerts as they come (the trigger)
    q = select(Alert).where(Alert.supervisee_id == supervisee_id,
                            Alert.status != AlertStatus.RESOLVED.value)
    if kind is not None:
        q = q.where(Alert.kind == kind)
    ids = []
    for alert in session.scalars(q.order_by(Alert.id).with_for_update()):
        alert.suppressed = True
        session.add(AlertEvent(alert_id=alert.id, staff_id=staff_id, action="suspended",
                               detail={"suspension_id": suspension_id, "until": ends_at.isoformat(),
                                       "note": reason}))
        announce(session, alert, "alert.suspended", staff_id, suppressed=True,
                 until=ends_at.isoformat())
        ids.append(alert.id)
    return ids


_ESCALATE = """
WITH due AS (
    SELECT id FROM alerts
     WHERE status = 'open' AND escalation_level < 2 AND ack_deadline < %(now)s
     ORDER BY ack_deadline LIMIT 1000 FOR UPDATE SKIP LOCKED
), up AS (
    UPDATE alerts a SET escalation_level = a.escalation_level + 1, updated_at = now(),
           -- the next level gets the same time
           ack_deadline = %(now)s + coalesce((CAST(%(ack)s AS jsonb) ->> a.severity)::float8,
                                             %(ack_default)s) * interval '1 minute'
      FROM due WHERE a.id = due.id
 RETURNING a.id, a.office_id, a.supervisee_id, a.kind, a.severity, a.escalation_level
), ev AS (
    INSERT INTO alert_events (alert_id, action, detail)
    SELECT id, 'escalated', jsonb_build_object('to_level', escalation_level,
                                               'reason', 'not acknowledged in time')
      FROM up
)
INSERT INTO outbox (topic, payload)
SELECT 'alert.escalated', jsonb_build_object('alert_id', id, 'office_id', office_id,
       'supervisee_id', supervisee_id, 'kind', kind, 'severity', severity,
       'escalation_level', escalation_level)
  FROM up
RETURNING 1
"""


def escalation_params(ack: AckRules, now: datetime) -> dict[str, Any]:
    """Parameters of the escalation statement: the time and the profile's acknowledgement times."""
    return {"now": now, "ack": orjson.dumps(ack.by_severity()).decode(), "ack_default": ack.low_min}


def escalate_overdue(conn: psycopg.Connection, now: float | None = None) -> int:
    """Escalate every open alert past its acknowledgement deadline by one level (the
    scheduler's job)."""
    now_dt = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    with conn.transaction():
        n = len(_run(conn, _ESCALATE, escalation_params(ack_rules(conn), now_dt)))
        if n:
            notify(conn)
    return n


def close_overdue_return(session: Session, supervisee_id: int, permit_id: int) -> None:
    """The return check-in (销假) of a permit closes the person's overdue-return alert."""
    _run(session, """UPDATE alerts SET status = 'resolved', resolved_at = now(), cleared_at = now(),
                            resolution_note = 'closed by the return check-in (销假) of permit '
                                              || %(pid)s,
                            updated_at = now()
                      WHERE supervisee_id = %(sid)s AND kind = 'overdue_return'
                        AND status <> 'resolved'""",
         {"pid": str(permit_id), "sid": supervisee_id}, fetch=False)
