"""Delivery fixes from review: one notification per event, live suspension check, supervising
roles only, cancelled notifications.

- The idempotency key now names the event (alert, step, escalation level, channel) instead of
  the outbox row, so two outbox rows for the same step (two escalations racing) collapse into
  one notification and a receiver never gets the step twice.
- A suspension is checked when the notification is written, not read from the alert's
  `suppressed` snapshot: an escalation step during a suspension is not announced, and one after
  it is.
- Only supervising roles are notified (an auditor reads the audit log, not alerts).
- `cancelled`: a queued notification whose receiver, channel or recipient was disabled, or whose
  alert was resolved, before it could be delivered (kept with the reason, never sent).

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-26
"""

from pathlib import Path

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE notifications DROP CONSTRAINT notifications_status_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_status_check
    CHECK (status IN ('pending', 'delivered', 'expired', 'cancelled'));

CREATE OR REPLACE FUNCTION outbox_fan_out() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    a       alerts%ROWTYPE;
    unit    integer;
    level   integer := 0;
    n       integer;
BEGIN
    IF NEW.topic NOT IN ('alert.opened', 'alert.escalated') THEN
        RETURN NULL;
    END IF;
    SELECT * INTO a FROM alerts WHERE id = (NEW.payload->>'alert_id')::bigint;
    IF NOT FOUND OR EXISTS (
        SELECT 1 FROM alert_suspensions s
         WHERE s.supervisee_id = a.supervisee_id AND (s.kind IS NULL OR s.kind = a.kind)
           AND s.cancelled_at IS NULL AND now() >= s.starts_at AND now() < s.ends_at) THEN
        RETURN NULL;  -- suspended: recorded, not announced
    END IF;
    unit := a.office_id;
    IF NEW.topic = 'alert.escalated' THEN
        level := coalesce((NEW.payload->>'escalation_level')::integer, a.escalation_level);
        FOR i IN 1..level LOOP
            SELECT coalesce(parent_id, unit) INTO unit FROM org_units WHERE id = unit;
        END LOOP;
    END IF;
    INSERT INTO notifications (outbox_id, alert_id, staff_id, channel_id, channel, topic,
                               escalation_level, idempotency_key)
    SELECT NEW.id, a.id, s.id, c.id, c.channel, NEW.topic, level,
           'ccs-' || a.id || '-' || NEW.topic || '-' || level || '-' || c.id
      FROM staff s JOIN staff_channels c ON c.staff_id = s.id
      LEFT JOIN webhook_endpoints w ON w.id = c.webhook_id
     WHERE s.org_unit_id = unit AND s.active AND c.active
       AND s.role IN ('officer', 'office_head', 'district_supervisor', 'city_admin')
       AND (c.webhook_id IS NULL OR w.active)
       AND severity_rank(a.severity) >= severity_rank(c.min_severity)
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM pg_notify('ccs_deliver', '');
    END IF;
    RETURN NULL;
END $$;
"""

DOWNGRADE = r"""
UPDATE notifications SET status = 'expired' WHERE status = 'cancelled';
ALTER TABLE notifications DROP CONSTRAINT notifications_status_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_status_check
    CHECK (status IN ('pending', 'delivered', 'expired'));
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def _previous_fan_out() -> str:
    """0010's version of the function, to put back on downgrade."""
    src = (Path(__file__).parent / "0010_notification_delivery.py").read_text()
    start = src.index("CREATE FUNCTION outbox_fan_out()")
    end = src.index("END $$;", start) + len("END $$;")
    return src[start:end].replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def downgrade() -> None:
    op.execute(DOWNGRADE)
    op.execute(_previous_fan_out())
