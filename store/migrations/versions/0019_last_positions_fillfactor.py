"""`last_positions` keeps half of each page free, so each person's newest fix is updated in place.

Every stored report updates its person's row in `last_positions` (the statement trigger of
migration 0016). With PostgreSQL's default fill factor (100) a page has no room for the new
version of a row, so the update writes it to another page and adds a new entry to the primary
key's index; with half of each page free the new version goes on the same page (a HOT update:
no index entry, and the old version is pruned when the page is next read). Measured on 700,000
rows updated 2,000 at a time, 2.1 million upserts as the trigger writes them: 12.2-12.7 s and 2 %
HOT at fill factor 100 (the table grew to 299 MB), 6.4-6.7 s and 100 % HOT at 50 (152 MB)
(BENCHMARKS.md, issue 13, session 13). The table holds one row per person (about 200 B), so
doubling its pages costs the country ≈ 150 MB.

The setting applies to pages written from now on; existing rows move to half-full pages as they
are updated. `VACUUM FULL last_positions` applies it at once (it locks the table while it runs:
seconds for a country's 700,000 rows).

`position_hours` keeps the default: a row per person and hour is updated only during its hour
and then kept for months, so free space there would be paid for forever.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07
"""

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE last_positions SET (fillfactor = 50)")


def downgrade() -> None:
    op.execute("ALTER TABLE last_positions RESET (fillfactor)")
