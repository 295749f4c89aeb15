"""Three silences, three alerts; and the scheduler's leadership passing on when its holder dies."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import orjson
import psycopg
import pytest
import redis

from alerts.silences import COMM, LOC, OFF, check_silences
from ingest.pipeline import Channel, Pipeline, RawMessage
from store.settings import Settings
from tests.conftest import JIANGAN, Org
from tests.geo import deep_inside
from tests.services import until, worker_env

SILENCE_S = 1800.0  # normal level: 15 min interval + 15 min buffer
OFF_S = 3 * 3600.0


@pytest.fixture()
def phone(db: psycopg.Connection, org: Org) -> str:
    db.execute("INSERT INTO devices (id, supervisee_id, secret_hash) VALUES ('dsil', %s, 'h')",
               (org.supervisee_id,))
    return "dsil"


def report(p: Pipeline, device: str, at: float, accuracy: float = 12.0) -> None:
    body = {"time": at - 1, "lon": deep_inside(JIANGAN)[0], "lat": deep_inside(JIANGAN)[1],
            "accuracy": accuracy, "crs": "gcj02"}
    p.process([RawMessage(Channel.NATIVE_MQTT, orjson.dumps(body), device, "t", received_at=at)],
              now=at)


def silence_alerts(db: psycopg.Connection) -> list[tuple]:
    return db.execute("""SELECT kind, count, cleared_at IS NOT NULL FROM alerts
                         WHERE kind IN ('communication_failure', 'location_failure', 'phone_off')
                         ORDER BY id""").fetchall()


def test_communication_failure_then_phone_off_then_cleared_by_the_next_message(
        settings: Settings, db, rds, phone):
    p = Pipeline.connect(settings)
    try:
        t0 = time.time() - 4 * 3600
        report(p, phone, t0)
        prefix = settings.redis_prefix
        assert rds.zscore(prefix + COMM, phone) == pytest.approx(t0 + SILENCE_S)
        assert check_silences(db, rds, prefix, now=t0 + SILENCE_S - 5) == 0
        assert check_silences(db, rds, prefix, now=t0 + SILENCE_S + 2) == 1
        assert silence_alerts(db) == [("communication_failure", 1, False)]
        assert check_silences(db, rds, prefix, now=t0 + SILENCE_S + 3) == 0  # once per silence
        assert check_silences(db, rds, prefix, now=t0 + OFF_S + 2) == 1
        assert silence_alerts(db) == [("communication_failure", 1, False), ("phone_off", 1, False)]
        report(p, phone, time.time())  # the phone speaks again
        assert silence_alerts(db) == [("communication_failure", 1, True), ("phone_off", 1, True)]
    finally:
        p.close()


def test_messages_without_a_usable_fix_are_a_location_failure_not_a_silence(
        settings: Settings, db, rds, phone):
    p = Pipeline.connect(settings)
    try:
        t0 = time.time() - 2 * 3600
        report(p, phone, t0)  # a good fix
        for k in range(1, 8):  # then only 900 m network fixes, every ten minutes
            report(p, phone, t0 + k * 600, accuracy=900)
        assert check_silences(db, rds, settings.redis_prefix, now=t0 + SILENCE_S + 60) == 1
        assert silence_alerts(db) == [("location_failure", 1, False)]
    finally:
        p.close()


def test_a_silent_phone_is_not_also_a_location_failure(settings: Settings, db, rds, phone):
    p = Pipeline.connect(settings)
    try:
        t0 = time.time() - 3600
        report(p, phone, t0, accuracy=900)  # one message without a usable fix, then nothing
        check_silences(db, rds, settings.redis_prefix, now=t0 + SILENCE_S + 60)
        assert [k for k, *_ in silence_alerts(db)] == ["communication_failure"]
        assert rds.zscore(settings.redis_prefix + LOC, phone) is None
    finally:
        p.close()


def test_a_silence_waits_for_the_ingest_workers_watermark(settings: Settings, db, rds, phone):
    """A deadline passed on the clock but not yet heard up to by every ingest worker waits: the
    report that would have moved it may sit in a killed or busy worker's queue. A worker gone
    for longer than the allowed lag holds nothing back."""
    from alerts.silences import INGEST_WATERMARKS, write_watermark

    p = Pipeline.connect(settings)
    prefix = settings.redis_prefix
    try:
        t0 = time.time() - 4 * 3600
        report(p, phone, t0)
        due = t0 + SILENCE_S
        write_watermark(rds, prefix, "ingest-a", due + 60, now=due + 60)
        write_watermark(rds, prefix, "ingest-b", due - 30, now=due + 50)  # behind: restarting
        assert check_silences(db, rds, prefix, now=due + 61) == 0
        assert silence_alerts(db) == []
        write_watermark(rds, prefix, "ingest-b", due + 1, now=due + 70)  # caught up
        assert check_silences(db, rds, prefix, now=due + 71) == 1
        reason = db.execute("SELECT reason FROM alerts").fetchone()[0]
        assert reason["ingest_heard_until"].startswith(
            time.strftime("%Y-%m-%dT%H:%M", time.gmtime(due + 1)))
        # A worker that wrote nothing for longer than max_lag_s counts as gone, and is dropped.
        write_watermark(rds, prefix, "ingest-b", due + 2, now=due + 80)
        report(p, phone, due + 100)  # the silence ends; a new deadline
        later = due + 100 + SILENCE_S
        assert check_silences(db, rds, prefix, now=later + 1, max_lag_s=300) == 1
        assert rds.hkeys(prefix + INGEST_WATERMARKS) == []
    finally:
        p.close()


def test_the_check_only_touches_what_is_due(settings: Settings, db, rds, org: Org):
    prefix = settings.redis_prefix
    now = time.time()
    rds.zadd(prefix + OFF, {f"dfar{k}": now + 3600 + k for k in range(50_000)})
    assert check_silences(db, rds, prefix, now=now) == 0
    assert rds.zcard(prefix + OFF) == 50_000  # nothing due, nothing read or removed


def _leader(rds: redis.Redis, settings: Settings) -> str | None:
    v = rds.get(settings.redis_prefix + "scheduler:leader")
    return None if v is None else v.decode()


def test_killed_scheduler_leader_is_replaced_within_seconds_and_nothing_fires_twice(
        settings: Settings, db, rds, org: Org, tmp_path):
    for d in ("dsil1", "dsil2"):
        db.execute("INSERT INTO devices (id, supervisee_id, secret_hash) VALUES (%s, %s, %s)",
                   (d, org.supervisee_id if d == "dsil1" else org.other_supervisee_id, d))
    env = worker_env(settings, "unused")
    log = open(tmp_path / "alerts.log", "ab")  # noqa: SIM115 - closed in the finally below
    procs = [subprocess.Popen([sys.executable, "-m", "alerts"], env=env, stdout=log,
                              stderr=subprocess.STDOUT) for _ in range(2)]
    try:
        assert until(lambda: _leader(rds, settings) is not None, 20), "no scheduler took the lease"
        leader = _leader(rds, settings)
        lead = next(p for p in procs if f":{p.pid}:" in leader)
        rds.zadd(settings.redis_prefix + COMM, {"dsil1": time.time() - 1})
        assert until(lambda: len(silence_alerts(db)) == 1, 15), (tmp_path / "alerts.log").read_text()
        lead.send_signal(signal.SIGKILL)
        lead.wait(10)
        killed_at = time.monotonic()
        rds.zadd(settings.redis_prefix + COMM, {"dsil2": time.time() - 1})
        assert until(lambda: len(silence_alerts(db)) == 2, 20)
        takeover = time.monotonic() - killed_at
        assert takeover < 10  # the lease is 5 s long
        new_leader = _leader(rds, settings)
        assert new_leader is not None and f":{lead.pid}:" not in new_leader
        time.sleep(2)  # let the new leader run its checks a few more times
        rows = db.execute("""SELECT device_id, count FROM alerts
                             WHERE kind = 'communication_failure' ORDER BY id""").fetchall()
        assert rows == [("dsil1", 1), ("dsil2", 1)]
        # Jobs are idempotent, so the alerts alone would not show a second leader: the log does.
        # Exactly one process led at a time: the first, then (after the kill) the other.
        leads = [line.split()[-2] for line in (tmp_path / "alerts.log").read_text().splitlines()
                 if line.endswith(" leads")]
        assert [int(t.split(":")[1]) for t in leads] == [
            lead.pid, next(p.pid for p in procs if p is not lead)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(15)
        log.close()


def test_two_leaders_checking_the_same_deadlines_at_once_raise_each_alert_once(
        settings: Settings, db, rds, org: Org):
    """Should the lease ever fail (a paused leader waking after its successor took over), two
    checks run at once on the same due deadlines: each silence still opens one alert with one
    outbox row."""
    import threading

    devices = [f"dtwo{k}" for k in range(2)]
    for d, sup in zip(devices, (org.supervisee_id, org.other_supervisee_id), strict=True):
        db.execute("INSERT INTO devices (id, supervisee_id, secret_hash) VALUES (%s, %s, %s)",
                   (d, sup, d))
    rds.zadd(settings.redis_prefix + COMM, dict.fromkeys(devices, time.time() - 1))
    start, raised = threading.Barrier(2), []

    def leader() -> None:
        with psycopg.connect(settings.psycopg_dsn, autocommit=True) as conn, \
                redis.Redis.from_url(settings.redis_url) as r:
            start.wait()
            raised.append(check_silences(conn, r, settings.redis_prefix))

    threads = [threading.Thread(target=leader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(raised) in ([0, 2], [1, 1])  # between them, each alert once
    assert db.execute("""SELECT device_id, count FROM alerts ORDER BY device_id""").fetchall() \
        == [("dtwo0", 1), ("dtwo1", 1)]
    assert db.execute("SELECT topic, count(*) FROM outbox GROUP BY 1").fetchall() == [
        ("alert.opened", 2)]


def test_location_failure_ends_with_a_usable_fix_not_with_any_message(
        settings: Settings, db, rds, phone):
    p = Pipeline.connect(settings)
    try:
        t0 = time.time() - 2 * 3600
        report(p, phone, t0)
        for k in range(1, 8):
            report(p, phone, t0 + k * 600, accuracy=900)
        check_silences(db, rds, settings.redis_prefix, now=t0 + SILENCE_S + 60)
        report(p, phone, time.time() - 60, accuracy=900)  # still no usable fix
        assert silence_alerts(db) == [("location_failure", 1, False)]
        report(p, phone, time.time(), accuracy=15)
        assert silence_alerts(db) == [("location_failure", 1, True)]
    finally:
        p.close()
