"""Staff accounts: lockout after repeated failed logins, password change time.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-26
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE staff ADD COLUMN failed_logins integer NOT NULL DEFAULT 0;
ALTER TABLE staff ADD COLUMN locked_until timestamptz;
ALTER TABLE staff ADD COLUMN password_changed_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE staff ADD CONSTRAINT staff_role_known CHECK (role IN
    ('officer', 'office_head', 'district_supervisor', 'city_admin', 'auditor'));
"""

DOWNGRADE = r"""
ALTER TABLE staff DROP CONSTRAINT staff_role_known;
ALTER TABLE staff DROP COLUMN password_changed_at, DROP COLUMN locked_until,
    DROP COLUMN failed_logins;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
