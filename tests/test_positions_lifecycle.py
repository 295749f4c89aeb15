"""The positions table's life on the real database: pg_partman's daily partitions, late fixes in
their day, the last-position table, retention with archive, verification and restore."""

from __future__ import annotations

import csv
import gzip
import json
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import orjson
import psycopg
import pytest

from ingest.pipeline import Channel, Pipeline, RawMessage
from store import partitions
from store.settings import Settings
from tests.conftest import Org
from tests.geo import deep_inside

JIANGAN = "420102"


def _enrol(db: psycopg.Connection, org: Org, device: str, supervisee: int | None = None) -> None:
    db.execute("INSERT INTO devices (id, supervisee_id, secret_hash) VALUES (%s, %s, %s)",
               (device, supervisee or org.supervisee_id, f"h-{device}"))


def _fix(device: str, t: float, lon: float, lat: float) -> RawMessage:
    body = {"time": t, "lon": lon, "lat": lat, "accuracy": 12.0, "crs": "wgs84"}
    return RawMessage(Channel.NATIVE_MQTT, orjson.dumps(body), device,
                      f"devices/{device}/location", time.time())


def _where(db: psycopg.Connection, device: str) -> list[tuple[str, date]]:
    return [(r[0], r[1]) for r in db.execute(
        """SELECT tableoid::regclass::text, (fix_time AT TIME ZONE 'UTC')::date FROM positions
            WHERE device_id = %s ORDER BY fix_time""", (device,))]


def _old_day(db: psycopg.Connection, day: date) -> str:
    """A partition for a day long ago, as partman makes it."""
    db.execute("SELECT partman.create_partition_time('public.positions', ARRAY[%s::timestamptz],"
               " false)", (datetime.combine(day, datetime.min.time(), UTC),))
    return f"positions_p{day:%Y_%m_%d}"


def _insert(db: psycopg.Connection, device: str, supervisee: int, at: datetime, n: int) -> None:
    db.execute(
        """INSERT INTO positions (device_id, supervisee_id, fix_time, received_at, lon, lat,
                                  raw_lon, raw_lat, crs, accuracy, provider, source)
           SELECT %s, %s, %s + k * interval '1 minute', %s + k * interval '1 minute',
                  114.3 + k * 1e-5, 30.6, 114.3, 30.6, 'wgs84', 10,
                  E'gps, "odd"\\nline', 'native_mqtt'
             FROM generate_series(0, %s - 1) k""", (device, supervisee, at, at, n))


def test_partitions_are_daily_made_ahead_and_a_late_fix_lands_in_its_day(
        settings: Settings, db: psycopg.Connection, org: Org):
    partitions.maintain(db, settings, archive=False)
    today = datetime.now(UTC).date()
    days = {d for _, d in partitions.partitions(db)}
    assert {today + timedelta(days=k) for k in range(-31, settings.positions_premake_days + 1)
            } <= days
    _enrol(db, org, "dlate")
    lon, lat = deep_inside(JIANGAN)
    p = Pipeline.connect(settings)
    try:
        now = time.time()
        p.process([_fix("dlate", now - 20 * 86400, lon, lat), _fix("dlate", now - 60, lon, lat)])
    finally:
        p.close()
    assert [name for name, _ in _where(db, "dlate")] == [
        f"positions_p{d:%Y_%m_%d}" for _, d in _where(db, "dlate")]
    assert len({name for name, _ in _where(db, "dlate")}) == 2


def test_a_row_in_the_default_partition_is_moved_to_its_day(
        settings: Settings, db: psycopg.Connection, org: Org):
    """Older than any partition (e.g. restored from a phone's months-old buffer by hand): it
    waits in the default partition, and the maintenance gives it its day."""
    long_ago = datetime(2020, 3, 4, 5, 6, tzinfo=UTC)
    _insert(db, "dold", org.supervisee_id, long_ago, 3)
    assert {name for name, _ in _where(db, "dold")} == {"positions_default"}
    report = partitions.maintain(db, settings, archive=False)
    assert report.moved_from_default == 3
    assert {name for name, _ in _where(db, "dold")} == {"positions_p2020_03_04"}
    assert db.execute("SELECT count(*) FROM positions_default").fetchone() == (0,)


def test_last_positions_keep_each_persons_newest_fix_whatever_the_order(
        settings: Settings, db: psycopg.Connection, org: Org):
    _enrol(db, org, "dlast1")
    _enrol(db, org, "dlast2")  # a second phone of the same person
    lon, lat = deep_inside(JIANGAN)
    now = time.time()
    p = Pipeline.connect(settings)
    try:
        p.process([_fix("dlast1", now - 300, lon, lat), _fix("dlast1", now - 200, lon + 1e-3, lat)])
        p.process([_fix("dlast2", now - 100, lon + 2e-3, lat)])
        p.process([_fix("dlast1", now - 250, lon + 5e-3, lat)])  # late: older than the newest
    finally:
        p.close()
    row = db.execute("SELECT device_id, extract(epoch FROM fix_time), lon FROM last_positions "
                     "WHERE supervisee_id = %s", (org.supervisee_id,)).fetchone()
    assert row is not None
    assert (row[0], round(float(row[1])), round(row[2], 6)) == (
        "dlast2", round(now - 100), round(lon + 2e-3, 6))


