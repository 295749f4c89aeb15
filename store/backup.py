"""Continuous archiving and point-in-time recovery of the PostgreSQL database (issue 15).

    python3 -I store/backup.py archive-wal ARCHIVE %p %f    # PostgreSQL's archive_command
    python3 -I store/backup.py restore-wal ARCHIVE %f %p    # the restore_command of a restore
    python -m store.backup base [--keep N]              # a verified base backup, then retention
    python -m store.backup list                         # the base backups and the WAL archive
    python -m store.backup prune --keep N               # keep N base backups and the WAL they need
    python -m store.backup restore DATA_DIR [--target-time T]   # a data directory ready to start
    python -m store.backup drill [--target-time T]      # restore into a new cluster and verify it

The backup directory (`--root`, default `$CCS_BACKUP_DIR` or /var/lib/ccs-backup) holds
`wal/` (every WAL segment PostgreSQL finished, copied there by `archive-wal`) and
`base/<label>/` (`pgdata/`: a plain `pg_basebackup` with its manifest, checked by
`pg_verifybackup`; `backup.json`: when it was taken, written last, so a backup without it is
incomplete and never used). A base backup plus the WAL archived after it gives the database as
of any moment since that backup: `restore` copies the newest base backup that finished before
the target (or the newest) into a new data directory and sets it to replay the archive to the
target time or to its end, then promote.

`drill` does that into a temporary directory, starts the copy on a free loopback port, waits
for recovery to finish, and checks it: the audit chain verifies (store/audit.py), and the newest
committed fix and audit row of the live database (read just before it switches to a new WAL
segment and waits for the finished one to be archived) are in the copy. It prints each step's
time and exits 1 when a check fails. Documentation: docs/backups.md.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import pwd
import random
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DEFAULT_ROOT = "/var/lib/ccs-backup"
PG_USER = "postgres"
WAL_NAME_LEN = 24  # 000000010000000000000003: timeline, log, segment


class BackupError(Exception):
    """Something a backup or restore step could not do; the message says what."""


# -- PostgreSQL binaries, run as the postgres user ----------------------------------------------

def pg_bin(name: str) -> str:
    """Path of a PostgreSQL program: `$CCS_PG_BIN`, else the newest Debian build, else PATH."""
    if env := os.environ.get("CCS_PG_BIN"):
        return str(Path(env) / name)
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
                   key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    return str(found[-1]) if found else (shutil.which(name) or name)


def _as_postgres() -> list[str]:
    """Prefix running a command as the postgres user when we are root (initdb and the server
    refuse root; the restored files must belong to the server's user)."""
    return ["runuser", "-u", PG_USER, "--"] if os.geteuid() == 0 else []


def _give_to_postgres(path: Path) -> None:
    """chown a tree to the postgres user (only as root; otherwise it is already ours)."""
    if os.geteuid() != 0:
        return
    pw = pwd.getpwnam(PG_USER)
    for p in [path, *path.rglob("*")]:
        os.lchown(p, pw.pw_uid, pw.pw_gid)


def _run(cmd: Sequence[str], what: str, timeout: float | None = None) -> str:
    """Run a command; its output on success, BackupError with its output on failure."""
    try:
        done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BackupError(f"{what}: {e}") from e
    if done.returncode != 0:
        raise BackupError(f"{what} failed (exit {done.returncode}): "
                          f"{(done.stderr or done.stdout).strip()[-2000:]}")
    return done.stdout


_HANDED_OUT: set[int] = set()
_PORTS = random.SystemRandom()  # from os.urandom: a forked child does not draw its parent's


def _port_range() -> tuple[int, int]:
    """Where to draw from: below the ephemeral range, or above it where that is the larger."""
    try:
        low, high = (int(x) for x in
                     Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[:2])
    except (OSError, ValueError):
        low, high = 32768, 60999
    below, above = (1024, low), (high + 1, 65536)
    return below if below[1] - below[0] >= above[1] - above[0] else above


def free_port() -> int:
    """A TCP port nothing listens on right now, from outside the kernel's ephemeral range.

    Asking the kernel for port 0 returns an ephemeral port, which any outgoing connection
    (a client of PostgreSQL, a Patroni health check) may take before the server that was
    promised it binds it: "Address already in use". Ports outside the range are only ever
    taken by a bind, so one that binds now stays free until its server starts, unless
    another process picks the same one: the draw is random and each process remembers
    what it handed out."""
    low, high = _port_range()
    if high - low < 1000:
        raise RuntimeError(f"fewer than 1,000 ports outside the ephemeral range ({low}-{high - 1})")
    # Clear of the well-known ports below 20000 that services on the machine itself listen on
    # (PostgreSQL 5432, Redis 6379, MQTT 1883, the API 8000...), when that leaves enough.
    low = max(low, 20000) if high - 20000 >= 5000 else low
    for _ in range(200):
        port = _PORTS.randrange(low, high)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free port in {low}-{high - 1} after 200 tries")


@dataclass
class Cluster:
    """A PostgreSQL cluster of our own: a data directory, a loopback port, a private socket
    directory. Used for the restored copy of a drill, and by the tests and the benchmark for
    the database they back up."""

    data: Path
    port: int
    socket_dir: Path
    log: Path

    @classmethod
    def under(cls, root: Path, name: str = "pgdata") -> Cluster:
        """A cluster whose files all live under `root` (which must exist)."""
        sock = root / "socket"
        sock.mkdir(exist_ok=True)
        return cls(root / name, free_port(), sock, root / f"{name}.log")

    def dsn(self, dbname: str = "postgres") -> str:
        """libpq keywords for connecting as postgres over the private socket."""
        return f"host={self.socket_dir} port={self.port} user={PG_USER} dbname={dbname}"

    def url(self, dbname: str) -> str:
        """SQLAlchemy URL for the same connection (the project's settings take one)."""
        return (f"postgresql+psycopg://{PG_USER}@/{dbname}?host={self.socket_dir}"
                f"&port={self.port}")

    def initdb(self, settings: dict[str, str]) -> None:
        """A new trust-authenticated cluster (a throwaway one: tests, benchmark) with `settings`
        appended to its postgresql.conf."""
        self.data.mkdir(parents=True)
        _give_to_postgres(self.data.parent)
        _run([*_as_postgres(), pg_bin("initdb"), "-D", str(self.data), "-U", PG_USER,
              "-A", "trust", "-E", "UTF8", "--no-sync"], "initdb")
        self.configure(settings)

    def configure(self, settings: dict[str, str]) -> None:
        """Append settings to postgresql.auto.conf (read last, so they win), plus this
        cluster's port and sockets."""
        base = {"port": str(self.port), "listen_addresses": "'127.0.0.1'",
                "unix_socket_directories": f"'{self.socket_dir}'"}
        lines = [f"{k} = {v}" for k, v in {**base, **settings}.items()]
        with (self.data / "postgresql.auto.conf").open("a") as f:
            f.write("\n# store.backup\n" + "\n".join(lines) + "\n")
        _give_to_postgres(self.data.parent)

    def start(self, timeout: float = 3600) -> None:
        """Start the server; returns once it accepts connections (during a recovery: once the
        copy is consistent; `wait_promoted` waits for the end of the replay)."""
        _run([*_as_postgres(), pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log),
              "-w", "-t", str(int(timeout)), "start"],
             f"starting PostgreSQL on port {self.port}", timeout + 30)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server if it runs."""
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(BackupError):
                _run([*_as_postgres(), pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode,
                      "-w", "stop"], "stopping PostgreSQL", 120)

    def log_tail(self, lines: int = 15) -> str:
        """The end of the server's log, for error messages."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


