"""How long the whole city's month takes as a compliance report (issue 14: <= 10 s at 50 million
positions over 30 days).

    python -m simulators.report_bench                      # 50,000,000 positions, 5,000 people
    python -m simulators.report_bench --positions 5000000  # a tenth, for a quicker look

Builds a fresh database `ccs_report_bench` (the migrations; pg_partman has made the daily
partitions from 31 days back), a city of 13 district bureaus with `--offices` judicial offices
each and `--people` supervisees (20 % strict, 60 % normal, 20 % lenient, 10 % key persons, a
few enrolled or re-levelled during the month), then the month's positions with generate_series,
one INSERT per day through the real `positions` table and its triggers (the hourly summary
`position_hours` among them): each person reports at a steady interval, with an hour of silence
now and then and a few whole silent days, some fixes too inaccurate or cell-only. Alerts (some
0.3 per person and day, with acknowledgement times, escalations and silence spells),
roll-calls, location requests, permits and sanctions are added in bulk.

It then times the city's report for those 30 days `--runs` times as JSON (figures and
serialisation) and as PDF (figures and rendering), and prints p50 and p95 with the machine's
speed reference (the load bench's `_calibrate`). It also measures what the summary trigger
costs ingest: 2,000-row batches inserted as the ingest pipeline does, with the trigger off and
on. The database is left for inspection (`--drop` removes it).
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import psycopg
from sqlalchemy.engine import make_url

from simulators.bench import LOOPBACK, machine_facts

DB = "ccs_report_bench"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m simulators.report_bench",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--positions", type=int, default=50_000_000, help="over the 30 days")
    p.add_argument("--people", type=int, default=5000)
    p.add_argument("--offices", type=int, default=12, help="judicial offices per district")
    p.add_argument("--runs", type=int, default=5, help="timed reports of each format")
    p.add_argument("--drop", action="store_true", help="drop the database at the end")
    return p.parse_args(argv)


def dsns() -> tuple[str, str, str]:
    """(admin DSN, psycopg DSN, SQLAlchemy URL) of the bench database, loopback only."""
    from store.settings import Settings

    base = make_url(Settings().database_url)
    if (base.host or "") not in LOOPBACK:
        raise SystemExit(f"the bench only talks to 127.0.0.1; the database host is {base.host!r}")
    url = base.set(database=DB).render_as_string(hide_password=False)
    admin = base.set(database="postgres", drivername="postgresql").render_as_string(
        hide_password=False)
    return admin, url.replace("postgresql+psycopg://", "postgresql://", 1), url


_ORG = """
INSERT INTO org_units (id, kind, name, path) VALUES (1, 'city_bureau', '武汉市司法局', '/1/');
INSERT INTO org_units (id, parent_id, kind, name, path)
SELECT 1 + d, 1, 'district_bureau', n || '司法局', '/1/' || (1 + d) || '/'
  FROM unnest(CAST(%(districts)s AS text[])) WITH ORDINALITY AS x(n, d);
INSERT INTO org_units (id, parent_id, kind, name, path)
SELECT 100 + (d - 1) * %(offices)s + o, 1 + d, 'judicial_office', n || '第' || o || '司法所',
       '/1/' || (1 + d) || '/' || (100 + (d - 1) * %(offices)s + o) || '/'
  FROM unnest(CAST(%(districts)s AS text[])) WITH ORDINALITY AS x(n, d),
       generate_series(1, %(offices)s) o;
SELECT setval('org_units_id_seq', 10000);
INSERT INTO supervisees (id, office_id, full_name, case_number, supervision_type, level,
                         key_flags, created_at)
SELECT i, 101 + (i %% (13 * %(offices)s)), 'P' || i, 'B-' || i, 'probation',
       CASE WHEN i %% 5 = 0 THEN 'strict' WHEN i %% 5 = 1 THEN 'lenient' ELSE 'normal' END,
       CASE WHEN i %% 10 = 3 THEN '{drugs}'::text[] ELSE '{}' END,
       CASE WHEN i %% 50 = 7 THEN %(t0)s + (i %% 20) * interval '1 day' ELSE %(t0)s - interval '90 days' END
  FROM generate_series(1, %(people)s) i;
