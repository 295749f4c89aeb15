"""Keep the last approved end of a permit while an amendment waits for its decision.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-26
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE travel_permits ADD COLUMN approved_end_at timestamptz")
    op.execute("UPDATE travel_permits SET approved_end_at = end_at "
               "WHERE status IN ('approved', 'returned')")


def downgrade() -> None:
    op.execute("ALTER TABLE travel_permits DROP COLUMN approved_end_at")