# -- archive_command and restore_command --------------------------------------------------------

def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _same_content(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with a.open("rb") as fa, b.open("rb") as fb:
        while True:
            ca, cb = fa.read(1 << 20), fb.read(1 << 20)
            if ca != cb:
                return False
            if not ca:
                return True


def wal_command(kind: str, archive: Path) -> str:
    """PostgreSQL's archive_command (`archive-wal`) or restore_command (`restore-wal`) for an
    archive directory.

    The server runs it as its own user, for every WAL file: so this file is run as a script by
    the system's Python in isolated mode (`-I`: no environment, no current directory on the
    path). Those two subcommands use the standard library only; they need neither the project's
    virtual environment (often unreadable to the postgres user) nor a database connection.
    """
    python = os.environ.get("CCS_BACKUP_PYTHON") or (
        "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable)
    args = "%p %f" if kind == "archive-wal" else "%f %p"
    return " ".join([shlex.quote(python), "-I", shlex.quote(str(Path(__file__).resolve())), kind,
                     shlex.quote(str(archive)), args])


def archive_wal(archive: Path, src: Path, name: str) -> str:
    """Copy one finished WAL file into the archive, durably and never over another file.

    The copy goes to a temporary name, is fsynced, then linked to its final name (link fails
    when the name exists: no overwrite even when two archivers race) and the directory fsynced.
    An archived file with the same content is success (PostgreSQL may archive a file again
    after a crash); a different one is an error, which keeps the segment in pg_wal and makes
    PostgreSQL retry and log it instead of losing either copy.
    """
    if "/" in name or not name:
        raise BackupError(f"not a WAL file name: {name!r}")
    dest = archive / name
    if dest.exists():
        if _same_content(src, dest):
            return "already archived"
        raise BackupError(f"{dest} exists with different content: refusing to overwrite it")
    tmp = archive / f".{name}.{os.getpid()}.tmp"
    try:
        with src.open("rb") as fi, tmp.open("wb") as fo:
            shutil.copyfileobj(fi, fo, 1 << 20)
            fo.flush()
            os.fsync(fo.fileno())
        try:
            os.link(tmp, dest)
        except FileExistsError:
            if not _same_content(tmp, dest):
                raise BackupError(f"{dest} appeared meanwhile with different content") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _fsync_dir(archive)
    return "archived"


def restore_wal(archive: Path, name: str, dest: Path) -> bool:
    """Copy an archived WAL file to where recovery wants it; False when the archive lacks it
    (the normal end of a replay)."""
    src = archive / name
    if not src.is_file():
        return False
    shutil.copyfile(src, dest)
    return True


# -- base backups --------------------------------------------------------------------------------

@dataclass
class BaseBackup:
    """One complete base backup (its backup.json)."""

    label: str
    started: str  # UTC, ISO 8601
    finished: str  # UTC, after pg_basebackup returned: the copy is consistent before this
    start_wal: str  # the first WAL file it needs (pg_archivecleanup keeps it and what follows)
    bytes: int
    verified: bool
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def finished_at(self) -> datetime:
        """`finished` as a datetime."""
        return datetime.fromisoformat(self.finished)


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="microseconds")


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One base backup, prune or restore selection at a time per backup directory."""
    # Read-only: whoever created it (root by hand, postgres from the timer), both can lock it.
    fd = os.open(root / ".lock", os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def backups(root: Path) -> list[BaseBackup]:
    """The complete base backups, oldest first."""
    out = []
    for meta in sorted((root / "base").glob("*/backup.json")):
        with contextlib.suppress(ValueError, TypeError, OSError):
            out.append(BaseBackup(**json.loads(meta.read_text())))
    return sorted(out, key=lambda b: b.finished)


def _start_wal(backup_label: Path) -> str:
    # START WAL LOCATION: 0/2000028 (file 000000010000000000000002)
    for line in backup_label.read_text().splitlines():
        if line.startswith("START WAL LOCATION:") and "(file " in line:
            return line.split("(file ", 1)[1].rstrip(")").strip()
    raise BackupError(f"no START WAL LOCATION in {backup_label}")


def base_backup(root: Path, dsn: str, verify: bool = True, keep: int | None = None,
                sync: bool = True) -> BaseBackup:
    """pg_basebackup (plain format, the WAL it needs streamed along, fast checkpoint), then
    pg_verifybackup, then backup.json; with `keep`, prune to that many afterwards."""
    ensure_layout(root)
    with _locked(root):
        started = _now()
        label = started.strftime("%Y%m%dT%H%M%SZ")
        home = root / "base" / label
        if home.exists():
            raise BackupError(f"{home} exists: one base backup per second at most")
        home.mkdir()
        _give_to_postgres(home)
        pgdata = home / "pgdata"
        t = time.monotonic()
        try:
            _run([*_as_postgres(), pg_bin("pg_basebackup"), "-d", dsn, "-D", str(pgdata),
                  "-F", "p", "-X", "stream", "-c", "fast", "-l", f"ccs {label}",
                  *([] if sync else ["--no-sync"])], "pg_basebackup")
            took = {"pg_basebackup": round(time.monotonic() - t, 2)}
            finished = _now()
            if verify:
                t = time.monotonic()
                verify_backup(pgdata)
                took["pg_verifybackup"] = round(time.monotonic() - t, 2)
        except BaseException:
            shutil.rmtree(home, ignore_errors=True)
            raise
        meta = BaseBackup(label, _iso(started), _iso(finished), _start_wal(pgdata / "backup_label"),
                          _tree_bytes(pgdata), verify, took)
        tmp = home / "backup.json.tmp"
        tmp.write_text(json.dumps(asdict(meta), indent=1))
        tmp.rename(home / "backup.json")
        _fsync_dir(home)
    if keep is not None:
        prune(root, keep)
    return meta


def verify_backup(pgdata: Path) -> None:
    """pg_verifybackup: every file against the manifest's checksums, and the WAL it needs."""
    _run([*_as_postgres(), pg_bin("pg_verifybackup"), "-q", str(pgdata)], "pg_verifybackup")


def prune(root: Path, keep: int) -> dict[str, Any]:
    """Delete all but the `keep` newest base backups, incomplete leftovers, and the archived
    WAL older than the oldest kept backup needs (pg_archivecleanup)."""
    if keep < 1:
        raise BackupError("keep at least one base backup")
    with _locked(root):
        complete = backups(root)
        gone = [b.label for b in complete[:-keep]]
        for label in gone:
            shutil.rmtree(root / "base" / label)
        # A directory without backup.json is a backup that failed or was killed (we hold the
        # lock, so none is running).
        for d in (root / "base").iterdir():
            if d.is_dir() and not (d / "backup.json").exists():
                shutil.rmtree(d)
                gone.append(d.name + " (incomplete)")
        kept = complete[-keep:]
        wal_before = len(_wal_files(root))
        if kept:
            _run([*_as_postgres(), pg_bin("pg_archivecleanup"), str(root / "wal"),
                  kept[0].start_wal], "pg_archivecleanup")
            # pg_archivecleanup leaves the backup history files (NAME.OFFSET.backup) of the
            # backups just removed; timeline history files stay (tiny, needed to follow a
            # timeline).
            for f in (root / "wal").glob("*.backup"):
                if f.name[:WAL_NAME_LEN] < kept[0].start_wal:
                    f.unlink()
    wal_after = len(_wal_files(root))
    return {"removed_backups": gone, "kept_backups": [b.label for b in kept],
            "wal_files_removed": wal_before - wal_after, "wal_files_kept": wal_after}


def _wal_files(root: Path) -> list[Path]:
    """The archive's files, sorted (not the dot-files of copies in progress)."""
    wal = root / "wal"
    return sorted(p for p in wal.iterdir() if not p.name.startswith(".")) if wal.exists() else []


def ensure_layout(root: Path) -> None:
    """The backup directory's folders, owned by the postgres user (it writes into wal/)."""
    for d in (root, root / "wal", root / "base"):
        if not d.exists():
            d.mkdir(mode=0o700, parents=True)
            _give_to_postgres(d)


# -- restore -------------------------------------------------------------------------------------

def choose(root: Path, target: datetime | None) -> BaseBackup:
    """The newest complete base backup that finished before `target` (or the newest)."""
    candidates = [b for b in backups(root) if target is None or b.finished_at < target]
    if not candidates:
        raise BackupError("no complete base backup" + (f" finished before {_iso(target)}"
                                                       if target else "") + f" in {root}/base")
    return candidates[-1]


def restore_command(root: Path) -> str:
    """The restore_command that reads this backup directory's WAL archive."""
    return wal_command("restore-wal", root / "wal")


def prepare_restore(root: Path, dest: Path, target: datetime | None,
                    backup: BaseBackup | None = None) -> BaseBackup:
    """Copy a base backup into `dest` (new or empty) and set it to recover from the archive
    (to `target`, or to the archive's end), then promote. Starting it performs the recovery."""
    chosen = backup or choose(root, target)
    if dest.exists() and any(dest.iterdir()):
        raise BackupError(f"{dest} is not empty: restore into a new directory")
    dest.mkdir(parents=True, exist_ok=True)
    dest.chmod(0o700)
    _run(["cp", "-a", "--reflink=auto", f"{root / 'base' / chosen.label / 'pgdata'}/.",
          str(dest)], "copying the base backup")
    (dest / "backup_manifest").unlink(missing_ok=True)
    (dest / "standby.signal").unlink(missing_ok=True)
    (dest / "recovery.signal").touch()
    settings = {"restore_command": f"'{restore_command(root)}'",
                "recovery_target_timeline": "'latest'",
                "recovery_target_action": "'promote'"}
    if target is not None:
        settings["recovery_target_time"] = f"'{_iso(target)}'"
    if not (dest / "postgresql.conf").exists():
        # Debian keeps the configuration in /etc/postgresql, outside the data directory (and so
        # outside the backup): the restored copy gets a minimal one, to be replaced by the
        # server's own configuration when it goes into service.
        (dest / "postgresql.conf").write_text("# written by store.backup restore\n"
                                              "max_connections = 200\n")
    lines = [f"{k} = {v}" for k, v in settings.items()]
    with (dest / "postgresql.auto.conf").open("a") as f:
        f.write(f"\n# store.backup restore of {chosen.label}\n" + "\n".join(lines) + "\n")
    _give_to_postgres(dest)
    return chosen


def wait_promoted(conn_dsn: str, cluster: Cluster, timeout: float) -> None:
    """Until the copy has replayed what it should and left recovery; BackupError (with the
    server's log) when the server stops or the time is up."""
    import psycopg

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not (cluster.data / "postmaster.pid").exists():
            raise BackupError("the restored server stopped during recovery:\n"
                              + cluster.log_tail())
        with contextlib.suppress(psycopg.OperationalError), \
                psycopg.connect(conn_dsn, connect_timeout=5) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            if row is not None and not row[0]:
                return
        time.sleep(0.2)
    raise BackupError(f"recovery not finished after {timeout:.0f} s:\n" + cluster.log_tail())


# -- the drill -----------------------------------------------------------------------------------

@dataclass
class DrillReport:
    """What a drill found and how long each step took."""

    ok: bool = False
    backup: str = ""
    backup_finished: str = ""
    target_time: str | None = None
    source: dict[str, Any] = field(default_factory=dict)
    restored: dict[str, Any] = field(default_factory=dict)
    audit: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    data_dir: str | None = None

    def text(self) -> str:
        """For people."""
        lines = [f"backup {self.backup} (finished {self.backup_finished})"
                 + (f", recovered to {self.target_time}" if self.target_time else
                    ", recovered to the end of the archive")]
        if self.source:
            lines.append(f"live database before the drill: newest fix {self.source.get('newest_fix')}, "
                         f"audit head seq {self.source.get('audit_seq')}")
        if self.restored:
            lines.append(f"restored copy: {self.restored['positions']:,} positions, newest fix "
                         f"{self.restored['newest_fix']}")
        if self.audit:
            lines.append(f"audit chain: {'intact' if self.audit['ok'] else 'BROKEN'}, "
                         f"{self.audit['rows']:,} rows, head seq {self.audit['head']['seq']}"
                         + ("" if self.audit["ok"] else
                            f": {self.audit['first_problem']['message']}"))
        lines += [f"  {step}: {s:.1f} s" for step, s in self.seconds.items()]
        lines += [f"FAILED: {f}" for f in self.failures]
        lines.append("drill passed" if self.ok else "drill FAILED")
        return "\n".join(lines)


def switch_and_wait(dsn: str, timeout: float = 120) -> dict[str, Any]:
    """Read the live database's newest fix and audit head, close the current WAL segment and
    wait until the archive has it: what was committed before is then in the archive."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT (SELECT max(fix_time) FROM last_positions),"
                           "       (SELECT seq FROM audit_chain_head)").fetchone()
        assert row is not None
        newest, seq = row
        wal = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()
        assert wal is not None
        deadline = time.monotonic() + timeout
        while True:
            arch = conn.execute("SELECT last_archived_wal, last_failed_wal, last_failed_time "
                                "FROM pg_stat_archiver").fetchone()
            assert arch is not None
            if arch[0] is not None and arch[0][:WAL_NAME_LEN] >= wal[0]:
                break
            if time.monotonic() > deadline:
                raise BackupError(f"WAL file {wal[0]} not archived after {timeout:.0f} s (last "
                                  f"archived {arch[0]}, last failure {arch[1]} at {arch[2]}): "
                                  "is archive_command working?")
            time.sleep(0.1)
    return {"newest_fix": _iso(newest) if newest else None, "audit_seq": seq,
            "wal_switched": wal[0]}


def drill(root: Path, dbname: str, source_dsn: str | None, target: datetime | None = None,
          workdir: Path | None = None, keep: bool = False, verify_base: bool = True,
          timeout: float = 3600) -> DrillReport:
    """Restore into a new cluster on a free loopback port, recover, verify, report, remove.

    With `source_dsn` (and no target), the live database's WAL is switched and archived first
    and its newest fix and audit head must be in the copy.
    """
    from store import audit

    report = DrillReport(target_time=_iso(target) if target else None)
    began = time.monotonic()

    def step(name: str, t0: float) -> None:
        report.seconds[name] = round(time.monotonic() - t0, 2)

    if source_dsn is not None and target is None:
        t = time.monotonic()
        report.source = switch_and_wait(source_dsn)
        step("switch WAL and wait for the archive", t)
    chosen = choose(root, target)
    report.backup, report.backup_finished = chosen.label, chosen.finished
    if verify_base:
        t = time.monotonic()
        verify_backup(root / "base" / chosen.label / "pgdata")
        step("pg_verifybackup of the base backup", t)
    top = Path(tempfile.mkdtemp(prefix="ccs-drill-", dir=workdir))
    top.chmod(0o755)
    cluster = Cluster.under(top)
    try:
        t = time.monotonic()
        prepare_restore(root, cluster.data, target, chosen)
        # A throwaway copy: it archives nothing (the archive belongs to the live database) and
        # lets only the postgres user in, over its private socket.
        (top / "pg_hba.conf").write_text("local all all trust\n")
        cluster.configure({"archive_mode": "off", "hba_file": f"'{top / 'pg_hba.conf'}'",
                           "max_connections": "50", "logging_collector": "off"})
        cluster.socket_dir.chmod(0o700)
        _give_to_postgres(top)
        step("copy the base backup", t)
        t = time.monotonic()
        cluster.start(timeout)
        wait_promoted(cluster.dsn(), cluster, timeout)
        step("replay the WAL archive and promote", t)
        t = time.monotonic()
        res = audit.verify(cluster.dsn(dbname))
        report.audit = res.as_dict()
        report.audit["problems"] = report.audit["problems"][:5]
        if not res.ok:
            report.failures.append(f"audit chain: {res.problems[0].message}")
        step("verify the audit chain", t)
        t = time.monotonic()
        report.restored = restored_figures(cluster.dsn(dbname))
        step("count positions", t)
        _compare(report)
    except BackupError as e:
        report.failures.append(str(e))
    finally:
        cluster.stop("immediate" if not keep else "fast")
        if keep:
            report.data_dir = str(cluster.data)
        else:
            shutil.rmtree(top, ignore_errors=True)
    report.seconds["total"] = round(time.monotonic() - began, 2)
    report.ok = not report.failures
    return report


def restored_figures(dsn: str) -> dict[str, Any]:
    """Positions and their newest fix in a (restored) database."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*), max(fix_time) FROM positions").fetchone()
    assert row is not None
    return {"positions": row[0], "newest_fix": _iso(row[1]) if row[1] else None}


