"""Rule profiles, per-person overrides, exclusion and curfew assignments, cleared alerts.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE rule_profiles (
    id          serial PRIMARY KEY,
    name        text NOT NULL,
    version     integer NOT NULL,
    body        jsonb NOT NULL,
    active      boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (name, version)
);
-- At most one active profile: the one every decision uses (and records).
CREATE UNIQUE INDEX rule_profiles_one_active ON rule_profiles (active) WHERE active;

ALTER TABLE supervisees ADD COLUMN rule_overrides jsonb NOT NULL DEFAULT '{}';

-- Zones that apply to one person beyond the home area: prohibition orders and curfews.
CREATE TABLE supervisee_zones (
    id              serial PRIMARY KEY,
    supervisee_id   integer NOT NULL REFERENCES supervisees(id),
    zone_id         integer NOT NULL REFERENCES zones(id),
    role            text NOT NULL CHECK (role IN ('exclusion', 'curfew')),
    buffer_m        real NOT NULL DEFAULT 0 CHECK (buffer_m >= 0 AND buffer_m <= 5000),
    curfew_start    text CHECK (curfew_start ~ '^([01][0-9]|2[0-3]):[0-5][0-9]$'),
    curfew_end      text CHECK (curfew_end ~ '^([01][0-9]|2[0-3]):[0-5][0-9]$'),
    timezone        text NOT NULL DEFAULT 'Asia/Shanghai',
    active          boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (role <> 'curfew' OR (curfew_start IS NOT NULL AND curfew_end IS NOT NULL))
);
CREATE INDEX supervisee_zones_supervisee ON supervisee_zones (supervisee_id) WHERE active;

-- The condition behind an open alert has ended (back in the area, out of the zone).
ALTER TABLE alerts ADD COLUMN cleared_at timestamptz;
ALTER TABLE alerts ADD COLUMN detected_at timestamptz;
"""

DOWNGRADE = r"""
ALTER TABLE alerts DROP COLUMN detected_at;
ALTER TABLE alerts DROP COLUMN cleared_at;
DROP TABLE supervisee_zones;
ALTER TABLE supervisees DROP COLUMN rule_overrides;
DROP TABLE rule_profiles;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