SELECT setval('supervisees_id_seq', %(people)s + 1);
INSERT INTO devices (id, supervisee_id, secret_hash)
SELECT 'b' || i, i, 'h' || i FROM generate_series(1, %(people)s) i;
INSERT INTO supervisee_changes (supervisee_id, at, field, old_value, new_value, reason)
SELECT i, %(t0)s + interval '15 days', 'level', '"normal"', '"strict"', 'bench'
  FROM generate_series(1, %(people)s) i WHERE i %% 100 = 42;
"""

# One day of fixes: each person every `step` seconds from an offset of their own; an hour of
# silence where (person + hour) %% 29 = 0, a silent day where (person + day) %% 97 = 0; every 37th
# fix 350 m (not usable), every 53rd cell-only.
_DAY = """
INSERT INTO positions (device_id, supervisee_id, fix_time, received_at, lon, lat, raw_lon, raw_lat,
                       crs, accuracy, provider, source)
SELECT 'b' || s.id, s.id, t, t, 114.3 + (s.id %% 100) * 0.001, 30.6, 114.3, 30.6, 'wgs84',
       CASE WHEN n %% 37 = 0 THEN 350 ELSE 5 + n %% 50 END,
       CASE WHEN n %% 53 = 0 THEN 'cell' ELSE 'gps' END, 'native'
  FROM generate_series(1, %(people)s) s(id),
       generate_series(%(day)s + (s.id %% 97) * interval '1 second',
                       %(day)s + interval '1 day' - interval '1 microsecond',
                       %(step)s * interval '1 second') WITH ORDINALITY AS g(t, n)
 WHERE (s.id + %(dayno)s) %% 97 <> 0
   AND (s.id + extract(epoch FROM t)::bigint / 3600) %% 29 <> 0
"""

_ACTIVITY = """
INSERT INTO alerts (kind, severity, supervisee_id, office_id, opened_at, first_fix_time,
                    acknowledged_at, escalation_level, status, resolved_at, cleared_at, suppressed,
                    disposition)
SELECT k.kind, k.sev, s.id, s.office_id, o.at, o.at,
       CASE WHEN g %% 11 <> 0 THEN o.at + ((g * 7919) %% 3600) * interval '1 second' END,
       CASE WHEN g %% 13 = 0 THEN 1 WHEN g %% 41 = 0 THEN 2 ELSE 0 END,
       'resolved', o.at + interval '2 hours',
       CASE WHEN k.kind IN ('communication_failure', 'location_failure', 'phone_off')
            THEN o.at + ((g * 104729) %% 36000) * interval '1 second' END,
       g %% 61 = 0, CASE WHEN g %% 17 = 0 THEN 'false_alarm' ELSE 'confirmed_violation' END
  FROM supervisees s, generate_series(1, 9) g,
       LATERAL (SELECT (ARRAY['area_exit','exclusion_entry','curfew_breach','overdue_return',
                              'communication_failure','location_failure','phone_off',
                              'missed_roll_call','suspected_spoofing'])[1 + (s.id + g) %% 9] AS kind,
                       (ARRAY['high','critical','high','high','medium','medium','high','medium',
                              'medium'])[1 + (s.id + g) %% 9] AS sev) k,
       LATERAL (SELECT %(t0)s + ((s.id * 31 + g * 2591) %% 2592000) * interval '1 second' AS at) o;
INSERT INTO alert_events (alert_id, at, action)
SELECT id, cleared_at, 'cleared' FROM alerts WHERE cleared_at IS NOT NULL AND id %% 2 = 0;
INSERT INTO roll_calls (supervisee_id, office_id, origin, plan_day, slot, scheduled_at, sent_at,
                        deadline, status, answered_at)
SELECT s.id, s.office_id, 'random', (%(t0)s + d * interval '1 day')::date, k,
       %(t0)s + d * interval '1 day' + (8 + 5 * k) * interval '1 hour',
       %(t0)s + d * interval '1 day' + (8 + 5 * k) * interval '1 hour',
       %(t0)s + d * interval '1 day' + (9 + 5 * k) * interval '1 hour',
       CASE WHEN (s.id + d) %% 10 = 0 THEN 'missed' ELSE 'answered' END,
       CASE WHEN (s.id + d) %% 10 <> 0
            THEN %(t0)s + d * interval '1 day' + (8 + 5 * k) * interval '1 hour' + interval '7 minutes' END
  FROM supervisees s, generate_series(0, 29) d, generate_series(1, 2) k;
