"""Random roll-calls (随机点名): planned, sent over the command topic, answered by a fresh fix.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE roll_calls (
    id              bigserial PRIMARY KEY,
    supervisee_id   integer NOT NULL REFERENCES supervisees(id),
    office_id       integer NOT NULL REFERENCES org_units(id),
    origin          text NOT NULL CHECK (origin IN ('random', 'officer', 'engine', 'curfew')),
    plan_day        date,            -- random ones: the local day they belong to
    slot            integer,         -- random ones: 1..n within the day
    scheduled_at    timestamptz NOT NULL,
    sent_at         timestamptz,
    deadline        timestamptz,
    answered_at     timestamptz,
    answer_fix_time timestamptz,
    answer_device   text,
    status          text NOT NULL DEFAULT 'scheduled'
                      CHECK (status IN ('scheduled', 'sent', 'answered', 'missed', 'cancelled')),
    requested_by    integer REFERENCES staff(id),
    reason          text NOT NULL DEFAULT '',
    profile         text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (supervisee_id, plan_day, slot)
);
CREATE INDEX roll_calls_due ON roll_calls (scheduled_at) WHERE status = 'scheduled';
CREATE INDEX roll_calls_open ON roll_calls (deadline) WHERE status = 'sent';
CREATE INDEX roll_calls_supervisee ON roll_calls (supervisee_id, scheduled_at);
"""

DOWNGRADE = "DROP TABLE roll_calls;"


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
