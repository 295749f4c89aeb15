"""Key periods (重点时段) and the record of level and flag changes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE key_periods (
    id              serial PRIMARY KEY,
    name            text NOT NULL,
    starts_on       date NOT NULL,
    ends_on         date NOT NULL,
    levels          text[] NOT NULL DEFAULT '{}',   -- empty: every level
    flags           text[] NOT NULL DEFAULT '{}',   -- empty: everybody; else key persons with one
    interval_factor real NOT NULL DEFAULT 0.5 CHECK (interval_factor > 0 AND interval_factor <= 1),
    extra_rollcalls integer NOT NULL DEFAULT 1 CHECK (extra_rollcalls >= 0),
    created_by      integer REFERENCES staff(id),
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (ends_on >= starts_on)
);

CREATE TABLE supervisee_changes (
    id              bigserial PRIMARY KEY,
    supervisee_id   integer NOT NULL REFERENCES supervisees(id),
    at              timestamptz NOT NULL DEFAULT now(),
    staff_id        integer REFERENCES staff(id),
    field           text NOT NULL,
    old_value       jsonb,
    new_value       jsonb,
    reason          text NOT NULL
);
CREATE INDEX supervisee_changes_supervisee ON supervisee_changes (supervisee_id, at);
"""

DOWNGRADE = r"""
DROP TABLE supervisee_changes;
DROP TABLE key_periods;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
