"""Notification delivery: webhook endpoints, staff channel preferences, notifications, attempts.

An alert's notifications are written by a trigger on the outbox row that announces it, so the
alert, its outbox row and one notification per recipient and channel commit in one transaction,
whichever code path (ingest, scheduler, API) raised or escalated it.

- The idempotency key names the event (alert, step, escalation level, channel), not the outbox
  row: two outbox rows for the same step (two escalations racing) collapse into one
  notification, and a receiver never gets the step twice.
- A suspension is checked when the notification is written: an escalation step during a
  suspension is not announced, one after it is.
- `notification_block` says why a recipient's channel may not be sent to (recipient disabled or
  no longer supervising, channel removed, webhook deactivated): the trigger writes nothing for
  it, and the delivery worker cancels, with that reason, what was queued before the change.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-26
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE webhook_endpoints (
    id          serial PRIMARY KEY,
    org_unit_id integer NOT NULL REFERENCES org_units(id),
    name        text NOT NULL,
    url         text NOT NULL CHECK (url ~ '^https?://'),
    secret      text NOT NULL,          -- "whsec_" + base64 key (Standard Webhooks)
    active      boolean NOT NULL DEFAULT true,
    created_by  integer REFERENCES staff(id),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE staff_channels (
    id           serial PRIMARY KEY,
    staff_id     integer NOT NULL REFERENCES staff(id),
    channel      text NOT NULL CHECK (channel IN ('email', 'webhook')),
    -- An e-mail address, or the handle a webhook receiver acts on (a phone number for an SMS
    -- gateway, a chat id for a messaging platform).
    address      text NOT NULL,
    webhook_id   integer REFERENCES webhook_endpoints(id),
    min_severity text NOT NULL DEFAULT 'low'
                 CHECK (min_severity IN ('low', 'medium', 'high', 'critical')),
    active       boolean NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CHECK ((channel = 'webhook') = (webhook_id IS NOT NULL)),
    UNIQUE NULLS NOT DISTINCT (staff_id, channel, address, webhook_id)
);

CREATE TABLE notifications (
    id               bigserial PRIMARY KEY,
    outbox_id        bigint NOT NULL,
    alert_id         bigint NOT NULL REFERENCES alerts(id),
    staff_id         integer NOT NULL REFERENCES staff(id),
    channel_id       integer NOT NULL REFERENCES staff_channels(id),
    channel          text NOT NULL,
    topic            text NOT NULL,
    escalation_level integer NOT NULL DEFAULT 0,
    idempotency_key  text NOT NULL UNIQUE,   -- the same on every attempt: receivers drop repeats
    -- cancelled: its receiver, channel or recipient was disabled, or its alert resolved, before
    -- it could be delivered (kept with the reason, never sent).
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'expired', 'cancelled')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz
);
CREATE INDEX notifications_due ON notifications (channel, next_attempt_at) WHERE status = 'pending';
CREATE INDEX notifications_alert ON notifications (alert_id);

CREATE TABLE notification_attempts (
    id              bigserial PRIMARY KEY,
    notification_id bigint NOT NULL REFERENCES notifications(id),
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    -- NULL: the worker died while sending (the lease ran out and the notification went back).
    outcome         text CHECK (outcome IN ('delivered', 'failed')),
    detail          text,
    worker          text NOT NULL
);
CREATE INDEX notification_attempts_notification ON notification_attempts (notification_id);

CREATE FUNCTION severity_rank(s text) RETURNS integer LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE s WHEN 'low' THEN 0 WHEN 'medium' THEN 1 WHEN 'high' THEN 2 ELSE 3 END
$$;

-- Why a staff member's channel may not be sent to now; NULL when it may. Only supervising roles
-- hear of alerts (an auditor reads the audit log, not alerts).
CREATE FUNCTION notification_block(staff_id integer, channel_id integer) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE
           WHEN NOT s.active THEN 'recipient disabled'
           WHEN s.role NOT IN ('officer', 'office_head', 'district_supervisor', 'city_admin')
                THEN 'recipient no longer supervises'
           WHEN NOT c.active THEN 'channel removed'
           WHEN w.id IS NOT NULL AND NOT w.active THEN 'webhook deactivated'
           END
      FROM staff s, staff_channels c LEFT JOIN webhook_endpoints w ON w.id = c.webhook_id
     WHERE s.id = staff_id AND c.id = channel_id
$$;

-- Routing: an opened alert goes to the staff of the supervisee's office; an escalation step
-- to the staff of the unit that many levels up (district bureau, then city bureau). Each
-- recipient gets one notification per channel it may be sent to whose minimum severity the
-- alert meets.
CREATE FUNCTION outbox_fan_out() RETURNS trigger LANGUAGE plpgsql AS $$
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
     WHERE s.org_unit_id = unit AND notification_block(s.id, c.id) IS NULL
       AND severity_rank(a.severity) >= severity_rank(c.min_severity)
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM pg_notify('ccs_deliver', '');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_fan_out AFTER INSERT ON outbox
    FOR EACH ROW EXECUTE FUNCTION outbox_fan_out();
"""

DOWNGRADE = r"""
DROP TRIGGER outbox_fan_out ON outbox;
DROP FUNCTION outbox_fan_out();
DROP FUNCTION notification_block(integer, integer);
DROP FUNCTION severity_rank(text);
DROP TABLE notification_attempts;
DROP TABLE notifications;
DROP TABLE staff_channels;
DROP TABLE webhook_endpoints;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
