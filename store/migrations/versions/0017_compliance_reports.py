"""Compliance reports: an hourly summary of positions, monthly reports and who gets them.

- `position_hours`: per supervisee and UTC hour, the fixes stored, the usable ones, a bitmask of
  the hour's twelve 5-minute slots that hold a usable fix, and the best accuracy. Kept by a
  statement trigger on `positions` (transition table: one upsert per statement, COPY and
  restores included), in the writer's transaction, rows locked in (supervisee, hour) order as
  `last_positions` is, so concurrent batches never deadlock. "Usable" is decided with the rules
  in force when the fix is stored, the engine's own test (`geofence.engine.is_usable`): an
  accuracy above 0 and within the person's `max_accuracy_m` (the active profile's level, or the
  person's override; 200 m without a stored profile), not cell-only, and not a mock location.
  Coverage of a month reads ~720 rows per person instead of every fix (`alerts/reports.py`).
  The rows are counts, not places: they stay when a day's positions are archived and dropped,
  so a month's coverage can still be reported after its positions retired.
- `staff_channels.alerts` / `.reports`: a channel receives alert notifications (as before) and,
  if its owner chose it, the monthly compliance report (e-mail channels of office heads and
  bureau staff). `notification_block` (migration 0010) refuses alert notifications on a channel
  with alerts off.
- `compliance_reports`: each generated monthly report (its figures and its PDF), one per unit
  and period; `report_deliveries`: one row per report and channel, so a month is sent once.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-03
"""

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE position_hours (
    supervisee_id   integer NOT NULL,
    hour            timestamptz NOT NULL,       -- the UTC hour's start
    fixes           integer NOT NULL,           -- fixes stored for that hour
    usable          integer NOT NULL,           -- of which usable (see the module docstring)
    slots           integer NOT NULL,           -- bit k: a usable fix in minutes [5k, 5k+5)
    best_accuracy   real,                       -- smallest accuracy of a real fix, metres
    PRIMARY KEY (supervisee_id, hour)
) WITH (fillfactor = 80);  -- the current hour's row is updated by every batch: room for HOT
CREATE INDEX position_hours_hour ON position_hours USING brin (hour);

CREATE FUNCTION position_hours_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    $ADD_NEW_ROWS$;
    RETURN NULL;
END $$;
CREATE TRIGGER positions_hours AFTER INSERT ON positions REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION position_hours_add();

-- What the positions table holds now (make run migrates before ingest starts).
$ADD_POSITIONS$;

-- 5-minute slots of an hour's bitmask that fall in groups of k slots (k = 1, 2, 3, 4, 6, 12:
-- an expected reporting interval of 5, 10, 15, 20, 30 or 60 minutes): how many groups hold a
-- usable fix. A plain SQL expression, so the planner inlines it.
CREATE FUNCTION hour_slots_covered(s integer, k integer) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    -- (PostgreSQL gives |, & and >> one precedence, left to right: every shift in brackets.)
    SELECT CASE k
        WHEN 1 THEN bit_count(s::bit(12))
        WHEN 2 THEN bit_count(((s | (s >> 1)) & 1365)::bit(12))
        WHEN 3 THEN bit_count(((s | (s >> 1) | (s >> 2)) & 585)::bit(12))
        WHEN 4 THEN bit_count(((s | (s >> 1) | (s >> 2) | (s >> 3)) & 273)::bit(12))
        WHEN 6 THEN bit_count(((s | (s >> 1) | (s >> 2) | (s >> 3) | (s >> 4) | (s >> 5)) & 65)
                              ::bit(12))
        ELSE (s <> 0)::integer END::integer
$$;

ALTER TABLE staff_channels ADD COLUMN alerts boolean NOT NULL DEFAULT true;
ALTER TABLE staff_channels ADD COLUMN reports boolean NOT NULL DEFAULT false;
ALTER TABLE staff_channels ADD CONSTRAINT staff_channels_reports_by_email
    CHECK (NOT reports OR channel = 'email');

-- Migration 0010's reasons a channel may not be sent to, and one more: its owner turned alerts
-- off on it (a channel kept for reports only). The fan-out writes nothing for such a channel and
-- the delivery worker cancels, with this reason, what was queued before the change.
$BLOCK$
CREATE TABLE compliance_reports (
    id              bigserial PRIMARY KEY,
    unit_id         integer NOT NULL REFERENCES org_units(id),
    period_start    timestamptz NOT NULL,
    period_end      timestamptz NOT NULL,
    kind            text NOT NULL DEFAULT 'monthly' CHECK (kind IN ('monthly')),
    generated_at    timestamptz NOT NULL DEFAULT now(),
    figures         jsonb NOT NULL,
    pdf             bytea NOT NULL,
    pdf_sha256      text NOT NULL,
    UNIQUE (unit_id, period_start, period_end, kind),
    CHECK (period_end > period_start)
);

