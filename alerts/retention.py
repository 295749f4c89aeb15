"""Retention: old rows of the operational tables go, in small batches, run by the scheduler's
leader (`alerts/scheduler.py`, job `retention`). Settings: `CCS_RETENTION_*` (store/settings.py).

Only finished rows go (a published outbox row, a delivered or expired notification, an
answered or missed roll-call...); what is still being worked on stays whatever its age.

Reading is bounded as well as deleting: each batch looks only at the oldest rows of a table by
primary key (ids grow with the time column, which every row gets from `now()` at insert), so a
run costs the same on a table of a thousand rows or a billion and needs no index on time. A row
at the head that is old but not yet finished (a pending notification until it expires, a
roll-call still waiting for its answer) holds back the rows after it only until it finishes.

Alert history (`alert_events`) is evidence and follows another rule: kept while the person is
supervised, and after the supervision ends for `retention_alert_events_years`; see `_ALERT_EVENTS`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg

from store.settings import Settings

log = logging.getLogger("alerts.retention")

DAY = 86400.0
HEAD_FACTOR = 4  # a batch looks at this many times `retention_batch` of the oldest rows


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    time_column: str
    finished: str  # SQL condition: the row may go once old enough
    setting: str  # the Settings field with the retention in days


TABLES = (
    Table("outbox", "created_at", "published_at IS NOT NULL", "retention_outbox_days"),
    Table("notification_attempts", "started_at", "finished_at IS NOT NULL",
          "retention_notification_attempts_days"),
    # A notification goes with its attempts (same statement: the foreign key holds).
    Table("notifications", "created_at", "status <> 'pending'", "retention_notifications_days"),
    Table("device_messages", "received_at", "true", "retention_device_messages_days"),
    Table("roll_calls", "created_at", "status IN ('answered', 'missed', 'cancelled')",
          "retention_roll_calls_days"),
    Table("location_requests", "created_at", "status <> 'sent'", "retention_location_requests_days"),
    Table("dead_letters", "received_at", "true", "retention_dead_letters_days"),
)

_HEAD = """
WITH head AS (
    SELECT id FROM {table} ORDER BY id LIMIT %(look)s
), gone AS (
    SELECT t.id FROM {table} t JOIN head USING (id)
     WHERE t.{time} < %(cutoff)s AND {finished}
     LIMIT %(batch)s
){extra}
DELETE FROM {table} t USING gone WHERE t.id = gone.id
"""
_ATTEMPTS_OF_GONE = """, attempts AS (
    DELETE FROM notification_attempts a USING gone WHERE a.notification_id = gone.id
)"""

# Alert history of people no longer supervised (inactive), on resolved alerts, once nothing of
# theirs has happened for the retention: no alert touched and no recorded change (a level, a
# release) since the cutoff. The schema keeps no supervision end date; the last recorded event
# stands for it, which errs on the side of keeping.
_ALERT_EVENTS = """
WITH gone AS (
    SELECT e.id FROM supervisees s
      JOIN alerts a ON a.supervisee_id = s.id
      JOIN alert_events e ON e.alert_id = a.id
     WHERE NOT s.active AND a.status = 'resolved' AND a.updated_at < %(cutoff)s
       AND NOT EXISTS (SELECT 1 FROM alerts b WHERE b.supervisee_id = s.id
                          AND (b.status <> 'resolved' OR b.updated_at >= %(cutoff)s))
       AND NOT EXISTS (SELECT 1 FROM supervisee_changes c
                        WHERE c.supervisee_id = s.id AND c.at >= %(cutoff)s)
     LIMIT %(batch)s
)
DELETE FROM alert_events t USING gone WHERE t.id = gone.id
"""


def _batches(conn: psycopg.Connection, sql: str, params: dict[str, object], batch: int,
             max_batches: int) -> int:
    deleted = 0
    for _ in range(max_batches):
        with conn.transaction():
            n = conn.execute(sql, params).rowcount
        deleted += max(n, 0)
        if n < batch:
            break
    return deleted


_FOLD = """
WITH d AS (DELETE FROM metric_counts RETURNING name, label, label2, n)
INSERT INTO metric_counts (name, label, label2, n)
SELECT name, label, label2, sum(n) FROM d GROUP BY 1, 2, 3
"""


def fold_metric_counts(conn: psycopg.Connection) -> int:
    """Fold the triggers' metric deltas (migration 0015) into one row per metric and label, so
    a scrape reads a few rows; returns how many rows remain."""
    with conn.transaction():
        return max(conn.execute(_FOLD).rowcount, 0)


def prune(conn: psycopg.Connection, settings: Settings, now: float | None = None) -> dict[str, int]:
    """Delete rows past their retention; returns how many went per table."""
    now_dt = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    batch, max_batches = settings.retention_batch, settings.retention_max_batches
    out: dict[str, int] = {}
    for t in TABLES:
        days = float(getattr(settings, t.setting))
        if days <= 0:
            continue
        sql = _HEAD.format(table=t.name, time=t.time_column, finished=t.finished,
                           extra=_ATTEMPTS_OF_GONE if t.name == "notifications" else "")
        out[t.name] = _batches(conn, sql, {"look": batch * HEAD_FACTOR, "batch": batch,
                                           "cutoff": now_dt - timedelta(days=days)},
                               batch, max_batches)
    years = settings.retention_alert_events_years
    if years > 0:
        out["alert_events"] = _batches(conn, _ALERT_EVENTS, {
            "batch": batch, "cutoff": now_dt - timedelta(days=365.25 * years)}, batch, max_batches)
    fold_metric_counts(conn)
    if any(out.values()):
        log.info("retention: deleted %s", {k: v for k, v in out.items() if v})
    return out