INSERT INTO location_requests (device_id, supervisee_id, office_id, requested_at,
                               evidence_fix_time, rule, status, sent_at, deadline, answered_at)
SELECT 'b' || s.id, s.id, s.office_id, %(t0)s + d * interval '3 days', %(t0)s + d * interval '3 days',
       'confirm.area_exit', CASE WHEN d %% 3 = 0 THEN 'expired' ELSE 'answered' END,
       %(t0)s + d * interval '3 days', %(t0)s + d * interval '3 days' + interval '4 minutes',
       CASE WHEN d %% 3 <> 0 THEN %(t0)s + d * interval '3 days' + interval '1 minute' END
  FROM supervisees s, generate_series(0, 9) d;
INSERT INTO travel_permits (supervisee_id, office_id, reason, destination_zone_id, start_at, end_at,
                            status, required_tier, profile, created_at)
SELECT s.id, s.office_id, 'medical', %(zone)s, %(t0)s + interval '20 days', %(t0)s + interval '22 days',
       (ARRAY['approved','returned','rejected','revoked','requested'])[1 + s.id %% 5],
       (ARRAY['office','office','office','district','city'])[1 + (s.id / 5) %% 5], 'national-2020@2',
       %(t0)s + (s.id %% 28) * interval '1 day'
  FROM supervisees s;
INSERT INTO staff (id, org_unit_id, username, full_name, role, password_hash)
VALUES (1, 1, 'bench', 'bench', 'city_admin', 'x');
INSERT INTO sanctions (supervisee_id, kind, decided_by, decided_at, reason)
SELECT s.id, CASE WHEN s.id %% 3 = 0 THEN 'warning' ELSE 'reprimand' END, 1,
       %(t0)s + (s.id %% 28) * interval '1 day', 'bench'
  FROM supervisees s WHERE s.id %% 20 = 0;
"""

# Ingest's own statement (ingest/pipeline.py: COPY into a temporary table, then this).
_BATCH = """
INSERT INTO positions (device_id, supervisee_id, fix_time, received_at, lon, lat, raw_lon, raw_lat,
                       crs, accuracy, provider, source)
SELECT 'b' || p.id, p.id, %(at)s + x * interval '1 millisecond', %(at)s, 114.3, 30.6, 114.3,
       30.6, 'wgs84', 12, 'gps', 'native'
  FROM generate_series(%(first)s, %(first)s + 1999) x,
       LATERAL (SELECT 1 + x %% %(people)s AS id) p
