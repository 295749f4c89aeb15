"""Prometheus metrics, read from the database at scrape time.

Alerts are opened by the ingest worker, acknowledged through the API and escalated by the
scheduler, in different processes: counting in the database keeps every figure exact whatever
process did the work, and a restart loses nothing.
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

ACK_BUCKETS_S = (60.0, 300.0, 900.0, 1800.0, 3600.0, 4 * 3600.0, 24 * 3600.0)


class DatabaseCollector(Collector):
    """Alert and delivery figures straight from PostgreSQL."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def collect(self) -> Iterator[object]:  # type: ignore[override]
        """One short read-only transaction per scrape."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            opened = CounterMetricFamily("ccs_alerts_opened", "Alerts opened, by kind",
                                         labels=["kind"])
            for kind, n in conn.execute("SELECT kind, count(*) FROM alerts GROUP BY kind"):
                opened.add_metric([kind], n)
            yield opened
            open_now = GaugeMetricFamily("ccs_alerts_open", "Alerts not yet resolved, by status",
                                         labels=["status"])
            for status, n in conn.execute(
                    "SELECT status, count(*) FROM alerts WHERE status <> 'resolved' GROUP BY 1"):
                open_now.add_metric([status], n)
            yield open_now
            for action, name, doc in (
                    ("acknowledged", "ccs_alerts_acknowledged", "Acknowledgements"),
                    ("escalated", "ccs_alerts_escalated", "Escalation steps")):
                c = CounterMetricFamily(name, doc)
                row = conn.execute("SELECT count(*) FROM alert_events WHERE action = %s",
                                   (action,)).fetchone()
                c.add_metric([], row[0] if row else 0)
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
            rows = conn.execute(
                f"""SELECT {", ".join(f"count(*) FILTER (WHERE d <= {b})" for b in ACK_BUCKETS_S)},
                           count(*), coalesce(sum(d), 0)
                      FROM (SELECT extract(epoch FROM acknowledged_at - opened_at) AS d
                              FROM alerts WHERE acknowledged_at IS NOT NULL) x""").fetchone()
            assert rows is not None
            *cum, total, s = rows
            h.add_metric([], [(str(b), c) for b, c in zip(ACK_BUCKETS_S, cum, strict=True)]
                         + [("+Inf", total)], float(s))
            yield h
            failed = CounterMetricFamily("ccs_notification_attempts_failed",
                                         "Delivery attempts that failed (retried), by channel",
                                         labels=["channel"])
            for channel, n in conn.execute(
                    """SELECT n.channel, count(*) FROM notification_attempts a
                         JOIN notifications n ON n.id = a.notification_id
                        WHERE a.outcome = 'failed' GROUP BY 1"""):
                failed.add_metric([channel], n)
            yield failed
            notes = GaugeMetricFamily("ccs_notifications",
                                      "Notifications by channel and state (pending, delivered, "
                                      "expired: given up after the expiry time)",
                                      labels=["channel", "status"])
            for channel, status, n in conn.execute(
                    "SELECT channel, status, count(*) FROM notifications GROUP BY 1, 2"):
                notes.add_metric([channel, status], n)
            yield notes
            dead = CounterMetricFamily("ccs_dead_letters", "Rejected messages, by reason",
                                       labels=["reason"])
            for reason, n in conn.execute("SELECT reason, count(*) FROM dead_letters GROUP BY 1"):
                dead.add_metric([reason], n)
            yield dead
