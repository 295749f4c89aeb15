"""Travel permits (外出) with tiered approval, their history, and return check-ins (销假).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE travel_permits (
    id                  serial PRIMARY KEY,
    supervisee_id       integer NOT NULL REFERENCES supervisees(id),
    office_id           integer NOT NULL REFERENCES org_units(id),
    reason              text NOT NULL CHECK (reason IN ('medical', 'schooling', 'litigation',
                                                        'family', 'work')),
    details             text NOT NULL DEFAULT '',
    destination_zone_id integer NOT NULL REFERENCES zones(id),
    start_at            timestamptz NOT NULL,
    end_at              timestamptz NOT NULL,
    status              text NOT NULL DEFAULT 'requested'
                          CHECK (status IN ('requested', 'approved', 'rejected', 'revoked',
                                            'returned')),
    required_tier       text NOT NULL CHECK (required_tier IN ('office', 'district', 'city')),
    office_opinion      text,
    office_opinion_by   integer REFERENCES staff(id),
    decided_by          integer REFERENCES staff(id),
    decided_at          timestamptz,
    decision_note       text,
    returned_at         timestamptz,
    overdue_alerted_at  timestamptz,
    requested_by_staff  integer REFERENCES staff(id),
    requested_by_device text,
    profile             text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CHECK (end_at > start_at)
);
CREATE INDEX travel_permits_supervisee ON travel_permits (supervisee_id, start_at);
CREATE INDEX travel_permits_due ON travel_permits (end_at) WHERE status = 'approved';

-- Who did what to a permit, and when: requests, opinions, decisions, amendments, returns.
CREATE TABLE permit_events (
    id          bigserial PRIMARY KEY,
    permit_id   integer NOT NULL REFERENCES travel_permits(id),
    at          timestamptz NOT NULL DEFAULT now(),
    staff_id    integer REFERENCES staff(id),
    device_id   text,
    action      text NOT NULL,
    detail      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX permit_events_permit ON permit_events (permit_id, at);
"""

DOWNGRADE = r"""
DROP TABLE permit_events;
DROP TABLE travel_permits;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
