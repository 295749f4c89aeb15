"""The audit log's hash chain on the real database: appends, concurrency, refusals, tampering.

Tampering is done as a superuser would: with the triggers off (`session_replication_role =
replica`, or `ALTER TABLE ... DISABLE TRIGGER`), then found by the Python verifier, in-process
and as the `python -m store.audit` command.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from store.audit import GENESIS, Anchor, canonical, link_hash, verify
from store.settings import Settings
from tests.conftest import Org

ROOT = Path(__file__).resolve().parent.parent


def _append(conn: psycopg.Connection, action: str = "test.action", target: str = "t",
            purpose: str = "", remote: str | None = "127.0.0.1", staff_id: int | None = None,
            detail: str = "{}") -> int:
    row = conn.execute(
        """INSERT INTO audit_log (action, target, purpose, remote, staff_id, detail)
           VALUES (%s, %s, %s, %s, %s, %s::jsonb) RETURNING id""",
        (action, target, purpose, remote, staff_id, detail)).fetchone()
    assert row is not None
    return int(row[0])


def _superuser(conn: psycopg.Connection, sql: str, params: tuple[Any, ...] = ()) -> None:
    """Run `sql` with every trigger off, as a superuser can (one transaction)."""
    with conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute(sql, params)


def _seq_of(conn: psycopg.Connection, row_id: int) -> int:
    row = conn.execute("SELECT seq FROM audit_log WHERE id = %s", (row_id,)).fetchone()
    assert row is not None and row[0] is not None
    return int(row[0])


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "store.audit", "--dsn", settings.psycopg_dsn, *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_appended_rows_form_a_chain_that_verifies(db: psycopg.Connection, settings: Settings,
                                                  org: Org) -> None:
    admin = org.staff["admin"]
    ids = [_append(db, "location.read_track", "supervisee:1", "巡查 — routine", "10.0.0.7", admin,
                   '{"b": [1, 2.50, "é\\n"], "a": null, "z": {"y": 1e3}}'),
           _append(db, remote=None, purpose="")]
    with db.transaction():  # several rows in one transaction: chained in insertion order
        ids += [_append(db, f"batch.{i}") for i in range(3)]
    rows = db.execute("SELECT id, seq, prev_hash, hash FROM audit_log ORDER BY seq").fetchall()
    assert [r[0] for r in rows] == ids
    assert [r[1] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0][2] == GENESIS
    assert all(rows[i][2] == rows[i - 1][3] for i in range(1, 5))
    assert len({r[3] for r in rows}) == 5

    # The Python canonical form is byte for byte the database's, and so is the hash.
    r = db.execute("""SELECT seq, id, at, staff_id, action, target, purpose, remote, detail::text,
                             prev_hash, hash, audit_canonical(seq, a) FROM audit_log a
                       WHERE id = %s""", (ids[0],)).fetchone()
    assert r is not None
    mine = canonical(*r[:9])
    assert mine == bytes(r[11])
    assert link_hash(r[9], mine) == r[10]
    assert r[3] == admin

    result = verify(settings.psycopg_dsn)
    assert result.ok, result.problems
    assert (result.rows, result.last_seq, result.last_hash) == (5, 5, rows[-1][3])
    head = db.execute("SELECT seq, hash FROM audit_chain_head").fetchone()
    assert head == (5, rows[-1][3])


def test_the_database_sets_the_time_and_refuses_chain_columns(db: psycopg.Connection) -> None:
    row = db.execute("""INSERT INTO audit_log (action, at) VALUES ('backdated', '2001-01-01Z')
                        RETURNING at""").fetchone()
    assert row is not None and row[0].year == datetime.now(UTC).year
    for column in ("seq", "prev_hash", "hash"):
        value = "1" if column == "seq" else "'\\x00'::bytea"
        with pytest.raises(psycopg.errors.RaiseException, match="assigned by the database"):
            db.execute(f"INSERT INTO audit_log (action, {column}) VALUES ('forged', {value})")


def test_concurrent_writers_form_one_chain_without_gaps(db: psycopg.Connection,
                                                        settings: Settings) -> None:
    threads, rounds = 6, 15
    barrier = threading.Barrier(threads)
    committed = [0] * threads
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            with psycopg.connect(settings.psycopg_dsn) as conn:
                barrier.wait(timeout=30)
                for i in range(rounds):
                    k = 1 + (n + i) % 3
                    for j in range(k):
                        _append(conn, f"w{n}.{i}.{j}")
                    if i % 5 == 4:
                        conn.rollback()  # rolled back rows leave no gap
                    else:
                        conn.commit()
                        committed[n] += k
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    workers = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not errors, errors
    total = sum(committed)
    seqs = [s for (s,) in db.execute("SELECT seq FROM audit_log ORDER BY seq")]
    assert seqs == list(range(1, total + 1))
    result = verify(settings.psycopg_dsn)
    assert result.ok, result.problems
    assert result.rows == total


def test_an_open_transaction_does_not_hold_up_other_writers(db: psycopg.Connection,
                                                            settings: Settings) -> None:
    """The chain is extended at commit: an uncommitted audit row blocks nobody."""
    with psycopg.connect(settings.psycopg_dsn) as slow:
        slow_id = _append(slow, "slow")  # transaction left open
        db.execute("SET statement_timeout = '5s'")
        t0 = time.monotonic()
        fast_id = _append(db, "fast")  # autocommit: sealed now
        assert time.monotonic() - t0 < 2
        db.execute("RESET statement_timeout")
        slow.commit()
    assert _seq_of(db, fast_id) == 1
    assert _seq_of(db, slow_id) == 2  # chain order is commit order
    assert verify(settings.psycopg_dsn).ok


def test_update_delete_and_truncate_are_refused(db: psycopg.Connection, settings: Settings) -> None:
    row_id = _append(db, purpose="original")
    with psycopg.connect(settings.psycopg_dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.RaiseException, match="append-only: UPDATE refused"):
            conn.execute("UPDATE audit_log SET purpose = 'changed' WHERE id = %s", (row_id,))
        with pytest.raises(psycopg.errors.RaiseException, match="append-only: UPDATE refused"):
            conn.execute("UPDATE audit_log SET seq = 7, hash = NULL")
        with pytest.raises(psycopg.errors.RaiseException, match="append-only: DELETE refused"):
            conn.execute("DELETE FROM audit_log WHERE id = %s", (row_id,))
        with pytest.raises(psycopg.errors.RaiseException, match="append-only: TRUNCATE refused"):
            conn.execute("TRUNCATE audit_log")
        with pytest.raises(psycopg.errors.RaiseException, match="append-only: TRUNCATE refused"):
            conn.execute("TRUNCATE staff CASCADE")  # cascading to audit_log is refused too
        with pytest.raises(psycopg.errors.RaiseException, match="append-only: UPDATE refused"):
            conn.execute("SET ccs.audit_maintenance = on")  # maintenance covers TRUNCATE only
            conn.execute("UPDATE audit_log SET purpose = 'changed'")
    assert db.execute("SELECT purpose, seq FROM audit_log").fetchall() == [("original", 1)]
    assert verify(settings.psycopg_dsn).ok


def test_maintenance_truncate_starts_a_new_chain(db: psycopg.Connection, settings: Settings) -> None:
    for _ in range(3):
        _append(db)
    with psycopg.connect(settings.psycopg_dsn, autocommit=True) as conn:
        conn.execute("SET ccs.audit_maintenance = on")
        conn.execute("TRUNCATE audit_log")
    assert db.execute("SELECT seq, hash FROM audit_chain_head").fetchone() == (0, GENESIS)
    row_id = _append(db)
    assert db.execute("SELECT seq, prev_hash FROM audit_log WHERE id = %s",
                      (row_id,)).fetchone() == (1, GENESIS)
    assert verify(settings.psycopg_dsn).ok


@pytest.mark.parametrize("bypass", ["replica", "disable_trigger"])
def test_an_edited_row_is_found_and_named(db: psycopg.Connection, settings: Settings,
                                          bypass: str) -> None:
    ids = [_append(db, purpose="supervision") for _ in range(5)]
    victim = ids[2]
    if bypass == "replica":
        _superuser(db, "UPDATE audit_log SET purpose = 'nothing to see' WHERE id = %s", (victim,))
    else:
        with db.transaction():
            db.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_refuse_update")
            db.execute("UPDATE audit_log SET staff_id = NULL, remote = '1.2.3.4' WHERE id = %s",
                       (victim,))
            db.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_refuse_update")
    result = verify(settings.psycopg_dsn)
    assert not result.ok
    assert [(p.kind, p.seq, p.id) for p in result.problems] == [("edited", 3, victim)]
    assert f"row seq 3 (id {victim})" in result.problems[0].message
    with pytest.raises(psycopg.errors.RaiseException):  # the triggers are back on
        db.execute("UPDATE audit_log SET purpose = 'x'")


def test_a_row_rewritten_with_a_fresh_hash_breaks_the_next_link(db: psycopg.Connection,
                                                                settings: Settings) -> None:
    ids = [_append(db) for _ in range(4)]
    # The forger recomputes row 2's hash for the new content (the database's own function).
    _superuser(db, "UPDATE audit_log SET target = 'elsewhere' WHERE id = %s", (ids[1],))
    _superuser(db, """UPDATE audit_log a SET hash = sha256(prev_hash || audit_canonical(seq, a))
                       WHERE id = %s""", (ids[1],))
    result = verify(settings.psycopg_dsn)
    assert [(p.kind, p.seq, p.id) for p in result.problems] == [("broken_link", 3, ids[2])]


def test_deleted_rows_are_found(db: psycopg.Connection, settings: Settings) -> None:
    ids = [_append(db) for _ in range(6)]
    _superuser(db, "DELETE FROM audit_log WHERE id = ANY(%s)", ([ids[1], ids[2]],))
    result = verify(settings.psycopg_dsn)
    assert [(p.kind, p.seq) for p in result.problems] == [("missing", 2)]
    assert "seq 2..3 missing" in result.problems[0].message

    _superuser(db, "DELETE FROM audit_log WHERE id = %s", (ids[5],))  # the newest row
    result = verify(settings.psycopg_dsn)
    assert [(p.kind, p.seq) for p in result.problems] == [("missing", 2), ("missing", 6)]
    assert "newest rows were deleted" in result.problems[1].message


def test_reordered_and_unsealed_rows_are_found(db: psycopg.Connection, settings: Settings) -> None:
    ids = [_append(db) for _ in range(4)]
    _superuser(db, "UPDATE audit_log SET seq = -seq WHERE seq IN (2, 3)")  # swap rows 2 and 3
    _superuser(db, "UPDATE audit_log SET seq = CASE seq WHEN -2 THEN 3 ELSE 2 END WHERE seq < 0")
    problems = verify(settings.psycopg_dsn).problems
    assert ("broken_link", 2, ids[2]) in [(p.kind, p.seq, p.id) for p in problems]
    assert {p.id for p in problems if p.kind == "edited"} == {ids[1], ids[2]}

    with db.transaction():  # a row slipped in with the chain trigger off
        db.execute("SET LOCAL session_replication_role = replica")
        sneaked = _append(db, "sneaked")
    problems = verify(settings.psycopg_dsn).problems
    assert ("unsealed", None, sneaked) in [(p.kind, p.seq, p.id) for p in problems]


def test_cli_exit_codes_and_anchors(db: psycopg.Connection, settings: Settings) -> None:
    ids = [_append(db, purpose="p") for _ in range(4)]
    ok = _cli(settings, "verify")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("ok: 4 rows, head seq 4")

    head = _cli(settings, "head")
    assert head.returncode == 0, head.stderr
    anchor = json.loads(head.stdout)
    assert anchor["seq"] == 4
    assert Anchor.parse(anchor["anchor"]).hash == db.execute(
        "SELECT hash FROM audit_log WHERE seq = 4").fetchone()[0]  # type: ignore[index]
    assert _cli(settings, "verify", "--anchor", anchor["anchor"]).returncode == 0

    # A superuser rewrites a row and recomputes the whole chain and its head: the chain verifies
    # on its own, and only the anchor kept outside the database exposes the rewrite.
    _superuser(db, "UPDATE audit_log SET purpose = 'rewritten' WHERE id = %s", (ids[1],))
    with db.transaction():
        db.execute("SET LOCAL session_replication_role = replica")
        prev = GENESIS
        for seq in range(1, 5):
            row = db.execute("""UPDATE audit_log a SET prev_hash = %s,
                                       hash = sha256(%s || audit_canonical(seq, a))
                                 WHERE seq = %s RETURNING hash""", (prev, prev, seq)).fetchone()
            assert row is not None
            prev = row[0]
        db.execute("UPDATE audit_chain_head SET hash = %s", (prev,))
    assert _cli(settings, "verify").returncode == 0
    caught = _cli(settings, "verify", "--anchor", anchor["anchor"], "--json")
    assert caught.returncode == 1
    out = json.loads(caught.stdout)
    assert out["ok"] is False
    assert out["first_problem"]["kind"] == "anchor" and out["first_problem"]["seq"] == 4

    _superuser(db, "UPDATE audit_log SET action = 'other' WHERE id = %s", (ids[2],))
    tampered = _cli(settings, "verify")
    assert tampered.returncode == 1
    assert f"edited: row seq 3 (id {ids[2]})" in tampered.stdout

    bad = _cli(settings, "verify", "--anchor", "4:nothex")
    assert bad.returncode == 2 and "SEQ:HASH" in bad.stderr