def _compare(report: DrillReport) -> None:
    """The live database's newest fix and audit head must be in the copy."""
    src, got = report.source, report.restored
    if not src:
        return
    if src.get("newest_fix") and (got.get("newest_fix") is None
                                  or got["newest_fix"] < src["newest_fix"]):
        report.failures.append(f"the newest committed fix {src['newest_fix']} is not in the "
                               f"copy (its newest: {got.get('newest_fix')})")
    if src.get("audit_seq") and report.audit.get("head", {}).get("seq", 0) < src["audit_seq"]:
        report.failures.append(f"audit row seq {src['audit_seq']} is not in the copy")


# -- command line --------------------------------------------------------------------------------

def _parse_time(text: str) -> datetime:
    t = datetime.fromisoformat(text)
    if t.tzinfo is None:
        raise argparse.ArgumentTypeError("give the time zone: 2026-12-06T22:00:00+08:00 or ...Z")
    return t


def _db_from_settings() -> tuple[str, str]:
    """(libpq DSN, database name) of the configured database."""
    from sqlalchemy.engine import make_url

    from store.settings import get_settings

    dsn = get_settings().psycopg_dsn
    return dsn, make_url(get_settings().database_url).database or "ccs"


def _dbname(dsn: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    return str(conninfo_to_dict(dsn).get("dbname") or PG_USER)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; exit 0 on success, 1 when a check fails, 2 on an error."""
    p = argparse.ArgumentParser(prog="python -m store.backup", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("archive-wal", help="archive_command: archive-wal ARCHIVE %%p %%f")
    a.add_argument("archive", type=Path)
    a.add_argument("path", type=Path)
    a.add_argument("name")
    r = sub.add_parser("restore-wal", help="restore_command: restore-wal ARCHIVE %%f %%p")
    r.add_argument("archive", type=Path)
    r.add_argument("name")
    r.add_argument("path", type=Path)
    root_default = Path(os.environ.get("CCS_BACKUP_DIR", DEFAULT_ROOT))

    def with_root(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--root", type=Path, default=root_default,
                        help="backup directory (default $CCS_BACKUP_DIR or %(default)s)")
        return sp

    b = with_root(sub.add_parser("base", help="take a verified base backup"))
    b.add_argument("--dsn", help="libpq DSN (default: from CCS_DATABASE_URL)")
    b.add_argument("--keep", type=int, help="then keep only this many base backups")
    b.add_argument("--no-verify", action="store_true", help="skip pg_verifybackup")
    with_root(sub.add_parser("list", help="base backups and the WAL archive"))
    pr = with_root(sub.add_parser("prune", help="keep N base backups and the WAL they need"))
    pr.add_argument("--keep", type=int, required=True)
    rs = with_root(sub.add_parser("restore", help="prepare a new data directory"))
    rs.add_argument("data_dir", type=Path)
    rs.add_argument("--target-time", type=_parse_time, help="recover to this moment (ISO 8601)")
    d = with_root(sub.add_parser("drill", help="restore into a new cluster and verify it"))
    d.add_argument("--target-time", type=_parse_time, help="recover to this moment (ISO 8601)")
    d.add_argument("--dsn", help="the live database (default: from CCS_DATABASE_URL)")
    d.add_argument("--database", help="database name in the copy (default: the live one's)")
    d.add_argument("--no-source", action="store_true",
                   help="do not touch the live database (no WAL switch, no comparison)")
    d.add_argument("--workdir", type=Path, help="where the copy goes (default: $TMPDIR)")
    d.add_argument("--keep", action="store_true", help="leave the copy's data directory")
    d.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        if args.command == "archive-wal":
            archive_wal(args.archive, args.path, args.name)
            return 0
        if args.command == "restore-wal":
            return 0 if restore_wal(args.archive, args.name, args.path) else 1
        if args.command == "base":
            dsn = args.dsn or _db_from_settings()[0]
            meta = base_backup(args.root, dsn, verify=not args.no_verify, keep=args.keep)
            print(json.dumps(asdict(meta)))
        elif args.command == "list":
            wal = _wal_files(args.root)
            print(json.dumps({"base": [asdict(x) for x in backups(args.root)],
                              "wal_files": len(wal),
                              "wal_bytes": sum(w.stat().st_size for w in wal),
                              "wal_first": wal[0].name if wal else None,
                              "wal_last": wal[-1].name if wal else None}, indent=1))
        elif args.command == "prune":
            print(json.dumps(prune(args.root, args.keep)))
        elif args.command == "restore":
            chosen = prepare_restore(args.root, args.data_dir, args.target_time)
            print(f"restored base backup {chosen.label} into {args.data_dir}; start it with "
                  f"pg_ctl (or as the cluster's data directory) to replay the archive"
                  + (f" to {_iso(args.target_time)}" if args.target_time else ""))
        elif args.command == "drill":
            dsn, name = (args.dsn, _dbname(args.dsn)) if args.dsn else _db_from_settings()
            rep = drill(args.root, args.database or name,
                        None if args.no_source or args.target_time else dsn,
                        args.target_time, args.workdir, args.keep)
            print(json.dumps(asdict(rep), indent=1) if args.json else rep.text())
            return 0 if rep.ok else 1
    except (BackupError, OSError) as e:
        print(f"store.backup {args.command}: {e}", file=sys.stderr)
        return 2 if args.command != "archive-wal" else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
