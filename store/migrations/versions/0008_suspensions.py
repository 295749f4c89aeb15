"""Suspensions: notifications paused for a supervisee (and kind) over a time window.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE alert_suspensions (
    id              serial PRIMARY KEY,
    supervisee_id   integer NOT NULL REFERENCES supervisees(id),
    kind            text,               -- NULL: every kind
    starts_at       timestamptz NOT NULL,
    ends_at         timestamptz NOT NULL,
    reason          text NOT NULL,
    staff_id        integer NOT NULL REFERENCES staff(id),
    cancelled_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (ends_at > starts_at)
);
CREATE INDEX alert_suspensions_supervisee ON alert_suspensions (supervisee_id, ends_at);

-- Alerts are still recorded during a suspension, marked suppressed; the relay does not notify.
ALTER TABLE alerts ADD COLUMN suppressed boolean NOT NULL DEFAULT false;
CREATE FUNCTION alert_suppressed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.suppressed := EXISTS (
        SELECT 1 FROM alert_suspensions s
         WHERE s.supervisee_id = NEW.supervisee_id AND (s.kind IS NULL OR s.kind = NEW.kind)
           AND s.cancelled_at IS NULL AND now() >= s.starts_at AND now() < s.ends_at);
    RETURN NEW;
END $$;
CREATE TRIGGER alerts_suppressed BEFORE INSERT OR UPDATE OF count, last_fix_time ON alerts
    FOR EACH ROW EXECUTE FUNCTION alert_suppressed();
"""

DOWNGRADE = r"""
DROP TRIGGER alerts_suppressed ON alerts;
DROP FUNCTION alert_suppressed();
ALTER TABLE alerts DROP COLUMN suppressed;
DROP TABLE alert_suspensions;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
