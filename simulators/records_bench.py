"""Records at scale: `python -m simulators.records_bench` (issue 14's targets).

Fills a fresh `ccs_records` database with a city's month of positions (default 10,000 people ×
30 days × 167 fixes a day ≈ 50 million, one every ~8.6 minutes around each person's home), then
measures through the real API (in-process, every answer audited as in production):

- the investigation "who was within 500 m of this place in these 2 hours" for the whole city;
- "everyone's last position" for a district (the duty map's read);
- a partition of 1.7 million rows retired (archived, verified, detached, dropped) while an
  ingest-like writer inserts 500-row batches into today's partition: the writer's batch times
  before and during, i.e. how long retiring blocked ingest.

The fill uses plain SQL (INSERT ... SELECT generate_series per day); GiST indexes are built for
every finished day at once (the scheduler builds one per 15-minute run in production).
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from simulators.bench import _calibrate, bench_env

DB = "ccs_records"
_FILL = """
INSERT INTO positions (device_id, supervisee_id, fix_time, received_at, lon, lat, raw_lon,
                       raw_lat, crs, accuracy, provider, source, membership)
SELECT 'rec-' || h.sid, h.sid, t, t + interval '2 seconds', x, y, x, y, 'wgs84',
       5 + (k %% 40), CASE WHEN k %% 9 = 0 THEN 'network' ELSE 'gps' END, 'native_mqtt', 'inside'
  FROM homes h
 CROSS JOIN generate_series(0, %(n)s - 1) k
 CROSS JOIN LATERAL (
     SELECT %(day)s::timestamptz + (k * %(step)s + h.sid %% 97) * interval '1 second' AS t,
            h.lon + 0.004 * sin(k / 7.0 + h.sid) + 0.0004 * ((k * 7919 + h.sid) %% 11 - 5) AS x,
            h.lat + 0.004 * cos(k / 9.0 + h.sid) + 0.0004 * ((k * 104729 + h.sid) %% 13 - 6)
              AS y) v