def test_each_persons_newest_fix_is_updated_in_place(
        settings: Settings, db: psycopg.Connection, org: Org):
    """`last_positions` keeps half of each page free (migration 0019), so the update that every
    stored report makes there is a HOT update: same page, no new index entry."""
    (opts,) = db.execute("SELECT reloptions FROM pg_class WHERE relname = 'last_positions'"
                         ).fetchone()  # type: ignore[misc]
    assert "fillfactor=50" in (opts or []), opts
    _enrol(db, org, "dhot1")
    lon, lat = deep_inside(JIANGAN)
    now = time.time()
    p = Pipeline.connect(settings)
    try:
        p.process([_fix("dhot1", now - 300, lon, lat)])
        (ctid,) = db.execute("SELECT ctid::text FROM last_positions WHERE supervisee_id = %s",
                             (org.supervisee_id,)).fetchone()  # type: ignore[misc]
        db.commit()
        for k in range(1, 6):
            p.process([_fix("dhot1", now - 300 + 10 * k, lon + 1e-4 * k, lat)])
    finally:
        p.close()
    (moved,) = db.execute("SELECT ctid::text FROM last_positions WHERE supervisee_id = %s",
                          (org.supervisee_id,)).fetchone()  # type: ignore[misc]
    # Five new versions of the row, all on the page of the first one.
    assert moved.split(",")[0] == ctid.split(",")[0], (ctid, moved)


def _end_supervision(db: psycopg.Connection, supervisee: int, at: datetime) -> None:
    db.execute("UPDATE supervisees SET active = false WHERE id = %s", (supervisee,))
    db.execute("""INSERT INTO supervisee_changes (supervisee_id, at, field, old_value, new_value,
                                                  reason) VALUES (%s, %s, 'active', 'true',
                                                  'false', 'sentence served')""",
               (supervisee, at))


