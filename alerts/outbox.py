"""Queueing alert notifications in the transactional outbox."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import psycopg

OUTBOX_CHANNEL = "ccs_outbox"


def queue_raised(conn: psycopg.Connection, kind: str, severity: str,
                 rows: Iterable[Sequence[Any]]) -> int:
    """Outbox entries for alerts raised by SQL: rows of (id, supervisee, office, count, new, reason).

    Runs inside the caller's transaction, so the alert and its notification commit together.
    """
    n = 0
    for alert_id, sup, office, count, inserted, reason in rows:
        payload = {"alert_id": alert_id, "kind": kind, "severity": severity, "status": "open",
                   "supervisee_id": sup, "office_id": office, "count": count,
                   "new": bool(inserted), "reason": reason}
        conn.execute("INSERT INTO outbox (topic, payload) VALUES (%s, %s)",
                     ("alert.opened" if inserted else "alert.updated",
                      orjson.dumps(payload).decode()))
        n += 1
    if n:
        conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")
    return n