ON CONFLICT DO NOTHING
"""


def script(conn: psycopg.Connection, sql: str, params: dict[str, Any]) -> None:
    """Several statements, one at a time (each with the parameters it names)."""
    for stmt in sql.split(";\n"):
        if stmt.strip():
            conn.execute(stmt, {k: v for k, v in params.items() if f"%({k})s" in stmt})


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (with 5 runs, p95 is the slowest)."""
    s = sorted(values)
    return s[max(0, min(len(s) - 1, round(q * len(s) + 0.5) - 1))]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from alerts.report_docs import to_pdf
    from alerts.reports import compliance
    from store.db import migrate
    from store.demo import load_regions

    admin, dsn, url = dsns()
    print(f"setup: fresh database {DB}", flush=True)
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {DB}")
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS postgis")
    migrate(url)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    t0, t1 = today - timedelta(days=30), today
    names = [f["properties"]["name"] for f in load_regions()["features"]][:13]
    # The silent hours and days below drop about 4.4 % of the fixes: ask for that many more.
    per_person_day = args.positions / args.people / 30 / (96 / 97 * 28 / 29)
    step = max(1, round(86400 / per_person_day))
    facts: list[tuple[str, str]] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        script(conn, _ORG, {"districts": names, "offices": args.offices, "people": args.people,
                            "t0": t0})
        zone = conn.execute(
            """INSERT INTO zones (kind, name, owner_unit_id, crs, source_geojson, geom)
               VALUES ('destination', 'd', 1, 'wgs84', '{}',
                       ST_Multi(ST_Buffer(ST_SetSRID(ST_MakePoint(116.4, 39.9), 4326), 0.1)))
               RETURNING id""").fetchone()
        started = time.perf_counter()
        for d in range(30):
            day = t0 + timedelta(days=d)
            conn.execute(_DAY, {"people": args.people, "day": day, "dayno": d, "step": step})
            done = time.perf_counter() - started
            print(f"  positions: day {d + 1}/30 loaded ({done:.0f} s)", flush=True)
        load_s = time.perf_counter() - started
        script(conn, _ACTIVITY, {"t0": t0, "zone": zone[0] if zone else None})
        conn.execute("VACUUM ANALYZE")
        counts = conn.execute("""SELECT (SELECT count(*) FROM positions WHERE fix_time >= %(a)s
                                            AND fix_time < %(b)s),
                                        (SELECT count(*) FROM position_hours),
                                        (SELECT count(*) FROM alerts),
                                        (SELECT count(*) FROM roll_calls),
                                        pg_size_pretty((SELECT sum(pg_total_relation_size(inhrelid))
                                                          FROM pg_inherits
                                                         WHERE inhparent = 'positions'::regclass)),
                                        pg_size_pretty(pg_total_relation_size('position_hours'))""",
                              {"a": t0, "b": t1}).fetchone()
        assert counts is not None
        facts += [("positions in the month", f"{counts[0]:,} ({counts[4]} with indexes)"),
                  ("position_hours rows", f"{counts[1]:,} ({counts[5]})"),
                  ("people / offices", f"{args.people:,} / {13 * args.offices}"),
                  ("alerts / roll-calls", f"{counts[2]:,} / {counts[3]:,}"),
                  ("loading the positions", f"{load_s:.0f} s, {counts[0] / load_s:,.0f} rows/s "
                                            "through the table's indexes and triggers")]
        facts += trigger_cost(conn, today, args.people)

        tz = ZoneInfo("Asia/Shanghai")
        json_s: list[float] = []
        pdf_s: list[float] = []
        report: dict[str, Any] = {}
        pdf = b""
        for _ in range(args.runs):
            t = time.perf_counter()
            report = compliance(conn, 1, t0, t1)
            orjson.dumps(report)
            json_s.append(time.perf_counter() - t)
        for _ in range(args.runs):
            t = time.perf_counter()
            pdf = to_pdf(compliance(conn, 1, t0, t1), tz)
            pdf_s.append(time.perf_counter() - t)
    total = report["total"]
    print(f"\nCCS compliance report bench, {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC")
    for k, v in [*machine_facts(), *facts]:
        print(f"  {k:<24} {v}")
    print(f"  {'report':<24} city, {t0:%Y-%m-%d} .. {t1:%Y-%m-%d}: coverage "
          f"{total['coverage']['rate']}, {total['alerts']['total']:,} alerts, "
          f"ack p50/p90 {total['acknowledgement']['p50_s']}/{total['acknowledgement']['p90_s']} s, "
          f"PDF {len(pdf) / 1024:.0f} KiB")
    for name, xs in (("JSON", json_s), ("PDF", pdf_s)):
        print(f"  {name + ' (s)':<24} p50 {statistics.median(xs):.2f}  p95 {pct(xs, 0.95):.2f}  "
              f"runs {', '.join(f'{x:.2f}' for x in xs)}")
    if args.drop:
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    return 0


def trigger_cost(conn: psycopg.Connection, today: datetime, people: int
                 ) -> list[tuple[str, str]]:
    """Mean time of ingest-shaped 2,000-row inserts with the summary trigger off, then on."""
    out = []
    for state, day in (("DISABLE", 1), ("ENABLE", 2)):
        conn.execute(f"ALTER TABLE positions {state} TRIGGER positions_hours")
        times = []
        for i in range(100):
            at = today + timedelta(days=day, seconds=60 * i)
            t = time.perf_counter()
            with conn.transaction():
                conn.execute(_BATCH, {"at": at, "first": 1 + (i % 2) * 2000, "people": people})
            times.append(time.perf_counter() - t)
        out.append((f"2,000-row insert, {'no ' if state == 'DISABLE' else ''}summary",
                    f"mean {statistics.mean(times) * 1000:.1f} ms, "
                    f"p50 {statistics.median(times) * 1000:.1f} ms (100 batches)"))
    conn.execute("ALTER TABLE positions ENABLE TRIGGER positions_hours")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
