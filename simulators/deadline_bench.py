"""Silence deadlines at national scale: `python -m simulators.deadline_bench` (make bench-deadlines).

Tracks 700,000 devices' three deadlines in Redis (as the ingest pipeline does), measures the
memory they take and the cost of moving them at 12,000 reports/s, then lets 2,000 real devices
(in a fresh database `ccs_dlbench`) fall silent over 20 s while the scheduler's check runs
every second, and reports how long after its deadline each silence became an alert.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import numpy as np
import psycopg
import redis

from alerts.silences import COMM, check_silences, record_activity
from store.db import migrate
from store.settings import get_settings

DB = "ccs_dlbench"
PREFIX = "ccs-dlbench:"


def main() -> None:
    """Run and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--devices", type=int, default=700_000)
    ap.add_argument("--silent", type=int, default=2_000)
    args = ap.parse_args()
    s = get_settings()
    r = redis.Redis.from_url(s.redis_url)
    for key in r.scan_iter(match=PREFIX + "*", count=10_000):
        r.delete(key)
    base_mem = int(r.info("memory")["used_memory"])

    # 1. Track every device: what the pipeline does after each batch, 2,000 devices a batch.
    now = time.time()
    ids = [f"dev{i:07d}" for i in range(args.devices)]
    started = time.perf_counter()
    for k in range(0, args.devices, 2000):
        chunk = ids[k:k + 2000]
        record_activity(r, PREFIX, {d: now for d in chunk}, {d: now for d in chunk},
                        {d: 1800.0 for d in chunk}, 3 * 3600.0)
    secs = time.perf_counter() - started
    mem = int(r.info("memory")["used_memory"]) - base_mem
    print(f"tracked {args.devices:,} devices x 3 deadlines in {secs:.1f} s "
          f"= {args.devices / secs:,.0f} device updates/s (batches of 2,000)")
    print(f"Redis memory for them: {mem / 2**20:,.1f} MiB ({mem / args.devices:,.0f} bytes a device)")

    # 2. The check with everything tracked and nothing due.
    admin = psycopg.connect(s.psycopg_dsn.rsplit("/", 1)[0] + "/postgres", autocommit=True)
    admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    admin.execute(f"CREATE DATABASE {DB}")
    url = s.database_url.rsplit("/", 1)[0] + f"/{DB}"
    migrate(url)
    conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)
    t = time.perf_counter()
    for _ in range(20):
        check_silences(conn, r, PREFIX, now=time.time())
    idle_ms = (time.perf_counter() - t) / 20 * 1000
    print(f"one check with {args.devices:,} tracked and none due: {idle_ms:.2f} ms")

    # 3. Real devices fall silent; the check runs every second, as the scheduler runs it.
    n = int(args.silent)
    conn.execute(f"""INSERT INTO org_units (kind, name, path) VALUES ('judicial_office', 'bench', '/1/');
                    INSERT INTO supervisees (office_id, full_name, case_number, supervision_type)
                    SELECT 1, 'p' || g, 'B-' || g, 'probation' FROM generate_series(1, {n}) g;
                    INSERT INTO devices (id, supervisee_id, secret_hash)
                    SELECT 'sil' || g, g, 'h' || g FROM generate_series(1, {n}) g;""")
    start = time.time() + 2
    deadlines = {f"sil{g}": start + 20 * (g - 1) / args.silent for g in range(1, args.silent + 1)}
    r.zadd(PREFIX + COMM, deadlines)
    stop = threading.Event()
    rounds: list[float] = []

    def loop() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            check_silences(conn, r, PREFIX)
            rounds.append(time.perf_counter() - t0)
            stop.wait(max(0.0, 1.0 - (time.perf_counter() - t0)))

    th = threading.Thread(target=loop)
    th.start()
    time.sleep(25)
    stop.set()
    th.join()
    rows = conn.execute("""SELECT d.id, extract(epoch FROM a.created) FROM devices d
                           JOIN LATERAL (SELECT updated_at AS created FROM alerts
                                          WHERE device_id = d.id) a ON true""").fetchall()
    delays = np.array([float(ts) - deadlines[d] for d, ts in rows])
    print(f"silences alerted: {len(rows):,} of {args.silent:,}")
    if len(delays):
        print(f"deadline -> alert committed: p50 {np.percentile(delays, 50):.2f} s, "
              f"p99 {np.percentile(delays, 99):.2f} s, max {delays.max():.2f} s "
              f"(the check runs once a second)")
    print(f"check rounds: {len(rounds)}, median {statistics.median(rounds) * 1000:.1f} ms, "
          f"max {max(rounds) * 1000:.1f} ms")
    for key in r.scan_iter(match=PREFIX + "*", count=10_000):
        r.delete(key)
    conn.close()
    admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")


if __name__ == "__main__":
    main()
