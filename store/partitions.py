"""The positions table's life: partitions made ahead, late rows put in their day, spatial
indexes for finished days, and old days archived, verified and dropped.

Run by the scheduler's leader (`alerts/scheduler.py`, job `positions`) and by hand:

    python -m store.partitions maintain          # what the scheduler runs
    python -m store.partitions list              # the archives made so far
    python -m store.partitions restore FILE      # a retired day back into `positions`

Partitions are daily (UTC days) and made by pg_partman (`partman.run_maintenance`, premake
`positions_premake_days`). Every statement that locks the parent table runs under
`lock_timeout` (`positions_lock_timeout_ms`, 100 ms): if ingest holds the table, the step gives
up and is tried again at once or at the next run, so ingest never waits behind it longer than
that; nothing here queues for minutes in front of ingest's inserts.

**Retention.** A person's positions are kept while they are supervised and for
`retention_positions_years` after the supervision ends (the same rule as alert history, see
`alerts/retention.py`). A daily partition holds everyone's fixes of that day, so it is retired
only when it is older than that and every person with a fix in it ended their supervision
more than that long ago. Retiring archives the partition first: its rows as gzip-compressed
CSV (`positions_archive_dir`), a manifest beside it with the SHA-256 of the file, the row count
and the day; the file is read back and checked before anything is dropped; the archive is
recorded in `position_archives` and in the audit log; then the partition is detached and
dropped. `restore` puts such a file back as its day's partition, after checking its checksum.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from store.settings import Settings

log = logging.getLogger("store.partitions")

PARENT = "public.positions"
DEFAULT = "positions_default"
# The columns an archive holds, in order (geom is generated from lon/lat).
COLUMNS = ("device_id", "supervisee_id", "fix_time", "received_at", "lon", "lat", "raw_lon",
           "raw_lat", "crs", "accuracy", "altitude", "speed", "heading", "battery", "provider",
           "source", "mock", "seq", "late", "membership")
_LOCK_RETRIES = 5


@dataclass
class Report:
    """What one maintenance run did."""

    created: list[str] = field(default_factory=list)
    moved_from_default: int = 0
    indexed: list[str] = field(default_factory=list)
    archived: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # old enough, but someone's retention runs
    lock_waits: int = 0  # steps that gave up on a lock and were tried again
    detach_ms: list[float] = field(default_factory=list)  # each DETACH + DROP, lock wait included
    yielded_s: float = 0.0  # archive paused while ingest was saturated (`busy`)


def partitions(conn: psycopg.Connection) -> list[tuple[str, date]]:
    """The daily partitions (name, day), oldest first."""
    rows = conn.execute(
        """SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = 'public.positions'::regclass
              AND c.relname ~ '^positions_p[0-9]{4}_[0-9]{2}_[0-9]{2}$'""").fetchall()
    out = [(r[0], datetime.strptime(r[0][11:], "%Y_%m_%d").date()) for r in rows]
    return sorted(out, key=lambda x: x[1])


def _session(conn: psycopg.Connection, settings: Settings) -> None:
    conn.execute("SET TIME ZONE 'UTC'")
    conn.execute(sql.SQL("SET lock_timeout = {}").format(
        sql.Literal(f"{int(settings.positions_lock_timeout_ms)}ms")))


def _locked(conn: psycopg.Connection, report: Report, step: str, stmt: Any,
            params: Any = None) -> Any:
    """Run a statement that locks the parent; on a lock timeout, try again a few times."""
    for attempt in range(_LOCK_RETRIES):
        try:
            with conn.transaction():
                cur = conn.execute(stmt, params)
                return cur.fetchall() if cur.description is not None else []
        except psycopg.errors.LockNotAvailable:
            report.lock_waits += 1
            log.info("%s: positions is busy (lock wait > lock_timeout); try %d", step, attempt + 1)
            time.sleep(0.2 * (attempt + 1))
    raise TimeoutError(f"{step}: positions stayed busy; the next run tries again")


def maintain(conn: psycopg.Connection, settings: Settings, now: datetime | None = None,
             archive: bool = True, busy: Callable[[], bool] | None = None) -> Report:
    """One maintenance run (an autocommit connection): partitions ahead, rows from the default
    partition to their day, a spatial index for one finished day, retention (its archive
    pausing while `busy()` says ingest is saturated)."""
    report = Report()
    now = now or datetime.now(UTC)
    _session(conn, settings)
    before = {p for p, _ in partitions(conn)}
    conn.execute("UPDATE partman.part_config SET premake = %s WHERE parent_table = %s "
                 "AND premake <> %s", (settings.positions_premake_days, PARENT,
                                       settings.positions_premake_days))
    _locked(conn, report, "premake",
            "SELECT partman.run_maintenance(%s, p_analyze := false, p_jobmon := false)",
            (PARENT,))
    stray = conn.execute(f"SELECT count(*) FROM {DEFAULT}").fetchone()
    if stray and stray[0]:
        moved = _locked(conn, report, "default",
                        "SELECT partman.partition_data_time(%s, p_batch_count := 31, "
                        "p_lock_wait := 0.1, p_analyze := false, "
                        "p_ignored_columns := ARRAY['geom'])", (PARENT,))  # generated
        report.moved_from_default = int(moved[0][0] or 0)
    report.created = sorted({p for p, _ in partitions(conn)} - before)
    _index_one_finished_day(conn, now, report)
    if archive:
        retire(conn, settings, now, report, busy)
    if report.created or report.moved_from_default or report.indexed or report.archived:
        log.info("positions maintenance: %s", report)
    return report


def _index_one_finished_day(conn: psycopg.Connection, now: datetime, report: Report) -> None:
    """A GiST index on `geom` for the newest finished day without one: built CONCURRENTLY on
    that partition alone (ingest goes on writing meanwhile); today's partition has none, so
    inserts pay nothing for it, and time-window queries of today use the BRIN index."""
    have = {r[0] for r in conn.execute(
        "SELECT tablename FROM pg_indexes WHERE schemaname = 'public' AND indexname ~ '_geom$'")}
    today = now.date()
    for name, day in reversed(partitions(conn)):
        if day < today and name not in have:
            conn.execute(sql.SQL("CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON {} USING gist "
                                 "(geom)").format(sql.Identifier(f"{name}_geom"),
                                                  sql.Identifier(name)))
            report.indexed.append(name)
            return


def _still_kept(conn: psycopg.Connection, name: str, cutoff: datetime) -> int:
    """How many people with a fix in this partition are supervised, or ended less than the
    retention ago (their last change of record after `cutoff`)."""
    row = conn.execute(sql.SQL(
        """SELECT count(*) FROM (SELECT DISTINCT supervisee_id FROM {}) p
             JOIN supervisees s ON s.id = p.supervisee_id
            WHERE s.active OR EXISTS (SELECT 1 FROM supervisee_changes c
                                       WHERE c.supervisee_id = s.id AND c.at >= %s)""").format(
        sql.Identifier(name)), (cutoff,)).fetchone()
    return int(row[0]) if row else 0


def retire(conn: psycopg.Connection, settings: Settings, now: datetime,
           report: Report | None = None, busy: Callable[[], bool] | None = None) -> Report:
    """Archive and drop the partitions past retention (at most `positions_retire_per_run`)."""
    report = report or Report()
    _session(conn, settings)
    cutoff = now - timedelta(days=365.25 * settings.retention_positions_years)
    restored = {r[0] for r in conn.execute(
        "SELECT day FROM position_archives WHERE restored_at > %s",
        (now - timedelta(days=settings.positions_restored_keep_days),))}
    done = 0
    for name, day in partitions(conn):
        if done >= settings.positions_retire_per_run:
            break
        if datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC) > cutoff:
            break  # oldest first: the rest are younger still
        if day in restored:
            continue
        if _still_kept(conn, name, cutoff):
            report.kept.append(name)
            continue
        rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(name))).fetchone()
        made = conn.execute("SELECT path FROM position_archives WHERE partition = %s AND "
                            "dropped_at IS NULL AND rows = %s", (name, rows[0] if rows else -1)
                            ).fetchone()
        if made is None or not Path(made[0]).exists():  # else: archived, the drop had waited
            archive_partition(conn, settings, name, day, busy, report)
        began = time.perf_counter()
        _locked(conn, report, "detach", sql.SQL("ALTER TABLE positions DETACH PARTITION {}")
                .format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
        report.detach_ms.append((time.perf_counter() - began) * 1000)
        # The hourly summary of the day's fixes (migration 0017: per person and hour) is personal
        # data derived from them and goes with them (monthly reports already made keep their
        # figures; a restore rebuilds the day's summary).
        conn.execute("DELETE FROM position_hours WHERE hour >= %s AND hour < %s",
                     (datetime.combine(day, datetime.min.time(), UTC),
                      datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC)))
        conn.execute("UPDATE position_archives SET dropped_at = now() WHERE partition = %s "
                     "AND dropped_at IS NULL", (name,))
        report.archived.append(name)
        done += 1
    return report


def _audit(conn: psycopg.Connection, action: str, target: str, **detail: Any) -> None:
    conn.execute("INSERT INTO audit_log (action, target, purpose, detail) "
                 "VALUES (%s, %s, 'retention', %s)", (action, target, json.dumps(detail)))


def _rows(conn: psycopg.Connection, name: str) -> Iterator[bytes]:
    # In the table's order (about arrival order), unsorted: sorting a day of a city's fixes would
    # run in PostgreSQL at full speed before the first row came out, beyond the archive's pace;
    # unsorted, the server formats rows only as fast as the paced reader takes them.
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in COLUMNS)
    with conn.cursor() as cur, cur.copy(sql.SQL(
            "COPY (SELECT {} FROM {}) TO STDOUT (FORMAT csv, HEADER)").format(
                cols, sql.Identifier(name))) as cp:
        yield from (bytes(b) for b in cp)


def _digest(path: Path) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def archive_partition(conn: psycopg.Connection, settings: Settings, name: str,
                      day: date, busy: Callable[[], bool] | None = None,
                      report: Report | None = None) -> Path:
    """Write one partition to `<archive dir>/<name>.csv.gz` with its manifest, read it back to
    check it, and record it (position_archives, audit log). Returns the file.

    While `busy()` (checked twice a second) says an ingest worker is saturated, the archive
    pauses, up to `positions_archive_max_yield_s` in all: a day's archive has all night, fixes
    arriving have not (a paused COPY holds a snapshot, hence the bound)."""
    folder = Path(settings.positions_archive_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.csv.gz"
    tmp = path.with_suffix(".gz.part")
    # Level 5: a third of level 9's CPU for a few per cent more bytes (the archive is written
    # while ingest runs on the same cores).
    # Paced (positions_archive_rows_per_s): the COPY and the compression share the cores with
    # ingest, and a day's archive has all night; the server side follows (COPY waits for us).
    rate = settings.positions_archive_rows_per_s
    began, written, yielded, checked = time.monotonic(), 0, 0.0, 0.0
    with tmp.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0,
                                              compresslevel=5) as gz:
        for chunk in _rows(conn, name):
            gz.write(chunk)
            written += chunk.count(b"\n")
            if rate and (ahead := written / rate - (time.monotonic() - began - yielded)) > 0.05:
                time.sleep(ahead)
            if busy is not None and time.monotonic() - checked >= 0.5:
                while yielded < settings.positions_archive_max_yield_s and busy():
                    time.sleep(0.5)
                    yielded += 0.5
                checked = time.monotonic()
    if yielded:
        log.info("archive of %s gave way to ingest for %.0f s", name, yielded)
        if report is not None:
            report.yielded_s += yielded
    stats = conn.execute(sql.SQL("SELECT count(*), min(fix_time), max(fix_time) FROM {}").format(
        sql.Identifier(name))).fetchone()
    assert stats is not None
    rows, first, last = int(stats[0]), stats[1], stats[2]
    # Read back: the file decompresses and parses, and holds every row (a header, then one
    # record per row; a quoted field may hold a line break, so records are counted, not lines).
    with gzip.open(tmp, "rt", encoding="utf-8", newline="") as f:
        records = sum(1 for _ in csv.reader(f))
    if records != rows + 1:
        raise RuntimeError(f"archive of {name}: {records - 1} rows in the file, {rows} in the "
                           "table; nothing was dropped")
    tmp.replace(path)
    digest, size = _digest(path)
    manifest = {"partition": name, "day": day.isoformat(), "rows": rows, "columns": COLUMNS,
                "first_fix_time": first.isoformat() if first else None,
                "last_fix_time": last.isoformat() if last else None,
                "file": path.name, "bytes": size, "sha256": digest, "format": "csv+gzip",
                "archived_at": datetime.now(UTC).isoformat()}
    path.with_suffix("").with_suffix(".json").write_text(json.dumps(manifest, indent=2) + "\n")
    with conn.transaction():
        conn.execute("""INSERT INTO position_archives (partition, day, rows, first_fix_time,
                            last_fix_time, path, bytes, sha256) VALUES (%s, %s, %s, %s, %s, %s,
                            %s, %s)""", (name, day, rows, first, last, str(path.resolve()), size,
                                         digest))
        _audit(conn, "positions.archive", f"partition:{name}", day=day.isoformat(), rows=rows,
               file=str(path.resolve()), sha256=digest, bytes=size)
    return path


def manifest_of(path: Path) -> dict[str, Any]:
    m = path.with_suffix("").with_suffix(".json")
    if not m.exists():
        raise FileNotFoundError(f"{m} (the archive's manifest) is missing")
    return dict(json.loads(m.read_text()))


def restore(conn: psycopg.Connection, settings: Settings, path: Path) -> int:
    """Put an archived day back into `positions` (its partition is made again); refuses a file
    whose checksum or row count is not the manifest's. Returns the rows restored."""
    manifest = manifest_of(path)
    digest, _ = _digest(path)
    if digest != manifest["sha256"]:
        raise ValueError(f"{path}: SHA-256 {digest} is not the manifest's {manifest['sha256']}")
    if tuple(manifest["columns"]) != COLUMNS:
        raise ValueError(f"{path}: columns {manifest['columns']} are not {COLUMNS}")
    _session(conn, settings)
    day = date.fromisoformat(manifest["day"])
    report = Report()
    _locked(conn, report, "restore partition",
            "SELECT partman.create_partition_time(%s, ARRAY[%s::timestamptz], false)",
            (PARENT, datetime.combine(day, datetime.min.time(), UTC)))
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in COLUMNS)
    with conn.transaction():
        with conn.cursor() as cur:
            cur.execute("CREATE TEMP TABLE restore_in (LIKE positions) ON COMMIT DROP")
            cur.execute("ALTER TABLE restore_in DROP COLUMN geom")
            with cur.copy(sql.SQL("COPY restore_in ({}) FROM STDIN (FORMAT csv, HEADER)")
                          .format(cols)) as cp, gzip.open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    cp.write(chunk)
            # The hourly summary (migration 0017) went with the day's rows; the positions
            # trigger rebuilds it from the rows restored (anything left of it is cleared first,
            # so nothing counts twice).
            cur.execute("DELETE FROM position_hours WHERE hour >= %s AND hour < %s",
                        (datetime.combine(day, datetime.min.time(), UTC),
                         datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC)))
            cur.execute(sql.SQL("INSERT INTO positions ({}) SELECT {} FROM restore_in "
                                "ON CONFLICT DO NOTHING").format(cols, cols))
            restored = cur.rowcount
            cur.execute("SELECT count(*) FROM restore_in")
            got = cur.fetchone()
        if got is None or int(got[0]) != int(manifest["rows"]):
            raise ValueError(f"{path}: {got} rows read, the manifest says {manifest['rows']}")
        conn.execute("UPDATE position_archives SET restored_at = now() WHERE partition = %s",
                     (manifest["partition"],))
        _audit(conn, "positions.restore", f"partition:{manifest['partition']}",
               day=manifest["day"], rows=restored, file=str(path.resolve()), sha256=digest)
    return int(restored)


def main(argv: list[str] | None = None) -> int:
    from store.settings import get_settings

    ap = argparse.ArgumentParser(prog="python -m store.partitions", description=__doc__.split(
        "\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("maintain", help="partitions ahead, default rows to their day, indexes, "
                                    "retention (what the scheduler runs)")
    sub.add_parser("list", help="the archives made so far")
    r = sub.add_parser("restore", help="put an archived day back into positions")
    r.add_argument("file", type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = get_settings()
    with psycopg.connect(settings.psycopg_dsn, autocommit=True) as conn:
        if args.cmd == "maintain":
            print(maintain(conn, settings))
        elif args.cmd == "list":
            out = io.StringIO()
            for row in conn.execute("""SELECT partition, rows, sha256, path, archived_at,
                                              dropped_at, restored_at
                                         FROM position_archives ORDER BY day"""):
                out.write("\t".join("" if v is None else str(v) for v in row) + "\n")
            sys.stdout.write(out.getvalue())
        else:
            print(f"{restore(conn, settings, args.file):,} positions restored from {args.file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
