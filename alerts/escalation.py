"""Unacknowledged alerts climb: office → district bureau → city bureau, each step recorded."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import psycopg

from alerts.outbox import OUTBOX_CHANNEL

# Time to acknowledge, by severity (the same as the alert_ack_deadline trigger, migration 0007).
ACK_MINUTES = {"critical": 5, "high": 15, "medium": 60, "low": 240}

_ESCALATE = """
WITH due AS (
    SELECT id FROM alerts
     WHERE status = 'open' AND escalation_level < 2 AND ack_deadline < %(now)s
     ORDER BY ack_deadline LIMIT 1000 FOR UPDATE SKIP LOCKED
), up AS (
    UPDATE alerts a SET escalation_level = a.escalation_level + 1, updated_at = now(),
           ack_deadline = %(now)s + CASE a.severity  -- the next level gets the same time
               WHEN 'critical' THEN interval '5 minutes' WHEN 'high' THEN interval '15 minutes'
               WHEN 'medium' THEN interval '60 minutes' ELSE interval '240 minutes' END
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


def escalate_overdue(conn: psycopg.Connection, now: float | None = None) -> int:
    """Escalate every open alert past its acknowledgement deadline by one level."""
    now_dt = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    with conn.transaction():
        n = len(conn.execute(_ESCALATE, {"now": now_dt}).fetchall())
        if n:
            conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")
    return n
