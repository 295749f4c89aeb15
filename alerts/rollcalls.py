"""Roll-calls (随机点名): plan the day's random ones, send what is due, close what was answered
or missed. Each step is one SQL statement over all supervisees, idempotent, run by the leader.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
import redis

from alerts import service
from geofence.profile import RuleProfile

PENDING = "rollcall:pending"  # Redis set of devices with a roll-call awaiting a fresh fix
LOCAL = ZoneInfo("Asia/Shanghai")

_PLAN = """
INSERT INTO roll_calls (supervisee_id, office_id, origin, plan_day, slot, scheduled_at, profile)
SELECT s.id, s.office_id, 'random', %(day)s, g.slot,
       %(wake_start)s + random() * (%(wake_end)s - %(wake_start)s), %(profile)s
  FROM supervisees s
  CROSS JOIN LATERAL (
      SELECT CASE s.level WHEN 'strict' THEN %(n_strict)s WHEN 'lenient' THEN %(n_lenient)s
                          ELSE %(n_normal)s END
           + COALESCE((SELECT max(k.extra_rollcalls) FROM key_periods k
                        WHERE %(day)s BETWEEN k.starts_on AND k.ends_on
                          AND (k.levels = '{}' OR s.level = ANY(k.levels))
                          AND (k.flags = '{}' OR s.key_flags && k.flags)), 0) AS n) c
  CROSS JOIN LATERAL generate_series(1, c.n) AS g(slot)
 WHERE s.active AND EXISTS (SELECT 1 FROM devices d WHERE d.supervisee_id = s.id AND d.active)
ON CONFLICT (supervisee_id, plan_day, slot) DO NOTHING
"""


def _local(day: datetime, hhmm: str) -> datetime:
    h, m = (int(x) for x in hhmm.split(":"))
    return datetime(day.year, day.month, day.day, h, m, tzinfo=LOCAL)


def plan_day(conn: psycopg.Connection, profile: RuleProfile, now: float | None = None) -> int:
    """Plan today's random roll-calls (local day) for everyone who has none yet; returns count."""
    now = time.time() if now is None else now
    today = datetime.fromtimestamp(now, LOCAL)
    c = profile.checkin
    wake_start, wake_end = _local(today, c.waking_start), _local(today, c.waking_end)
    cur = conn.execute(_PLAN, {
        "day": today.date(), "wake_start": wake_start, "wake_end": wake_end,
        "n_strict": c.rollcalls_strict, "n_normal": c.rollcalls_normal,
        "n_lenient": c.rollcalls_lenient, "profile": profile.label})
    return cur.rowcount


def request_now(conn: psycopg.Connection, supervisee_id: int, origin: str, reason: str = "",
                staff_id: int | None = None, at: datetime | None = None) -> int:
    """Queue an immediate roll-call (officer on demand, engine, curfew check)."""
    row = conn.execute(
        """INSERT INTO roll_calls (supervisee_id, office_id, origin, scheduled_at, requested_by,
                                   reason)
           SELECT id, office_id, %s, %s, %s, %s FROM supervisees WHERE id = %s RETURNING id""",
        (origin, at or datetime.now(UTC), staff_id, reason, supervisee_id)).fetchone()
    assert row is not None, f"supervisee {supervisee_id} not found"
    return int(row[0])


def send_due(conn: psycopg.Connection, r: redis.Redis, prefix: str, profile: RuleProfile,
             now: float | None = None) -> int:
    """Send every roll-call that is due: a command per active device, through the outbox."""
    now_dt = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    window = timedelta(seconds=profile.checkin.rollcall_window_s)
    with conn.transaction():
        rows = conn.execute(
            """UPDATE roll_calls SET status = 'sent', sent_at = %(now)s,
                      deadline = %(now)s + %(window)s
                WHERE id IN (SELECT id FROM roll_calls WHERE status = 'scheduled'
                               AND scheduled_at <= %(now)s
                             ORDER BY scheduled_at LIMIT 5000 FOR UPDATE SKIP LOCKED)
            RETURNING id, supervisee_id, deadline""", {"now": now_dt, "window": window}).fetchall()
        devices_of: dict[int, list[str]] = {}
        if rows:
            for sid, dev in conn.execute(
                    "SELECT supervisee_id, id FROM devices WHERE active AND supervisee_id = ANY(%s)",
                    ([r[1] for r in rows],)):
                devices_of.setdefault(sid, []).append(dev)
        service.commands(conn, [
            (devices_of[sid], {"type": "rollcall", "rollcall_id": rid, "deadline": deadline.isoformat()})
            for rid, sid, deadline in rows if devices_of.get(sid)], owntracks=True)
    pending = [d for devs in devices_of.values() for d in devs]
    if pending:
        r.sadd(prefix + PENDING, *pending)
    return len(rows)


def answer(conn: psycopg.Connection, r: redis.Redis, prefix: str,
           fixes: Iterable[tuple[str, float]]) -> int:
    """Mark roll-calls answered by fresh usable fixes: (device, fix time) of this batch."""
    latest: dict[str, float] = {}
    for dev, t in fixes:
        latest[dev] = max(latest.get(dev, 0.0), t)
    if not latest:
        return 0
    devs = list(latest)
    flags = r.smismember(prefix + PENDING, devs)
    pending = [d for d, f in zip(devs, flags, strict=True) if f]
    if not pending:
        return 0
    rows = conn.execute(
        """UPDATE roll_calls rc SET status = 'answered', answered_at = now(),
                  answer_fix_time = f.t, answer_device = f.dev
             FROM devices d, unnest(%s::text[], %s::timestamptz[]) AS f(dev, t)
            WHERE d.id = f.dev AND rc.supervisee_id = d.supervisee_id AND rc.status = 'sent'
              AND f.t >= rc.sent_at AND f.t <= rc.deadline
        RETURNING rc.id, f.dev""",
        (pending, [datetime.fromtimestamp(latest[d], UTC) for d in pending])).fetchall()
    still = {row[0] for row in conn.execute(
        """SELECT DISTINCT d.id FROM devices d JOIN roll_calls rc ON rc.supervisee_id = d.supervisee_id
            WHERE d.id = ANY(%s) AND rc.status = 'sent'""", (pending,))}
    done = [d for d in pending if d not in still]
    if done:
        r.srem(prefix + PENDING, *done)
    return len(rows)


_MISS = """
UPDATE roll_calls SET status = 'missed'
 WHERE id IN (SELECT id FROM roll_calls WHERE status = 'sent' AND deadline < %(now)s
              FOR UPDATE SKIP LOCKED)
RETURNING id, supervisee_id, office_id, sent_at, deadline, origin
"""


def close_missed(conn: psycopg.Connection, now: float | None = None) -> int:
    """Roll-calls past their deadline without a fresh fix: missed, and an alert (one per person,
    for the latest missed roll-call)."""
    now_dt = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    with conn.transaction():
        latest: dict[int, tuple] = {}
        for row in conn.execute(_MISS, {"now": now_dt}).fetchall():
            if row[1] not in latest or row[4] > latest[row[1]][4]:
                latest[row[1]] = row
        return service.open_alerts(conn, "missed_roll_call", "medium", [
            {"supervisee_id": sid, "office_id": office, "first_fix_time": sent_at,
             "last_fix_time": deadline, "detected_at": now_dt,
             "reason": {"rule": "missed_roll_call.no_fresh_fix_in_window", "roll_call_id": rid,
                        "origin": origin, "sent_at": sent_at.isoformat(),
                        "deadline": deadline.isoformat()}}
            for rid, sid, office, sent_at, deadline, origin in latest.values()], "repeat")
