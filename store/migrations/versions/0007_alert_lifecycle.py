"""Alert lifecycle: every transition recorded, dispositions, acknowledgement deadlines, escalation.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE alerts ADD COLUMN disposition text CHECK (disposition IN
    ('confirmed_violation', 'false_alarm', 'device_problem', 'authorised'));
ALTER TABLE alerts ADD COLUMN escalation_level integer NOT NULL DEFAULT 0
    CHECK (escalation_level BETWEEN 0 AND 2);  -- 0 office, 1 district bureau, 2 city bureau
ALTER TABLE alerts ADD COLUMN ack_deadline timestamptz;
CREATE INDEX alerts_ack_due ON alerts (ack_deadline) WHERE status = 'open';

CREATE TABLE alert_events (
    id          bigserial PRIMARY KEY,
    alert_id    bigint NOT NULL REFERENCES alerts(id),
    at          timestamptz NOT NULL DEFAULT now(),
    staff_id    integer REFERENCES staff(id),
    action      text NOT NULL,
    detail      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX alert_events_alert ON alert_events (alert_id, at);

-- Every alert gets its acknowledgement deadline from its severity when it is first stored.
CREATE FUNCTION alert_ack_deadline() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.ack_deadline IS NULL THEN
        NEW.ack_deadline := NEW.opened_at + CASE NEW.severity
            WHEN 'critical' THEN interval '5 minutes'
            WHEN 'high' THEN interval '15 minutes'
            WHEN 'medium' THEN interval '60 minutes'
            ELSE interval '240 minutes' END;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER alerts_ack_deadline BEFORE INSERT ON alerts
    FOR EACH ROW EXECUTE FUNCTION alert_ack_deadline();
"""

DOWNGRADE = r"""
DROP TRIGGER alerts_ack_deadline ON alerts;
DROP FUNCTION alert_ack_deadline();
DROP TABLE alert_events;
ALTER TABLE alerts DROP COLUMN ack_deadline, DROP COLUMN escalation_level, DROP COLUMN disposition;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
