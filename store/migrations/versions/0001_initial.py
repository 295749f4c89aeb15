"""Initial schema: organisation, staff, supervisees, devices, zones, positions, alerts.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Raw DDL: the partitioned positions table and partial unique indexes are clearer in SQL than in
# op.* calls. store/models.py mirrors it for the ORM; tests/test_schema.py checks they agree.
UPGRADE = r"""
CREATE EXTENSION IF NOT EXISTS postgis;

CREATE TABLE org_units (
    id          serial PRIMARY KEY,
    parent_id   integer REFERENCES org_units(id),
    kind        text NOT NULL CHECK (kind IN ('city_bureau','district_bureau','judicial_office')),
    name        text NOT NULL,
    name_en     text,
    adcode      text,
    path        text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX org_units_parent ON org_units(parent_id);

CREATE TABLE staff (
    id              serial PRIMARY KEY,
    org_unit_id     integer NOT NULL REFERENCES org_units(id),
    username        text NOT NULL UNIQUE,
    full_name       text NOT NULL,
    role            text NOT NULL CHECK (role IN ('officer','office_head','district_supervisor',
                                                   'city_admin','auditor')),
    password_hash   text NOT NULL,
    active          boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE zones (
    id              serial PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('home_area','exclusion','destination')),
    name            text NOT NULL,
    owner_unit_id   integer NOT NULL REFERENCES org_units(id),
    adcode          text,
    crs             text NOT NULL CHECK (crs IN ('wgs84','gcj02','bd09')),
    source_geojson  jsonb NOT NULL,
    geom            geometry(MultiPolygon, 4326) NOT NULL,
    version         integer NOT NULL DEFAULT 1,
    active          boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX zones_geom ON zones USING gist(geom);
CREATE INDEX zones_owner ON zones(owner_unit_id);

CREATE TABLE supervisees (
    id                  serial PRIMARY KEY,
    office_id           integer NOT NULL REFERENCES org_units(id),
    full_name           text NOT NULL,
    case_number         text NOT NULL UNIQUE,
    supervision_type    text NOT NULL CHECK (supervision_type IN
                          ('probation','parole','temporary_release','public_surveillance')),
    level               text NOT NULL DEFAULT 'normal' CHECK (level IN ('strict','normal','lenient')),
    key_flags           text[] NOT NULL DEFAULT '{}',
    monitoring_basis    text NOT NULL DEFAULT 'information_check'
                          CHECK (monitoring_basis IN ('information_check','electronic_device')),
    home_zone_id        integer REFERENCES zones(id),
    active              boolean NOT NULL DEFAULT true,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX supervisees_office ON supervisees(office_id);

CREATE TABLE devices (
    id              text PRIMARY KEY,
    supervisee_id   integer NOT NULL REFERENCES supervisees(id),
    label           text,
    secret_hash     text NOT NULL,
    active          boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz
);
CREATE INDEX devices_supervisee ON devices(supervisee_id);
CREATE UNIQUE INDEX devices_secret_hash ON devices(secret_hash);

-- Every accepted fix, partitioned by day of fix time. A DEFAULT partition keeps anything the
-- daily partitions do not cover yet, so no accepted fix can fail to find a home.
CREATE TABLE positions (
    device_id       text NOT NULL,
    supervisee_id   integer NOT NULL,
    fix_time        timestamptz NOT NULL,
    received_at     timestamptz NOT NULL,
    lon             double precision NOT NULL,
    lat             double precision NOT NULL,
    raw_lon         double precision NOT NULL,
    raw_lat         double precision NOT NULL,
    crs             text NOT NULL,
    accuracy        real,
    altitude        real,
    speed           real,
    heading         real,
    battery         real,
    provider        text,
    source          text NOT NULL,
    mock            boolean NOT NULL DEFAULT false,
    seq             bigint,
    late            boolean NOT NULL DEFAULT false,
    membership      text,
    geom            geometry(Point, 4326) GENERATED ALWAYS AS
                      (ST_SetSRID(ST_MakePoint(lon, lat), 4326)) STORED,
    PRIMARY KEY (device_id, fix_time)
) PARTITION BY RANGE (fix_time);
CREATE TABLE positions_default PARTITION OF positions DEFAULT;
CREATE INDEX positions_supervisee_time ON positions(supervisee_id, fix_time);

CREATE TABLE alerts (
    id              bigserial PRIMARY KEY,
    kind            text NOT NULL,
    severity        text NOT NULL CHECK (severity IN ('low','medium','high','critical')),
    status          text NOT NULL DEFAULT 'open'
                      CHECK (status IN ('open','acknowledged','resolved')),
    supervisee_id   integer NOT NULL REFERENCES supervisees(id),
    office_id       integer NOT NULL REFERENCES org_units(id),
    device_id       text,
    opened_at       timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    first_fix_time  timestamptz,
    last_fix_time   timestamptz,
    lon             double precision,
    lat             double precision,
    count           integer NOT NULL DEFAULT 1,
    late            boolean NOT NULL DEFAULT false,
    reason          jsonb NOT NULL DEFAULT '{}',
    acknowledged_by integer REFERENCES staff(id),
    acknowledged_at timestamptz,
    resolved_by     integer REFERENCES staff(id),
    resolved_at     timestamptz,
    resolution_note text
);
-- One open (or acknowledged) alert per supervisee and kind: repeats update it.
CREATE UNIQUE INDEX alerts_one_open ON alerts(supervisee_id, kind) WHERE status <> 'resolved';
CREATE INDEX alerts_office_status ON alerts(office_id, status, opened_at DESC);

-- Transactional outbox: written in the same transaction as the alert, relayed by the alert worker.
CREATE TABLE outbox (
    id              bigserial PRIMARY KEY,
    created_at      timestamptz NOT NULL DEFAULT now(),
    topic           text NOT NULL,
    payload         jsonb NOT NULL,
    published_at    timestamptz
);
CREATE INDEX outbox_unpublished ON outbox(id) WHERE published_at IS NULL;

CREATE TABLE dead_letters (
    id              bigserial PRIMARY KEY,
    received_at     timestamptz NOT NULL DEFAULT now(),
    source          text NOT NULL,
    topic           text,
    device_id       text,
    reason          text NOT NULL,
    detail          text NOT NULL DEFAULT '',
    raw             bytea NOT NULL,
    raw_size        integer NOT NULL,
    remote          text
);
CREATE INDEX dead_letters_received ON dead_letters(received_at DESC);

CREATE TABLE device_messages (
    id              bigserial PRIMARY KEY,
    received_at     timestamptz NOT NULL DEFAULT now(),
    device_id       text NOT NULL,
    source          text NOT NULL,
    msg_type        text NOT NULL,
    payload         jsonb NOT NULL
);

CREATE TABLE audit_log (
    id              bigserial PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT now(),
    staff_id        integer REFERENCES staff(id),
    action          text NOT NULL,
    target          text NOT NULL DEFAULT '',
    purpose         text NOT NULL DEFAULT '',
    remote          text,
    detail          jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at ON audit_log(at);

-- Daily partitions are created ahead (today-1 .. today+2) by the ingest worker; older or odd
-- fixes stay in the default partition. If the default already holds rows of that day, the
-- partition cannot be attached: the rows stay where they are, nothing is lost.
CREATE FUNCTION ensure_positions_partition(day date) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    name text := 'positions_' || to_char(day, 'YYYYMMDD');
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN true;
    END IF;
    BEGIN
        EXECUTE format(
            'CREATE TABLE IF NOT EXISTS %I PARTITION OF positions FOR VALUES FROM (%L) TO (%L)',
            name, day::timestamp AT TIME ZONE 'UTC', (day + 1)::timestamp AT TIME ZONE 'UTC');
    EXCEPTION WHEN check_violation OR duplicate_table OR invalid_object_definition THEN
        RETURN false;
    END;
    RETURN true;
END $$;
"""

DOWNGRADE = """
DROP FUNCTION IF EXISTS ensure_positions_partition(date);
DROP TABLE IF EXISTS audit_log, device_messages, dead_letters, outbox, alerts, positions,
    devices, supervisees, zones, staff, org_units CASCADE;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
