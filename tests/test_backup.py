"""Continuous archiving and point-in-time recovery, exercised on a real PostgreSQL of the test's
own: a private cluster (initdb, a free loopback port) archiving its WAL with `store.backup
archive-wal`, the project's schema built by the real migrations, a base backup, rows written
after it, and restore drills into new clusters.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from store import backup
from store.backup import BackupError, Cluster

DB = "ccs"
_POSITION = """INSERT INTO positions (device_id, supervisee_id, fix_time, received_at, lon, lat,
                                      raw_lon, raw_lat, crs, accuracy, source)
               SELECT %(device)s, %(sid)s, %(t)s - g * interval '1 second', now(),
                      114.3, 30.6, 114.3, 30.6, 'wgs84', 10, 'native_mqtt'
                 FROM generate_series(0, %(n)s - 1) g"""


@dataclass
class Primary:
    """The backed-up cluster and what was written to it around the base backup."""

    cluster: Cluster
    root: Path
    top: Path
    before_backup: int = 0  # positions in the base backup
    first_fix: datetime | None = None  # written after the base backup, before `target`
    target: datetime | None = None
    last_fix: datetime | None = None  # written after `target`: the last committed fix
    positions: int = 0
    audit_before_target: int = 0
    audit_rows: int = 0

    def conn(self) -> psycopg.Connection:
        return psycopg.connect(self.cluster.dsn(DB), autocommit=True)


def _write(p: Primary, device: str, n: int, at: datetime, audit_rows: int) -> None:
    """n fixes of one device ending at `at`, and audit rows, in one transaction."""
    with p.conn() as conn, conn.transaction():
        sid = conn.execute("SELECT min(id) FROM supervisees").fetchone()
        conn.execute(_POSITION, {"device": device, "sid": sid[0] if sid else None, "t": at,
                                 "n": n})
        for k in range(audit_rows):
            conn.execute("INSERT INTO audit_log (action, target, purpose, detail) "
                         "VALUES ('position.read', %s, 'backup test', %s)",
                         (f"device:{device}", f'{{"k": {k}}}'))
    p.positions += n
    p.audit_rows += audit_rows


@pytest.fixture(scope="module")
def primary() -> Iterator[Primary]:
    """A private cluster with archiving on, migrated, with data before and after a base backup."""
    from store.db import migrate

    # Not pytest's tmp_path: the server runs as the postgres user, who cannot enter it.
    top = Path(tempfile.mkdtemp(prefix="ccs-backup-test-"))
    top.chmod(0o755)
    root = top / "backup"
    backup.ensure_layout(root)
    cluster = Cluster.under(top, "primary")
    archive_command = backup.wal_command("archive-wal", root / "wal")
    cluster.initdb({"archive_mode": "on", "archive_command": f"'{archive_command}'",
                    "fsync": "off", "max_connections": "50"})
    p = Primary(cluster, root, top)
    try:
        cluster.start(120)
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DB}")
        migrate(cluster.url(DB))
        with p.conn() as conn:
            unit = conn.execute("INSERT INTO org_units (kind, name, path) VALUES "
                                "('judicial_office', '江岸司法所', '/1/') RETURNING id").fetchone()
            assert unit is not None
            conn.execute("INSERT INTO supervisees (office_id, full_name, case_number, "
                         "supervision_type) VALUES (%s, 'Test', 'T-1', 'probation')", (unit[0],))
            now = conn.execute("SELECT date_trunc('second', now())").fetchone()
        assert now is not None
        _write(p, "before-backup", 5000, now[0] - timedelta(hours=1), 20)
        p.before_backup = p.positions
        backup.base_backup(root, cluster.dsn(), sync=False)
        p.first_fix = now[0] - timedelta(minutes=5)
        _write(p, "after-backup", 300, p.first_fix, 7)
        p.audit_before_target = p.audit_rows
        time.sleep(0.5)
        with p.conn() as conn:
            t = conn.execute("SELECT now()").fetchone()
        assert t is not None
        p.target = t[0]
        time.sleep(0.5)
        p.last_fix = now[0] + timedelta(seconds=1)  # stays the newest fix whatever else runs
        _write(p, "last-committed", 1, p.last_fix, 3)
        backup.switch_and_wait(cluster.dsn(DB))  # the WAL past the target is in the archive
        yield p
    finally:
        cluster.stop("immediate")
        shutil.rmtree(top, ignore_errors=True)


def _cli(kind: str, archive: Path, path: Path, name: str) -> subprocess.CompletedProcess[str]:
    """The archive or restore command exactly as PostgreSQL runs it (through the shell)."""
    command = backup.wal_command(kind, archive).replace("%p", str(path)).replace("%f", name)
    return subprocess.run(command, shell=True, capture_output=True, text=True, timeout=60)


def test_archive_command_never_overwrites_a_different_file(tmp_path: Path) -> None:
    archive = tmp_path / "wal"
    archive.mkdir()
    seg = tmp_path / "000000010000000000000007"
    seg.write_bytes(os.urandom(4096))
    assert _cli("archive-wal", archive, seg, seg.name).returncode == 0
    assert (archive / seg.name).read_bytes() == seg.read_bytes()
    # PostgreSQL may archive a segment again after a crash: the same bytes are success.
    assert _cli("archive-wal", archive, seg, seg.name).returncode == 0
    other = tmp_path / "other"
    other.write_bytes(os.urandom(4096))
    refused = _cli("archive-wal", archive, other, seg.name)
    assert refused.returncode != 0 and "refusing to overwrite" in refused.stderr
    assert (archive / seg.name).read_bytes() == seg.read_bytes()
    missing = _cli("archive-wal", archive, tmp_path / "nothing", "000000010000000000000008")
    assert missing.returncode != 0
    assert sorted(x.name for x in archive.iterdir()) == [seg.name]  # no temporary left behind
    assert _cli("restore-wal", archive, tmp_path / "RECOVERYXLOG",
                "000000010000000000000009").returncode == 1
    assert _cli("restore-wal", archive, tmp_path / "RECOVERYXLOG", seg.name).returncode == 0
    assert (tmp_path / "RECOVERYXLOG").read_bytes() == seg.read_bytes()


def test_drill_restores_the_last_committed_fix_and_a_verified_audit_chain(
        primary: Primary) -> None:
    report = backup.drill(primary.root, DB, primary.cluster.dsn(DB))
    assert report.ok, report.text()
    assert report.restored["positions"] == primary.positions
    assert primary.last_fix is not None
    assert datetime.fromisoformat(report.restored["newest_fix"]) == primary.last_fix
    assert report.audit["ok"] and report.audit["rows"] == primary.audit_rows
    assert report.source["audit_seq"] == primary.audit_rows
    # The rows after the base backup came from the WAL archive, not the base backup.
    assert primary.positions > primary.before_backup
    assert set(report.seconds) >= {"copy the base backup", "replay the WAL archive and promote",
                                   "verify the audit chain", "total"}


def test_point_in_time_restore_stops_before_later_rows(primary: Primary) -> None:
    assert primary.target is not None
    report = backup.drill(primary.root, DB, None, target=primary.target)
    assert report.ok, report.text()
    # Everything committed before the target, nothing after.
    assert report.restored["positions"] == primary.positions - 1
    assert datetime.fromisoformat(report.restored["newest_fix"]) == primary.first_fix
    assert report.audit["ok"] and report.audit["rows"] == primary.audit_before_target


def test_drill_fails_on_a_tampered_audit_row(primary: Primary) -> None:
    # A superuser edits a row behind the triggers' back; the edit reaches the archive like any
    # other write, and the restored copy's chain must expose it.
    with primary.conn() as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("UPDATE audit_log SET purpose = 'nothing to see' WHERE seq = 3")
    try:
        # As the weekly timer runs it: the command line, its exit status and its JSON report.
        done = subprocess.run(
            [sys.executable, "-m", "store.backup", "drill", "--root", str(primary.root),
             "--dsn", primary.cluster.dsn(DB), "--json"],
            capture_output=True, text=True, timeout=120)
    finally:
        with primary.conn() as conn:
            conn.execute("SET session_replication_role = replica")
            conn.execute("UPDATE audit_log SET purpose = 'backup test' WHERE seq = 3")
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert not report["ok"]
    assert report["audit"]["first_problem"]["kind"] == "edited"
    assert report["audit"]["first_problem"]["seq"] == 3
    assert any("audit chain" in f for f in report["failures"])
    # Everything else came back: it is the chain that fails the drill.
    assert report["restored"]["positions"] == primary.positions


def test_retention_keeps_the_newest_backups_and_the_wal_they_need(primary: Primary) -> None:
    first = backup.backups(primary.root)[0]
    second = backup.base_backup(primary.root, primary.cluster.dsn(), sync=False)
    assert second.start_wal > first.start_wal
    result = backup.prune(primary.root, keep=1)
    assert result["removed_backups"] == [first.label]
    assert [b.label for b in backup.backups(primary.root)] == [second.label]
    # (A dot-file is a copy the archiver has in progress.)
    left = sorted(p.name for p in (primary.root / "wal").iterdir() if p.name[0] != ".")
    assert left and all(name[:24] >= second.start_wal for name in left
                        if not name.endswith(".history")), left
    assert result["wal_files_removed"] > 0
    # What the retention gave up: a time before the oldest kept backup cannot be restored.
    assert primary.target is not None
    with pytest.raises(BackupError, match="no complete base backup finished before"):
        backup.choose(primary.root, primary.target)


DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "backup"


def test_the_shipped_archive_command_is_the_one_the_tests_run() -> None:
    repo = str(Path(backup.__file__).resolve().parents[1])
    ours = backup.wal_command("archive-wal", Path("/var/lib/ccs-backup/wal")).replace(
        repo, "/opt/ccs")
    conf = (DEPLOY / "ccs-archiving.conf").read_text()
    assert f"archive_command = '{ours}'" in conf
    assert "archive_mode = on" in conf


def test_the_backup_units_verify(tmp_path: Path) -> None:
    # systemd checks syntax and that each command exists: pointed at this checkout's venv.
    repo = str(Path(backup.__file__).resolve().parents[1])
    units = sorted(DEPLOY.glob("ccs-backup-*"))
    assert {u.suffix for u in units} == {".service", ".timer"}
    for u in units:
        (tmp_path / u.name).write_text(u.read_text().replace("/opt/ccs", repo))
    done = subprocess.run(["systemd-analyze", "verify", *sorted(map(str, tmp_path.iterdir()))],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
