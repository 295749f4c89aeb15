"""Position lifecycle: daily partitions kept by pg_partman, a last-position table, archives.

- `positions` becomes a pg_partman (4.x, Debian's postgresql-15-partman) partition set: daily
  partitions named positions_pYYYY_MM_DD (UTC days), made from 31 days back (the oldest fix
  ingest accepts is 30 days old, so a late fix always finds its day) to `premake` days ahead by
  `partman.run_maintenance`, which the scheduler runs (`store/partitions.py`). Existing
  partitions keep their rows and take partman's names; rows the old default partition held go
  to their day's partition. Ingest no longer creates partitions (DDL on the parent from every
  worker was a lock hazard); a row that still lands in the default partition is moved to its
  day by the maintenance (`partman.partition_data_time`).
- A BRIN index on fix_time: time-window questions ("who was near here between T1 and T2") read
  only the pages of that window, at almost no cost to inserts. Spatial (GiST) indexes are
  built on each day's partition once the day is over, CONCURRENTLY, by the maintenance.
- `last_positions`: each supervisee's newest fix, kept by a statement trigger on positions (in
  the writer's transaction), so "where is everyone now" never reads history.
- `position_archives`: each retired partition's archive file, checksum, rows and fate.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-02
"""

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE SCHEMA IF NOT EXISTS partman;
CREATE EXTENSION IF NOT EXISTS pg_partman SCHEMA partman;
SET TIME ZONE 'UTC';

-- partman makes its own default partition: ours steps aside with whatever it holds.
ALTER TABLE positions DETACH PARTITION positions_default;
ALTER TABLE positions_default RENAME TO positions_default_before_0016;
DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
              WHERE i.inhparent = 'public.positions'::regclass
                AND c.relname ~ '^positions_[0-9]{8}$'
    LOOP
        EXECUTE format('ALTER TABLE %I RENAME TO %I', r.relname,
                       'positions_p' || substr(r.relname, 11, 4) || '_' || substr(r.relname, 15, 2)
                       || '_' || substr(r.relname, 17, 2));
    END LOOP;
END $$;
SELECT partman.create_parent('public.positions', 'fix_time', 'native', 'daily',
                             p_premake := 7, p_jobmon := false,
                             p_start_partition := to_char(current_date - 31, 'YYYY-MM-DD'));
-- Premake whether or not new rows arrived (a quiet night still gets tomorrow's partition).
UPDATE partman.part_config SET infinite_time_partitions = true
 WHERE parent_table = 'public.positions';
INSERT INTO positions (device_id, supervisee_id, fix_time, received_at, lon, lat, raw_lon,
                       raw_lat, crs, accuracy, altitude, speed, heading, battery, provider, source,
                       mock, seq, late, membership)
SELECT device_id, supervisee_id, fix_time, received_at, lon, lat, raw_lon, raw_lat, crs,
       accuracy, altitude, speed, heading, battery, provider, source, mock, seq, late, membership
  FROM positions_default_before_0016;
DROP TABLE positions_default_before_0016;
DROP FUNCTION IF EXISTS ensure_positions_partition(date);

CREATE INDEX positions_fix_time_brin ON positions USING brin (fix_time);

CREATE TABLE last_positions (
    supervisee_id   integer PRIMARY KEY REFERENCES supervisees(id),
    device_id       text NOT NULL,
    fix_time        timestamptz NOT NULL,
    received_at     timestamptz NOT NULL,
    lon             double precision NOT NULL,
    lat             double precision NOT NULL,
    accuracy        real,
    provider        text,
    source          text NOT NULL,
    membership      text
) WITH (fillfactor = 70);  -- room for HOT updates: each fix rewrites its row in place
-- Kept by a statement trigger, whoever writes positions (ingest, a restore, a tool): rows
-- are locked in supervisee order, the same in every writer, so concurrent batches never
-- deadlock; a fix older than the one kept changes nothing.
CREATE FUNCTION positions_keep_last() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO last_positions AS l (supervisee_id, device_id, fix_time, received_at, lon, lat,
                                     accuracy, provider, source, membership)
    SELECT DISTINCT ON (supervisee_id) supervisee_id, device_id, fix_time, received_at, lon,
           lat, accuracy, provider, source, membership
      FROM new_rows ORDER BY supervisee_id, fix_time DESC
    ON CONFLICT (supervisee_id) DO UPDATE SET device_id = excluded.device_id,
        fix_time = excluded.fix_time, received_at = excluded.received_at, lon = excluded.lon,
        lat = excluded.lat, accuracy = excluded.accuracy, provider = excluded.provider,
        source = excluded.source, membership = excluded.membership
    WHERE excluded.fix_time > l.fix_time;
    RETURN NULL;
END $$;
CREATE TRIGGER positions_last AFTER INSERT ON positions REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION positions_keep_last();
INSERT INTO last_positions
SELECT s.id, p.device_id, p.fix_time, p.received_at, p.lon, p.lat, p.accuracy, p.provider,
       p.source, p.membership
  FROM supervisees s
 CROSS JOIN LATERAL (SELECT * FROM positions p
                      WHERE p.supervisee_id = s.id ORDER BY p.fix_time DESC LIMIT 1) p;

CREATE TABLE position_archives (
    id              bigserial PRIMARY KEY,
    partition       text NOT NULL,
    day             date NOT NULL,
    rows            bigint NOT NULL,
    first_fix_time  timestamptz,
    last_fix_time   timestamptz,
    path            text NOT NULL,
    bytes           bigint NOT NULL,
    sha256          text NOT NULL,
    archived_at     timestamptz NOT NULL DEFAULT now(),
    dropped_at      timestamptz,
    restored_at     timestamptz
);
CREATE INDEX position_archives_day ON position_archives (day);
"""

DOWNGRADE = """
DROP TRIGGER IF EXISTS positions_last ON positions;
DROP FUNCTION IF EXISTS positions_keep_last();
DROP TABLE IF EXISTS position_archives;
DROP TABLE IF EXISTS last_positions;
DROP INDEX IF EXISTS positions_fix_time_brin;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
