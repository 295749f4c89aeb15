"""Active confirmation: when the engine's evidence is suggestive, ask the phone for a fix now.

The engine emits a `LOCATION_REQUEST` event; `request_location` records it and, within the
battery limit, queues a `report_location` command in the outbox (the worker publishes it on
`devices/{id}/cmd` and as OwnTracks' `reportLocation`, like a roll-call). The first usable,
non-mock fix taken after the command answers it (`answer`, from the ingest pipeline); one that
never comes expires (`expire`, from the scheduler) without an alert: the engine simply keeps
its passive rule for phones that do not answer (power savers). Not a roll-call.

The limit is counted in the table under a per-device advisory lock, so it survives restarts
and holds with any number of ingest workers.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import orjson
import psycopg
import redis

from alerts import service
from geofence.model import Event
from store.settings import get_settings

PENDING = "confirm:pending"  # Redis set of devices with a location request awaiting a fix
HOUR = timedelta(hours=1)


class Requested(NamedTuple):
    """What became of one request."""

    id: int
    status: str  # sent / throttled
    throttle_reason: str | None


class Answer(NamedTuple):
    """A usable, non-mock fix of this batch that may answer a request."""

    device_id: str
    fix_time: float
    received_at: float
    accuracy: float | None


def _ts(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def request_location(conn: psycopg.Connection, ev: Event, supervisee_id: int, office_id: int,
                     r: redis.Redis | None = None, prefix: str = "",
                     max_per_hour: int | None = None, window_s: float | None = None) -> Requested:
    """Record one engine request and, within the per-device hourly limit, queue its command.

    Runs inside the caller's transaction. Callers handling several devices must call it in
    device order (`record_events` does): each call takes that device's advisory lock.
    """
    s = get_settings()
    limit = s.confirm_max_per_hour if max_per_hour is None else max_per_hour
    window = timedelta(seconds=s.confirm_answer_window_s if window_s is None else window_s)
    at = _ts(ev.detected_at if ev.detected_at is not None else time.time())
    evidence = {**ev.reason.to_dict(), "late": ev.late,
                "since": None if ev.since is None else _ts(ev.since).isoformat()}
    # Serialise requests for one device until commit: a second ingest worker counts ours.
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('location_request:' || %s, 0))",
                 (ev.device_id,))
    row = conn.execute(
        """SELECT count(*) FILTER (WHERE sent_at > %(at)s - %(hour)s),
                  count(*) FILTER (WHERE status = 'sent' AND deadline >= %(at)s)
             FROM location_requests
            WHERE device_id = %(dev)s AND (sent_at > %(at)s - %(hour)s OR status = 'sent')""",
        {"dev": ev.device_id, "at": at, "hour": HOUR}).fetchone()
    sent_last_hour, pending = row if row is not None else (0, 0)
    throttled = "pending" if pending else "hourly_limit" if sent_last_hour >= limit else None
    rid = conn.execute(
        """INSERT INTO location_requests (device_id, supervisee_id, office_id, requested_at,
                                          evidence_fix_time, rule, evidence, status,
                                          throttle_reason, sent_at, deadline)
           VALUES (%(dev)s, %(sup)s, %(office)s, %(at)s, %(fix)s, %(rule)s, %(evidence)s,
                   %(status)s, %(throttled)s, %(sent)s, %(deadline)s)
           RETURNING id""",
        {"dev": ev.device_id, "sup": supervisee_id, "office": office_id, "at": at,
         "fix": _ts(ev.fix_time), "rule": ev.reason.rule,
         "evidence": orjson.dumps(evidence).decode(),
         "status": "throttled" if throttled else "sent", "throttled": throttled,
         "sent": None if throttled else at, "deadline": None if throttled else at + window},
    ).fetchone()
    assert rid is not None
    request_id = int(rid[0])
    if throttled:
        return Requested(request_id, "throttled", throttled)
    oid = service.command(conn, [ev.device_id], {
        "type": "report_location", "request_id": request_id,
        "deadline": (at + window).isoformat()}, owntracks=True)
    conn.execute("UPDATE location_requests SET outbox_id = %s WHERE id = %s", (oid, request_id))
    if r is not None:
        # Before the commit, so no answer can slip past; a rollback leaves a harmless member
        # (the next fix finds nothing pending and removes it), and `expire` re-adds any device
        # with a pending request that a racing worker removed.
        r.sadd(prefix + PENDING, ev.device_id)
    return Requested(request_id, "sent", None)


_ANSWER = """
WITH f AS (
    SELECT * FROM unnest(%(dev)s::text[], %(t)s::timestamptz[], %(recv)s::timestamptz[],
                         %(acc)s::real[]) AS f(dev, t, recv, acc)
), first AS (
    SELECT DISTINCT ON (lr.id) lr.id, f.t, f.recv, f.acc
      FROM location_requests lr JOIN f ON f.dev = lr.device_id
     WHERE lr.status = 'sent' AND lr.device_id = ANY(%(devs)s)
       -- a fresh fix, taken after the command and after the evidence, within the window
       AND f.t >= lr.sent_at - interval '30 seconds' AND f.t > lr.evidence_fix_time
       AND f.t <= lr.deadline AND f.recv <= lr.deadline
     ORDER BY lr.id, f.t
)
UPDATE location_requests lr
   SET status = 'answered', answered_at = first.recv, answer_fix_time = first.t,
       answer_accuracy_m = first.acc, latency_s = extract(epoch FROM first.recv - lr.sent_at)
  FROM first
 WHERE lr.id = first.id AND lr.status = 'sent'
