"""Sanctions decided by staff (训诫 reprimand, 警告 warning, revocation request).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE sanctions (
    id              serial PRIMARY KEY,
    supervisee_id   integer NOT NULL REFERENCES supervisees(id),
    kind            text NOT NULL CHECK (kind IN ('reprimand', 'warning', 'revocation_request')),
    decided_by      integer NOT NULL REFERENCES staff(id),
    decided_at      timestamptz NOT NULL DEFAULT now(),
    reason          text NOT NULL,
    alert_id        bigint REFERENCES alerts(id)
);
CREATE INDEX sanctions_supervisee ON sanctions (supervisee_id, decided_at);
"""

DOWNGRADE = "DROP TABLE sanctions;"


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
