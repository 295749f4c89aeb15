"""Metric counts kept by triggers, so a Prometheus scrape reads a few rows, not whole tables.

Statement-level triggers (transition tables: one insert per statement, COPY included) append
deltas to `metric_counts`; nothing is updated in place, so concurrent writers never wait on a
counter row. The scheduler's retention job folds the deltas into one row per metric and label
(`alerts/retention.py`), so a scrape sums the totals plus the few minutes of deltas since.
The counts start at what the tables hold when this migration runs.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE metric_counts (
    name   text NOT NULL,
    label  text NOT NULL DEFAULT '',
    label2 text NOT NULL DEFAULT '',
    n      double precision NOT NULL
);

-- Rows inserted, by one column: TG_ARGV = (metric name, column). Alerts opened by kind (an
-- upsert that updates an open alert inserts nothing), workflow steps by action, dead letters by
-- reason.
CREATE FUNCTION metric_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('INSERT INTO metric_counts (name, label, n)
                    SELECT %L, %I, count(*) FROM new_rows GROUP BY %I',
                   TG_ARGV[0], TG_ARGV[1], TG_ARGV[1]);
    RETURN NULL;
END $$;
CREATE TRIGGER alerts_metric_opened AFTER INSERT ON alerts REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION metric_count_inserted('alerts_opened', 'kind');
CREATE TRIGGER alert_events_metric AFTER INSERT ON alert_events REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION metric_count_inserted('alert_events', 'action');
CREATE TRIGGER dead_letters_metric AFTER INSERT ON dead_letters REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION metric_count_inserted('dead_letters', 'reason');

-- Time to acknowledge, when acknowledged_at is first set: a histogram as counts per bucket
-- (label: the bucket's upper bound in seconds, api/metrics.py ACK_BUCKETS_S), count and sum.
CREATE FUNCTION metric_ack_observe(d double precision)
    RETURNS TABLE (name text, label text, n double precision)
LANGUAGE sql IMMUTABLE AS $$
    SELECT 'ack_le', b::text, 1.0 FROM unnest(ARRAY[60, 300, 900, 1800, 3600, 14400, 86400]) b
     WHERE d <= b
    UNION ALL SELECT 'ack_count', '', 1.0
    UNION ALL SELECT 'ack_sum', '', d
$$;
CREATE FUNCTION metric_alerts_acknowledged() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO metric_counts (name, label, n)
    SELECT m.name, m.label, sum(m.n)
      FROM new_rows n JOIN old_rows o ON o.id = n.id,
           metric_ack_observe(extract(epoch FROM n.acknowledged_at - n.opened_at)::float8) m
     WHERE o.acknowledged_at IS NULL AND n.acknowledged_at IS NOT NULL
     GROUP BY m.name, m.label;
    RETURN NULL;
END $$;
CREATE TRIGGER alerts_metric_acknowledged AFTER UPDATE ON alerts
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION metric_alerts_acknowledged();

-- Notifications by channel and state: +1 into a state, -1 out of it.
CREATE FUNCTION metric_notifications_new() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO metric_counts (name, label, label2, n)
    SELECT 'notifications', channel, status, count(*) FROM new_rows GROUP BY channel, status;
    RETURN NULL;
END $$;
CREATE TRIGGER notifications_metric_new AFTER INSERT ON notifications
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION metric_notifications_new();
CREATE FUNCTION metric_notifications_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO metric_counts (name, label, label2, n)
    SELECT 'notifications', ch, st, sum(d) FROM (
        SELECT n.channel AS ch, n.status AS st, 1 AS d
          FROM new_rows n JOIN old_rows o ON o.id = n.id WHERE o.status <> n.status
        UNION ALL
        SELECT o.channel, o.status, -1
          FROM new_rows n JOIN old_rows o ON o.id = n.id WHERE o.status <> n.status) x
     GROUP BY ch, st;
    RETURN NULL;
END $$;
CREATE TRIGGER notifications_metric_moved AFTER UPDATE ON notifications
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION metric_notifications_moved();

-- Failed delivery attempts, by channel.
CREATE FUNCTION metric_attempts_failed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO metric_counts (name, label, n)
    SELECT 'attempts_failed', nt.channel, count(*)
      FROM new_rows n JOIN old_rows o ON o.id = n.id
      JOIN notifications nt ON nt.id = n.notification_id
     WHERE n.outcome = 'failed' AND o.outcome IS DISTINCT FROM 'failed'
     GROUP BY nt.channel;
    RETURN NULL;
END $$;
CREATE TRIGGER notification_attempts_metric AFTER UPDATE ON notification_attempts
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION metric_attempts_failed();

-- What the tables hold now.
INSERT INTO metric_counts (name, label, n) SELECT 'alerts_opened', kind, count(*) FROM alerts GROUP BY kind;
INSERT INTO metric_counts (name, label, n)
SELECT m.name, m.label, sum(m.n)
  FROM alerts a, metric_ack_observe(extract(epoch FROM a.acknowledged_at - a.opened_at)::float8) m
 WHERE a.acknowledged_at IS NOT NULL GROUP BY m.name, m.label;
INSERT INTO metric_counts (name, label, n)
SELECT 'alert_events', action, count(*) FROM alert_events GROUP BY action;
INSERT INTO metric_counts (name, label, label2, n)
SELECT 'notifications', channel, status, count(*) FROM notifications GROUP BY channel, status;
INSERT INTO metric_counts (name, label, n)
SELECT 'attempts_failed', n.channel, count(*) FROM notification_attempts a
  JOIN notifications n ON n.id = a.notification_id WHERE a.outcome = 'failed' GROUP BY n.channel;
INSERT INTO metric_counts (name, label, n)
SELECT 'dead_letters', reason, count(*) FROM dead_letters GROUP BY reason;
"""

DOWNGRADE = r"""
DROP TRIGGER alerts_metric_opened ON alerts;
DROP TRIGGER alerts_metric_acknowledged ON alerts;
DROP TRIGGER alert_events_metric ON alert_events;
DROP TRIGGER notifications_metric_new ON notifications;
DROP TRIGGER notifications_metric_moved ON notifications;
DROP TRIGGER notification_attempts_metric ON notification_attempts;
DROP TRIGGER dead_letters_metric ON dead_letters;
DROP FUNCTION metric_count_inserted(), metric_alerts_acknowledged(), metric_notifications_new(),
    metric_notifications_moved(), metric_attempts_failed(), metric_ack_observe(double precision);
DROP TABLE metric_counts;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