def test_a_day_past_retention_is_archived_verified_dropped_and_restored(
        settings: Settings, db: psycopg.Connection, org: Org):
    now = datetime.now(UTC)
    years = settings.retention_positions_years
    gone_day = (now - timedelta(days=365.25 * (years + 1.5))).date()
    kept_day = gone_day + timedelta(days=1)
    gone, kept = _old_day(db, gone_day), _old_day(db, kept_day)
    # The person of the first day finished long ago; the other is still supervised and was
    # also there the next day: that day stays, whatever its age.
    _insert(db, "dgone", org.other_supervisee_id,
            datetime.combine(gone_day, datetime.min.time(), UTC) + timedelta(hours=8), 240)
    _insert(db, "dgone", org.other_supervisee_id,
            datetime.combine(kept_day, datetime.min.time(), UTC) + timedelta(hours=8), 10)
    _insert(db, "dstay", org.supervisee_id,
            datetime.combine(kept_day, datetime.min.time(), UTC) + timedelta(hours=9), 10)
    _end_supervision(db, org.other_supervisee_id, now - timedelta(days=365.25 * (years + 1)))

    hours = "SELECT hour, fixes, usable, slots FROM position_hours WHERE supervisee_id = %s ORDER BY hour"
    summary = db.execute(hours, (org.other_supervisee_id,)).fetchall()
    assert [r[1] for r in summary] == [60, 60, 60, 60, 10]  # 240 fixes from 08:00, then 10

    report = partitions.retire(db, settings, now)
    assert gone in report.archived and kept in report.kept
    # The day's hourly summary goes with its rows (the next day, kept, keeps its own); the
    # restore below rebuilds it.
    assert db.execute(hours, (org.other_supervisee_id,)).fetchall() == summary[-1:]
    names = {n for n, _ in partitions.partitions(db)}
    assert gone not in names and kept in names
    (arch,) = db.execute("SELECT partition, rows, path, sha256, dropped_at IS NOT NULL "
                         "FROM position_archives WHERE partition = %s", (gone,)).fetchall()
    assert arch[:2] == (gone, 240) and arch[4] is True
    path = Path(arch[2])
    manifest = json.loads(path.with_suffix("").with_suffix(".json").read_text())
    assert (manifest["rows"], manifest["sha256"], manifest["day"]) == (
        240, arch[3], gone_day.isoformat())
    with gzip.open(path, "rt", newline="") as f:
        records = list(csv.reader(f))
    assert len(records) == 241 and records[0][:3] == ["device_id", "supervisee_id", "fix_time"]
    # CSV quoting of an odd provider (a comma, quotes, a line break) survives
    assert records[1][records[0].index("provider")] == 'gps, "odd"\nline'
    audit = db.execute("SELECT action, target, detail->>'rows' FROM audit_log "
                       "WHERE action LIKE 'positions.%%' AND target = %s",
                       (f"partition:{gone}",)).fetchall()
    assert audit == [("positions.archive", f"partition:{gone}", "240")]

    # A damaged file is refused; the intact one comes back complete, once.
    damaged = path.with_name("damaged.csv.gz")
    damaged.write_bytes(path.read_bytes()[:-8] + b"\0" * 8)
    damaged.with_suffix("").with_suffix(".json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="SHA-256"):
        partitions.restore(db, settings, damaged)
    assert partitions.restore(db, settings, path) == 240
    assert db.execute(hours, (org.other_supervisee_id,)).fetchall() == summary  # not twice
    assert db.execute("SELECT count(*), min(tableoid::regclass::text) FROM positions "
                      "WHERE device_id = 'dgone' AND fix_time < %s",
                      (datetime.combine(kept_day, datetime.min.time(), UTC),)).fetchone() == (
        240, gone)
    assert db.execute("SELECT action FROM audit_log WHERE action = 'positions.restore'"
                      ).fetchall() == [("positions.restore",)]
    # A restored day is not retired again at the next run.
    assert gone not in partitions.retire(db, settings, now).archived


def test_retiring_gives_way_to_a_writer_instead_of_queueing_in_front_of_ingest(
        settings: Settings, db: psycopg.Connection, org: Org):
    """DETACH needs the whole table to itself; while an ingest transaction holds it, the
    maintenance gives up after lock_timeout and tries again, so inserts arriving meanwhile are
    not queued behind it; once the writer commits, the partition goes."""
    now = datetime.now(UTC)
    day = (now - timedelta(days=365.25 * (settings.retention_positions_years + 2))).date()
    name = _old_day(db, day)
    _insert(db, "dbusy", org.other_supervisee_id,
            datetime.combine(day, datetime.min.time(), UTC) + timedelta(hours=1), 5)
    _end_supervision(db, org.other_supervisee_id, now - timedelta(days=365.25 * 10))
    with psycopg.connect(settings.psycopg_dsn) as writer:
        _insert(writer, "dbusy2", org.supervisee_id, now - timedelta(minutes=5), 1)  # open txn
        with pytest.raises(TimeoutError):
            partitions.retire(db, settings, now)
        # Another insert is not stuck behind the waiting DETACH: it goes through at once.
        done = threading.Event()

        def insert() -> None:
            with psycopg.connect(settings.psycopg_dsn) as c:
                # (another person: the writer's person's last-position row is its to hold)
                _insert(c, "dbusy3", org.other_supervisee_id, now - timedelta(minutes=4), 1)
            done.set()

        threading.Thread(target=insert, daemon=True).start()
        assert done.wait(10)
        writer.rollback()
    assert name in {n for n, _ in partitions.partitions(db)}  # archived, not yet dropped
    report = partitions.retire(db, settings, now)
    assert name in report.archived
    assert db.execute("SELECT count(*) FROM position_archives WHERE partition = %s",
                      (name,)).fetchone() == (1,)  # archived once, dropped at the second try


def test_the_archive_gives_way_to_a_saturated_ingest_worker_within_a_bound(
        settings: Settings, db: psycopg.Connection, org: Org, tmp_path: Path):
    """An ingest worker publishes the share of its time spent on batches; while one reports
    itself saturated (a fresh report at or above positions_archive_yield_busy) the archive
    pauses, for at most positions_archive_max_yield_s per day, and then finishes all the same."""
    import redis as redis_lib

    from alerts.silences import ingest_busy, write_load

    r = redis_lib.Redis.from_url(settings.redis_url)
    prefix, threshold = settings.redis_prefix, settings.positions_archive_yield_busy
    try:
        r.delete(prefix + "ingest:load")
        assert not ingest_busy(r, prefix, threshold)  # no worker has said anything
        write_load(r, prefix, "ingest-a", 0.35)
        assert not ingest_busy(r, prefix, threshold)  # has headroom
        write_load(r, prefix, "ingest-b", 0.97, now=time.time() - 60)
        assert not ingest_busy(r, prefix, threshold)  # saturated a minute ago: stale
        write_load(r, prefix, "ingest-b", 0.97)
        assert ingest_busy(r, prefix, threshold)

        day = (datetime.now(UTC) - timedelta(days=365.25 * (settings.retention_positions_years + 3))
               ).date()
        name = _old_day(db, day)
        _insert(db, "dyield", org.other_supervisee_id,
                datetime.combine(day, datetime.min.time(), UTC), 50)
        s = settings.model_copy(update={"positions_archive_dir": str(tmp_path),
                                        "positions_archive_max_yield_s": 1.5})
        asked = []

        def busy() -> bool:
            asked.append(time.monotonic())
            return ingest_busy(r, prefix, threshold)

        report = partitions.Report()
        began = time.monotonic()
        path = partitions.archive_partition(db, s, name, day, busy, report)
        took = time.monotonic() - began
        # Saturated throughout: it waited its whole allowance, then wrote the file anyway.
        assert report.yielded_s == 1.5 and 1.5 <= took < 10, (report, took)
        assert len(asked) >= 3 and path.exists()
        write_load(r, prefix, "ingest-b", 0.5)  # the backlog is gone: no more waiting
        report = partitions.Report()
        partitions.archive_partition(db, s, name, day, busy, report)
        assert report.yielded_s == 0
    finally:
        r.delete(prefix + "ingest:load")
        r.close()