"""


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.array(xs), q))


def fill(dsn_admin: str, dsn: str, url: str, people: int, days: int, per_day: int) -> None:
    from store.db import migrate, reset_engine, session_factory
    from store.demo import seed_demo
    from store.settings import Settings, set_settings

    with psycopg.connect(dsn_admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
    set_settings(Settings(database_url=url, redis_prefix="ccs-records:"))
    reset_engine()
    migrate(url)
    with session_factory()() as session:
        seed_demo(session, supervisees_per_office=-(-people // 13))
        session.commit()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET maintenance_work_mem = '512MB'")
        conn.execute("""CREATE UNLOGGED TABLE homes AS
            SELECT s.id AS sid, ST_X(p) + (random() - 0.5) * 0.02 AS lon,
                   ST_Y(p) + (random() - 0.5) * 0.02 AS lat
              FROM supervisees s JOIN zones z ON z.id = s.home_zone_id
             CROSS JOIN LATERAL ST_PointOnSurface(z.geom) p""")
        conn.execute("ALTER TABLE positions DISABLE TRIGGER positions_last")
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        step = 86400 // per_day
        t0 = time.monotonic()
        for d in range(days, 0, -1):
            day = today - timedelta(days=d)
            conn.execute(_FILL, {"n": per_day, "day": day, "step": step})
            print(f"  {day:%Y-%m-%d} filled ({time.monotonic() - t0:.0f} s)", flush=True)
        conn.execute("ALTER TABLE positions ENABLE TRIGGER positions_last")
        conn.execute("""INSERT INTO last_positions
            SELECT s.id, p.device_id, p.fix_time, p.received_at, p.lon, p.lat, p.accuracy,
                   p.provider, p.source, p.membership
              FROM supervisees s CROSS JOIN LATERAL (
                   SELECT * FROM positions p WHERE p.supervisee_id = s.id
                    ORDER BY p.fix_time DESC LIMIT 1) p""")
        from store import partitions
        for name, pday in partitions.partitions(conn):
            if pday < today.date():
                conn.execute(f"CREATE INDEX IF NOT EXISTS {name}_geom ON {name} USING gist (geom)")
        conn.execute("VACUUM ANALYZE positions")
        n = conn.execute("SELECT count(*) FROM positions").fetchone()
        print(f"  {n[0] if n else 0:,} positions, indexes and statistics in "
              f"{time.monotonic() - t0:.0f} s", flush=True)


def _client(url: str) -> Any:
    from fastapi.testclient import TestClient

    from api.app import create_app
    from store.db import reset_engine
    from store.settings import Settings, set_settings

    set_settings(Settings(database_url=url, redis_prefix="ccs-records:"))
    reset_engine()
    return TestClient(create_app())


def _login(client: Any, dsn: str, username: str) -> dict[str, str]:
    from api.security import hash_password

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE staff SET password_hash = %s, failed_logins = 0, locked_until = NULL "
                     "WHERE username = %s", (hash_password("records bench password"), username))
    r = client.post("/api/v1/auth/token", data={"username": username,
                                                "password": "records bench password"})
    r.raise_for_status()
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def measure_reads(url: str, dsn: str, days: int, runs: int) -> None:
    client = _client(url)
    admin = _login(client, dsn, "admin")
    district = _login(client, dsn, "jiangan-supervisor")
    with psycopg.connect(dsn) as conn:
        homes = conn.execute("SELECT lon, lat FROM homes").fetchall()
    rng = random.Random(1)
    now = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    times, found = [], []
    for k in range(runs + 3):
        lon, lat = homes[rng.randrange(len(homes))]
        start = now - timedelta(days=rng.uniform(1, days), hours=0)
        body = {"place": {"lon": lon, "lat": lat, "crs": "wgs84"}, "radius_m": 500,
                "from": start.isoformat(), "to": (start + timedelta(hours=2)).isoformat(),
                "purpose": "records benchmark"}
        t = time.perf_counter()
        r = client.post("/api/v1/investigations/proximity", json=body, headers=admin)
        dt = time.perf_counter() - t
        r.raise_for_status()
        if k >= 3:  # the first calls warm the caches and the plan
            times.append(dt * 1000)
            found.append(len(r.json()["people"]))
    print(f"investigation, city, R=500 m, 2 h window: p50 {_pct(times, 50):.0f} ms, "
          f"p95 {_pct(times, 95):.0f} ms, max {max(times):.0f} ms (n={len(times)}, "
          f"{np.mean(found):.0f} people found on average)")
    last = []
    for k in range(runs + 3):
        t = time.perf_counter()
        r = client.get("/api/v1/duty", params={"purpose": "records benchmark"}, headers=district)
        dt = time.perf_counter() - t
        r.raise_for_status()
        if k >= 3:
            last.append(dt * 1000)
    n = len(r.json()["supervisees"])
    with psycopg.connect(dsn) as conn:
        sql_ms = []
        units = conn.execute("SELECT array_agg(id) FROM org_units WHERE path LIKE ("
                             "SELECT path FROM org_units WHERE name = '江岸区司法局') || '%'"
                             ).fetchone()
        for _ in range(runs):
            t = time.perf_counter()
            conn.execute("""SELECT p.* FROM last_positions p JOIN supervisees s
                              ON s.id = p.supervisee_id WHERE s.office_id = ANY(%s)""",
                         (units[0] if units else [],)).fetchall()
            sql_ms.append((time.perf_counter() - t) * 1000)
    print(f"everyone's last position, one district ({n:,} people): the duty map's whole read "
          f"(people, zones, alerts, audit row, JSON) p50 {_pct(last, 50):.0f} ms, "
          f"p95 {_pct(last, 95):.0f} ms; the last-position query alone p50 "
          f"{_pct(sql_ms, 50):.1f} ms, p95 {_pct(sql_ms, 95):.1f} ms")


def measure_retire(url: str, dsn: str, per_day: int, seconds: float) -> None:
    from store import partitions
    from store.settings import Settings

    settings = Settings(database_url=url, redis_prefix="ccs-records:",
                        positions_archive_dir=str(Path(".run/records-archive").resolve()))
    now = datetime.now(UTC)
    old = (now - timedelta(days=365.25 * (settings.retention_positions_years + 1))).date()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute("SELECT partman.create_partition_time('public.positions', "
                     "ARRAY[%s::timestamptz], false)",
                     (datetime.combine(old, datetime.min.time(), UTC),))
        conn.execute("ALTER TABLE positions DISABLE TRIGGER positions_last")
        conn.execute(_FILL, {"n": per_day, "day": datetime.combine(old, datetime.min.time(), UTC),
                             "step": 86400 // per_day})
        conn.execute("ALTER TABLE positions ENABLE TRIGGER positions_last")
        # Everyone of that day finished long ago (this bench's people are otherwise current:
        # only this partition is past retention).
        conn.execute("UPDATE supervisees SET active = false")
        conn.execute(f"ANALYZE positions_p{old:%Y_%m_%d}")
    lat: list[tuple[float, float]] = []
    stop = threading.Event()

    def writer() -> None:
        k = 0
        with psycopg.connect(dsn, autocommit=True) as w:
            while not stop.is_set():
                t = time.perf_counter()
                with w.transaction():
                    w.execute("""INSERT INTO positions (device_id, supervisee_id, fix_time,
                                   received_at, lon, lat, raw_lon, raw_lat, crs, accuracy, source)
                                 SELECT 'writer-' || (g %% 500), 1, now() - g * interval '1 ms'
                                        - %s * interval '1 s', now(), 114.3, 30.6, 114.3, 30.6,
                                        'wgs84', 10, 'native_mqtt'
                                   FROM generate_series(1, 500) g""", (k,))
                lat.append((time.monotonic(), (time.perf_counter() - t) * 1000))
                k += 1
                time.sleep(0.02)

    th = threading.Thread(target=writer, daemon=True)
    th.start()
    time.sleep(seconds)
    with psycopg.connect(dsn, autocommit=True) as conn:
        began = time.monotonic()
        report = partitions.retire(conn, settings, now)
        ended = time.monotonic()
    time.sleep(2)
    stop.set()
    th.join(10)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE supervisees SET active = true")
    before = [ms for at, ms in lat if at < began]
    during = [ms for at, ms in lat if began <= at <= ended + 0.5]
    # The batches that ended during the lock step (DETACH + DROP: the last detach_ms of it).
    lock_from = ended - sum(report.detach_ms) / 1000 - 0.05
    locked = [ms for at, ms in lat if lock_from <= at <= ended + 0.5] or [0.0]
    print(f"retiring {report.archived} (a day of {per_day} fixes per person, archived to "
          f"{settings.positions_archive_dir}) took {ended - began:.1f} s, "
          f"{report.lock_waits} lock wait(s)")
    print(f"ingest-like writer, 500-row batches: before p50 {_pct(before, 50):.1f} ms, "
          f"p99 {_pct(before, 99):.1f} ms, max {max(before):.1f} ms (n={len(before)}); "
          f"while retiring p50 {_pct(during, 50):.1f} ms, p99 {_pct(during, 99):.1f} ms, "
          f"max {max(during):.1f} ms (n={len(during)}); around the detach and drop "
          f"({', '.join(f'{x:.0f} ms' for x in report.detach_ms)}): max {max(locked):.1f} ms "
          f"(n={len(locked)})")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--people", type=int, default=10_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--per-day", type=int, default=167, help="fixes per person and day")
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--skip-fill", action="store_true", help="measure the database filled before")
    args = ap.parse_args(argv)
    env = bench_env()
    dsn = env.dsn.rsplit("/", 1)[0] + f"/{DB}"
    url = env.url.rsplit("/", 1)[0] + f"/{DB}"
    print(f"speed reference: 10 million Python additions in {_calibrate():.2f} s")
    if not args.skip_fill:
        print(f"filling {args.people:,} people x {args.days} days x {args.per_day} fixes "
              f"= {args.people * args.days * args.per_day:,} positions")
        fill(env.admin_dsn, dsn, url, args.people, args.days, args.per_day)
    measure_reads(url, dsn, args.days, args.runs)
    measure_retire(url, dsn, args.per_day, 10.0)


if __name__ == "__main__":
    main()
