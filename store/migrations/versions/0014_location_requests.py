"""Active confirmation: the engine's requests for a fresh fix, each one and its answer recorded.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-27
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE location_requests (
    id                bigserial PRIMARY KEY,
    device_id         text NOT NULL REFERENCES devices(id),
    supervisee_id     integer NOT NULL REFERENCES supervisees(id),
    office_id         integer NOT NULL REFERENCES org_units(id),
    requested_at      timestamptz NOT NULL,  -- the engine's `now` when it asked
    evidence_fix_time timestamptz NOT NULL,  -- the suggestive fix that made it ask
    rule              text NOT NULL,         -- the engine's rule, e.g. confirm.area_exit
    evidence          jsonb NOT NULL DEFAULT '{}',  -- the engine's reason (no coordinates)
    status            text NOT NULL
                        CHECK (status IN ('sent', 'throttled', 'answered', 'expired')),
    throttle_reason   text CHECK (throttle_reason IN ('hourly_limit', 'pending')),
    sent_at           timestamptz,           -- the command was queued (outbox) at
    deadline          timestamptz,           -- answered by then, or expired (no alert)
    outbox_id         bigint,
    answered_at       timestamptz,           -- the answering message reached the server at
    answer_fix_time   timestamptz,
    answer_accuracy_m real,
    latency_s         double precision,      -- answered_at - sent_at
    expired_at        timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'throttled') = (sent_at IS NULL)),
    CHECK ((status = 'throttled') = (throttle_reason IS NOT NULL)),
    CHECK ((status = 'answered') = (answered_at IS NOT NULL))
);
-- The battery limit: this device's commands in the last hour.
CREATE INDEX location_requests_device_sent ON location_requests (device_id, sent_at)
    WHERE sent_at IS NOT NULL;
-- Pending for this device (the answer), and the expiry sweep.
CREATE INDEX location_requests_pending ON location_requests (device_id, deadline)
    WHERE status = 'sent';
CREATE INDEX location_requests_open ON location_requests (deadline) WHERE status = 'sent';
-- A supervisee's requests for staff, newest first.
CREATE INDEX location_requests_supervisee ON location_requests (supervisee_id, requested_at);
"""

DOWNGRADE = "DROP TABLE location_requests;"


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
