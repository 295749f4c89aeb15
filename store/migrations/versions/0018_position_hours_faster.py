"""The hourly position summary's trigger reads the active profile once per statement.

Migration 0017's `position_hours_add()` looked up each fix's accuracy limit by walking the active
rule profile's JSON (`body -> 'levels' -> level ->> 'max_accuracy_m'`, a 4 KB document) once per
row: about half of PostgreSQL's time per stored fix at full ingest rate (22 of ~45 µs measured
with `track_functions`). The same rule, computed once per statement: the profile's per-level
limits (a handful of rows), then each person's limit (their override, else their level's), then
per fix only a hash lookup. The limit is now exactly the engine's (`RuleProfile.rules_for`): a
level the profile lacks takes the normal level's, a level stored without `max_accuracy_m` takes
the default 200 m (0017 gave it the normal level's; profiles written by the project always carry
the key). `tests/test_reports.py` checks the summary against a recomputation with
`geofence.engine.is_usable`.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07
"""

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

ADD_NEW_ROWS = r"""
CREATE OR REPLACE FUNCTION position_hours_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- MATERIALIZED: computed once each. Inlined, the planner (which knows nothing of a
    -- transition table's size) may rerun the per-person part for every fix.
    WITH prof AS (SELECT body -> 'levels' AS levels FROM rule_profiles WHERE active
                   ORDER BY id DESC LIMIT 1),
         lv AS MATERIALIZED (
             SELECT l.key AS level, coalesce((l.value ->> 'max_accuracy_m')::float8, 200.0) AS lim
               FROM prof CROSS JOIN LATERAL jsonb_each(
                    CASE jsonb_typeof(prof.levels) WHEN 'object' THEN prof.levels
                         ELSE '{}'::jsonb END) l),
         lim AS MATERIALIZED (
             SELECT s.id, coalesce((s.rule_overrides ->> 'max_accuracy_m')::float8, lv.lim,
                                   (SELECT lim FROM lv WHERE level = 'normal'), 200.0) AS lim
               FROM (SELECT DISTINCT supervisee_id FROM new_rows) ids
               JOIN supervisees s ON s.id = ids.supervisee_id
               LEFT JOIN lv ON lv.level = s.level)
    INSERT INTO position_hours AS h (supervisee_id, hour, fixes, usable, slots, best_accuracy)
    SELECT n.supervisee_id, date_trunc('hour', n.fix_time, 'UTC'), count(*),
           count(*) FILTER (WHERE u.ok),
           coalesce(bit_or(1 << (extract(minute FROM n.fix_time AT TIME ZONE 'UTC')::int / 5))
                    FILTER (WHERE u.ok), 0),
           min(n.accuracy) FILTER (WHERE r.real_fix)
      FROM new_rows n
      LEFT JOIN lim ON lim.id = n.supervisee_id
     CROSS JOIN LATERAL (
           SELECT n.accuracy > 0 AND NOT n.mock AND n.provider IS DISTINCT FROM 'cell' AS real_fix) r
     CROSS JOIN LATERAL (
           SELECT r.real_fix AND n.accuracy <= coalesce(
               lim.lim, (SELECT lim FROM lv WHERE level = 'normal'), 200.0) AS ok) u
     GROUP BY 1, 2
     ORDER BY 1, 2
    ON CONFLICT (supervisee_id, hour) DO UPDATE
       SET fixes = h.fixes + excluded.fixes, usable = h.usable + excluded.usable,
           slots = h.slots | excluded.slots,
           best_accuracy = least(h.best_accuracy, excluded.best_accuracy);
    RETURN NULL;
END $$;
"""


def upgrade() -> None:
    op.execute(ADD_NEW_ROWS)


def downgrade() -> None:
    """Back to 0017's per-row profile lookup (its text, read from that migration's file)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "m0017", Path(__file__).with_name("0017_compliance_reports.py"))
    assert spec is not None and spec.loader is not None
    m0017 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m0017)
    op.execute("CREATE OR REPLACE FUNCTION position_hours_add() RETURNS trigger LANGUAGE plpgsql"
               " AS $$\nBEGIN\n" + m0017.ADD.format(rows="new_rows") + ";\n    RETURN NULL;\nEND $$;")
