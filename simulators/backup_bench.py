"""Restore drill at scale: `python -m simulators.backup_bench` (issue 15's backup target).

On a private PostgreSQL cluster (initdb in `--dir`, a free loopback port) that archives its WAL
with `store.backup archive-wal` as production does: the project's schema by the migrations,
Wuhan's demo organisation and `--positions` (10 million) positions filled as
simulators/records_bench.py fills them (INSERT ... SELECT generate_series, one day at a time,
GiST indexes on the finished days), plus audit rows. Then a base backup (pg_basebackup,
pg_verifybackup), a little more written after it (fixes and audit rows: the newest of them is
the last committed fix the restore must bring back), and the drill, timed step by step:
verify the base backup, copy it into a new cluster, replay the WAL archive and promote, verify
the audit chain, count the positions. Target: restored and verified in ≤ 10 minutes.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from simulators.bench import _calibrate
from simulators.records_bench import DB, fill
from store import backup

TARGET_S = 600
# The private cluster: room for a bulk fill (the server is this bench's alone).
PRIMARY_SETTINGS = {"shared_buffers": "'1GB'", "max_wal_size": "'8GB'",
                    "checkpoint_timeout": "'30min'", "maintenance_work_mem": "'512MB'",
                    "max_connections": "50"}


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def after_backup(dsn: str, fixes: int, audit_rows: int) -> datetime:
    """Fixes for today and audit rows committed after the base backup: only the WAL archive
    has them. Returns the newest fix time (the last committed fix)."""
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        row = conn.execute("""
            INSERT INTO positions (device_id, supervisee_id, fix_time, received_at, lon, lat,
                                   raw_lon, raw_lat, crs, accuracy, source)
            SELECT 'after-backup-' || (g %% 100), s.id, now() - g * interval '10 ms', now(),
                   114.3, 30.6, 114.3, 30.6, 'wgs84', 10, 'native_mqtt'
              FROM generate_series(0, %s - 1) g,
                   LATERAL (SELECT min(id) AS id FROM supervisees) s
            RETURNING fix_time""", (fixes,)).fetchall()
        conn.execute("""INSERT INTO audit_log (action, target, purpose, detail)
                        SELECT 'position.read', 'supervisee:' || g, 'backup bench', '{}'
                          FROM generate_series(1, %s) g""", (audit_rows,))
    return max(r[0] for r in row)


def _base(root: Path, cluster: backup.Cluster) -> None:
    t = time.monotonic()
    meta = backup.base_backup(root, cluster.dsn())
    print(f"base backup {meta.label}: {_gib(meta.bytes)}, {meta.seconds} "
          f"({time.monotonic() - t:.0f} s)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--positions", type=int, default=10_000_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--per-day", type=int, default=167, help="fixes per person and day")
    ap.add_argument("--audit-rows", type=int, default=50_000, help="in the base backup")
    ap.add_argument("--dir", type=Path, default=Path("/var/tmp"),
                    help="where the cluster, the backups and the copy go (default %(default)s)")
    ap.add_argument("--keep", action="store_true", help="leave everything in place")
    ap.add_argument("--backup-before-fill", action="store_true",
                    help="take the base backup of the empty cluster: the drill then replays the "
                         "whole fill from the WAL archive (the worst case: days of WAL)")
    args = ap.parse_args(argv)
    people = max(1, round(args.positions / (args.days * args.per_day)))
    started = datetime.now(UTC)
    print(f"speed reference: a pure-Python loop of 10 million additions took {_calibrate():.2f} s")
    top = Path(tempfile.mkdtemp(prefix="ccs-backup-bench-", dir=args.dir))
    top.chmod(0o755)
    root = top / "backup"
    backup.ensure_layout(root)
    cluster = backup.Cluster.under(top, "primary")
    cluster.initdb({**PRIMARY_SETTINGS, "archive_mode": "on",
                    "archive_command": f"'{backup.wal_command('archive-wal', root / 'wal')}'"})
    try:
        cluster.start(120)
        dsn = cluster.dsn(DB)
        print(f"private cluster on port {cluster.port} in {top}, archiving to {root / 'wal'}")
        if args.backup_before_fill:
            _base(root, cluster)
        print(f"filling ~{people:,} people (rounded up to whole offices) x {args.days} days "
              f"x {args.per_day} fixes = ~{people * args.days * args.per_day:,} positions")
        t = time.monotonic()
        fill(cluster.dsn(), dsn, cluster.url(DB), people, args.days, args.per_day)
        with psycopg.connect(dsn, autocommit=True) as conn:
            # 1,000 rows a transaction, as the API writes them (a few per request): the chain
            # head is one row updated per audit row at commit, and one transaction updating it
            # 100,000 times walks ever longer version chains.
            for k in range(0, args.audit_rows, 1000):
                conn.execute("""INSERT INTO audit_log (action, target, purpose, detail)
                                SELECT 'position.read', 'supervisee:' || g, 'backup bench',
                                       jsonb_build_object('k', g)
                                  FROM generate_series(%s::int, %s::int) g""",
                             (k + 1, min(k + 1000, args.audit_rows)))
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        print(f"filled in {time.monotonic() - t:.0f} s; database {_gib(size[0] if size else 0)}")
        if not args.backup_before_fill:
            _base(root, cluster)
        last_fix = after_backup(dsn, 10_000, 500)
        print(f"after the base backup: 10,000 fixes and 500 audit rows, the last fix at "
              f"{last_fix.isoformat()}")
        report = backup.drill(root, DB, dsn, workdir=top)
        print(report.text())
        wal = sorted(p for p in (root / "wal").iterdir() if not p.name.startswith("."))
        print(f"WAL archive: {len(wal)} files, {_gib(sum(p.stat().st_size for p in wal))}")
        restore_s = report.seconds["total"] - report.seconds.get(
            "switch WAL and wait for the archive", 0)
        newest = report.restored.get("newest_fix")
        found = newest is not None and datetime.fromisoformat(newest) == last_fix
        print(f"restore drill on {report.restored.get('positions', 0):,} positions: restored and "
              f"verified in {restore_s:.1f} s (target ≤ {TARGET_S} s: "
              f"{'met' if report.ok and restore_s <= TARGET_S else 'NOT met'}); the last "
              f"committed fix {'is' if found else 'is NOT'} in the copy")
        print(f"run {started:%Y-%m-%d %H:%M}–{datetime.now(UTC):%H:%M} UTC")
    finally:
        cluster.stop("fast")
        if not args.keep:
            shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