RETURNING lr.id
"""


def answer(conn: psycopg.Connection, r: redis.Redis, prefix: str,
           fixes: Iterable[Answer]) -> int:
    """Mark pending requests answered by this batch's usable, non-mock fixes; returns count."""
    batch = list(fixes)
    if not batch:
        return 0
    devs = sorted({a.device_id for a in batch})
    flags = r.smismember(prefix + PENDING, devs)
    pending = [d for d, f in zip(devs, flags, strict=True) if f]
    if not pending:
        return 0
    waiting = set(pending)
    mine = [a for a in batch if a.device_id in waiting]
    rows = conn.execute(_ANSWER, {
        "dev": [a.device_id for a in mine], "t": [_ts(a.fix_time) for a in mine],
        "recv": [_ts(a.received_at) for a in mine], "acc": [a.accuracy for a in mine],
        "devs": pending}).fetchall()
    still = {d for (d,) in conn.execute(
        "SELECT DISTINCT device_id FROM location_requests WHERE device_id = ANY(%s) "
        "AND status = 'sent'", (pending,))}
    done = [d for d in pending if d not in still]
    if done:
        r.srem(prefix + PENDING, *done)
    return len(rows)


def expire(conn: psycopg.Connection, r: redis.Redis, prefix: str,
           now: float | None = None) -> int:
    """Requests unanswered past their deadline become expired (never an alert); returns count."""
    now_dt = _ts(time.time() if now is None else now)
    with conn.transaction():
        expired = conn.execute(
            """UPDATE location_requests SET status = 'expired', expired_at = %(now)s
                WHERE id IN (SELECT id FROM location_requests
                              WHERE status = 'sent' AND deadline < %(now)s
                              FOR UPDATE SKIP LOCKED)
            RETURNING device_id""", {"now": now_dt}).fetchall()
    pending = {d for (d,) in conn.execute(
        "SELECT DISTINCT device_id FROM location_requests WHERE status = 'sent'")}
    gone = {d for (d,) in expired} - pending
    if gone:
        r.srem(prefix + PENDING, *gone)
    if pending:  # heals a member removed by a worker that raced a request's commit
        r.sadd(prefix + PENDING, *pending)
    return len(expired)
