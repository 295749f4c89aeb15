"""Prometheus metrics, read from the database at scrape time, without scanning history.

Alerts are opened by the ingest worker, acknowledged through the API and escalated by the
scheduler, in different processes: counting in the database keeps every figure exact whatever
process did the work, and a restart loses nothing. The sources are cheap whatever the tables
hold (and whatever retention deleted):

- counters and the notification states come from `metric_counts`, kept by statement-level
  triggers in the writers' own transactions (migration 0015) and folded by the retention job:
  a scrape reads one row per metric and label plus the deltas of the last few minutes;
- open alerts and pending outbox rows are counted over their partial indexes (status <>
  'resolved', published_at IS NULL): what is still open, never history;
- table sizes (`ccs_table_rows`) are PostgreSQL's own estimates (pg_class.reltuples).
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from store import redisconn
from store.settings import Settings

# The same bounds as metric_ack_observe() in migration 0015.
ACK_BUCKETS_S = (60.0, 300.0, 900.0, 1800.0, 3600.0, 4 * 3600.0, 24 * 3600.0)
ESTIMATED = ("outbox", "notifications", "notification_attempts", "alert_events",
             "alerts", "device_messages", "roll_calls", "location_requests", "dead_letters")


class DatabaseCollector(Collector):
    """Alert and delivery figures from PostgreSQL (see the module's note on their sources)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def collect(self) -> Iterator[object]:  # type: ignore[override]
        """One short read-only transaction per scrape."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            counts: dict[str, list[tuple[str, str, float]]] = {}
            for name, label, label2, n in conn.execute(
                    """SELECT name, label, label2, sum(n) FROM metric_counts GROUP BY 1, 2, 3"""):
                counts.setdefault(name, []).append((label, label2, float(n)))
            opened = CounterMetricFamily("ccs_alerts_opened", "Alerts opened, by kind",
                                         labels=["kind"])
            for kind, _, n in counts.get("alerts_opened", []):
                opened.add_metric([kind], n)
            yield opened
            open_now = GaugeMetricFamily("ccs_alerts_open", "Alerts not yet resolved, by status",
                                         labels=["status"])
            for status, n in conn.execute(
                    "SELECT status, count(*) FROM alerts WHERE status <> 'resolved' GROUP BY 1"):
                open_now.add_metric([status], n)
            yield open_now
            steps = {action: n for action, _, n in counts.get("alert_events", [])}
            for action, name, doc in (
                    ("acknowledged", "ccs_alerts_acknowledged", "Acknowledgements"),
                    ("escalated", "ccs_alerts_escalated", "Escalation steps")):
                c = CounterMetricFamily(name, doc)
                c.add_metric([], steps.get(action, 0.0))
                yield c
            pending = GaugeMetricFamily("ccs_outbox_pending",
                                        "Notifications not yet delivered (outbox rows)",
                                        labels=["topic"])
            for topic, n in conn.execute("""SELECT topic, count(*) FROM outbox
                                             WHERE published_at IS NULL GROUP BY 1"""):
                pending.add_metric([topic], n)
            yield pending
            h = HistogramMetricFamily("ccs_alert_time_to_acknowledge_seconds",
                                      "From opening to acknowledgement")
            le = {float(b): n for b, _, n in counts.get("ack_le", [])}
            total = sum(n for _, _, n in counts.get("ack_count", []))
            h.add_metric([], [(str(b), le.get(b, 0.0)) for b in ACK_BUCKETS_S] + [("+Inf", total)],
                         sum(n for _, _, n in counts.get("ack_sum", [])))
            yield h
            failed = CounterMetricFamily("ccs_notification_attempts_failed",
                                         "Delivery attempts that failed (retried), by channel",
                                         labels=["channel"])
            for channel, _, n in counts.get("attempts_failed", []):
                failed.add_metric([channel], n)
            yield failed
            notes = GaugeMetricFamily("ccs_notifications",
                                      "Notifications by channel and state (pending, delivered, "
                                      "expired: given up after the expiry time)",
                                      labels=["channel", "status"])
            for channel, status, n in counts.get("notifications", []):
                notes.add_metric([channel, status], n)
            yield notes
            dead = CounterMetricFamily("ccs_dead_letters", "Rejected messages, by reason",
                                       labels=["reason"])
            for reason, _, n in counts.get("dead_letters", []):
                dead.add_metric([reason], n)
            yield dead
            rows = GaugeMetricFamily("ccs_table_rows", "Rows per operational table (PostgreSQL's "
                                     "estimate, pg_class.reltuples)", labels=["table"])
            for table, n in conn.execute(
                    """SELECT relname, greatest(reltuples, 0) FROM pg_class
                        WHERE relkind IN ('r', 'p') AND relnamespace = 'public'::regnamespace
                          AND relname = ANY(%s)""", (list(ESTIMATED),)):
                rows.add_metric([table], float(n))
            yield rows


class AuditChainCollector(Collector):
    """The scheduler's last recomputation of the audit chain (alerts/scheduler.py,
    `verify_audit_chain`): nothing is exported until one has run."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.key = settings.redis_prefix + "audit:verified"

    def collect(self) -> Iterator[object]:  # type: ignore[override]
        r = redisconn.sync_client(self.settings, socket_timeout=2, decode_responses=True)
        try:
            got: dict[str, str] = r.hgetall(self.key)  # type: ignore[assignment]
        finally:
            r.close()
        if not got:
            return
        for name, doc, value in (
                ("ccs_audit_chain_ok", "1 when the last recomputation of the audit log's hash "
                 "chain found it intact, 0 when broken", float(got["ok"])),
                ("ccs_audit_chain_verified_timestamp_seconds", "When the chain was last "
                 "recomputed (Unix time)", float(got["at"])),
                ("ccs_audit_chain_rows", "Rows the last recomputation read", float(got["rows"]))):
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], value)
            yield g