CREATE TABLE report_deliveries (
    id              bigserial PRIMARY KEY,
    report_id       bigint NOT NULL REFERENCES compliance_reports(id),
    staff_id        integer NOT NULL REFERENCES staff(id),
    channel_id      integer NOT NULL REFERENCES staff_channels(id),
    address         text NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    UNIQUE (report_id, channel_id)
);
CREATE INDEX report_deliveries_pending ON report_deliveries (report_id) WHERE status <> 'delivered';
"""

DOWNGRADE = r"""
DROP TABLE report_deliveries;
DROP TABLE compliance_reports;
$BLOCK0010$
ALTER TABLE staff_channels DROP COLUMN reports, DROP COLUMN alerts;
DROP TRIGGER positions_hours ON positions;
DROP FUNCTION position_hours_add();
DROP FUNCTION hour_slots_covered(integer, integer);
DROP TABLE position_hours;
"""


# Fold a set of fixes (`{rows}`: the trigger's transition table, or the whole table once) into
# position_hours. The usable-accuracy limit of each person: their override, else the active
# profile's level, else its normal level, else the engine's default
# (geofence.profile.Rules.max_accuracy_m). Rows in (supervisee, hour) order: the lock order.
ADD = r"""
    INSERT INTO position_hours AS h (supervisee_id, hour, fixes, usable, slots, best_accuracy)
    SELECT n.supervisee_id, date_trunc('hour', n.fix_time, 'UTC'), count(*),
           count(*) FILTER (WHERE u.ok),
           coalesce(bit_or(1 << (extract(minute FROM n.fix_time AT TIME ZONE 'UTC')::int / 5))
                    FILTER (WHERE u.ok), 0),
           min(n.accuracy) FILTER (WHERE r.real_fix)
      FROM {rows} n
      LEFT JOIN supervisees s ON s.id = n.supervisee_id
      LEFT JOIN LATERAL (SELECT body FROM rule_profiles WHERE active
                          ORDER BY id DESC LIMIT 1) prof ON true
     CROSS JOIN LATERAL (
           SELECT n.accuracy > 0 AND NOT n.mock AND n.provider IS DISTINCT FROM 'cell' AS real_fix) r
     CROSS JOIN LATERAL (
           SELECT r.real_fix AND n.accuracy <= coalesce(
               (s.rule_overrides ->> 'max_accuracy_m')::float8,
               (prof.body -> 'levels' -> s.level ->> 'max_accuracy_m')::float8,
               (prof.body -> 'levels' -> 'normal' ->> 'max_accuracy_m')::float8,
               200.0) AS ok) u
     GROUP BY 1, 2
     ORDER BY 1, 2
    ON CONFLICT (supervisee_id, hour) DO UPDATE
       SET fixes = h.fixes + excluded.fixes, usable = h.usable + excluded.usable,
           slots = h.slots | excluded.slots,
           best_accuracy = least(h.best_accuracy, excluded.best_accuracy)"""

NOTIFICATION_BLOCK = r"""
CREATE OR REPLACE FUNCTION notification_block(staff_id integer, channel_id integer) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE
           WHEN NOT s.active THEN 'recipient disabled'
           WHEN s.role NOT IN ('officer', 'office_head', 'district_supervisor', 'city_admin')
                THEN 'recipient no longer supervises'
           WHEN NOT c.active THEN 'channel removed'
           WHEN NOT c.alerts THEN 'alerts turned off on this channel'
           WHEN w.id IS NOT NULL AND NOT w.active THEN 'webhook deactivated'
           END
      FROM staff s, staff_channels c LEFT JOIN webhook_endpoints w ON w.id = c.webhook_id
     WHERE s.id = staff_id AND c.id = channel_id
$$;
"""
UPGRADE = (UPGRADE.replace("$BLOCK$", NOTIFICATION_BLOCK)
           .replace("$ADD_NEW_ROWS$", ADD.format(rows="new_rows"))
           .replace("$ADD_POSITIONS$", ADD.format(rows="positions")))
DOWNGRADE = DOWNGRADE.replace("$BLOCK0010$", NOTIFICATION_BLOCK.replace(
    "           WHEN NOT c.alerts THEN 'alerts turned off on this channel'\n", ""))


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
