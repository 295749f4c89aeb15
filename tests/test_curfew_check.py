"""Curfews are judged when the window opens, by the alert worker's check, not only on fixes."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
import pytest
import redis

from alerts.checks import CurfewChecker
from ingest.pipeline import Pipeline
from store.registry import bump_config_version
from store.settings import Settings
from tests.conftest import JIANGAN, JIANGHAN, Org
from tests.geo import near_border
from tests.test_pipeline import fix, native

SHANGHAI = ZoneInfo("Asia/Shanghai")


def last_window_start() -> float:
    """The most recent 22:00 in Shanghai that is at least an hour ago."""
    local = datetime.now(SHANGHAI) - timedelta(hours=1)
    start = local.replace(hour=22, minute=0, second=0, microsecond=0)
    if start > local:
        start -= timedelta(days=1)
    return start.timestamp()


@pytest.fixture()
def curfewed(db: psycopg.Connection, org: Org, rds: redis.Redis, settings: Settings) -> str:
    """The Jiang'an supervisee's phone; they must be home (Jiang'an) from 22:00 to 06:00."""
    db.execute("INSERT INTO devices (id, supervisee_id, secret_hash) VALUES ('dcur', %s, 'h')",
               (org.supervisee_id,))
    db.execute("""INSERT INTO supervisee_zones (supervisee_id, zone_id, role, curfew_start, curfew_end)
                  VALUES (%s, %s, 'curfew', '22:00', '06:00')""",
               (org.supervisee_id, org.zone_ids[JIANGAN]))
    bump_config_version(rds, settings.redis_prefix)
    return "dcur"


def _breaches(db: psycopg.Connection) -> list[tuple]:
    return db.execute("""SELECT count, reason->>'rule', first_fix_time FROM alerts
                         WHERE kind = 'curfew_breach'""").fetchall()


def test_curfew_breach_is_raised_when_the_window_opens_with_the_person_out(
        settings, db, rds, curfewed):
    ws = last_window_start()
    p = Pipeline.connect(settings)
    checker = CurfewChecker(settings, psycopg.connect(settings.psycopg_dsn, autocommit=True), rds)
    try:
        # 1.5 km out: the area exit is decided at once, so the clock has no exit streak to
        # follow up and counts only the curfew.
        out = near_border(JIANGAN, JIANGHAN, 1500)
        p.process([native(curfewed, *[fix(out, ws - 1200 + k * 60) for k in range(3)])],
                  now=ws - 1000)
        assert _breaches(db) == []  # out in the evening: no curfew yet
        assert checker.run(now=ws - 60) == 0  # the window has not opened
        assert checker.run(now=ws + 20) == 1
        [(count, rule, since)] = _breaches(db)
        assert (count, rule) == (1, "curfew_breach.outside_when_window_opened")
        assert since.timestamp() == pytest.approx(ws)
        assert checker.run(now=ws + 40) == 0  # reported once per window
        assert _breaches(db)[0][0] == 1
    finally:
        p.close()
        checker.conn.close()


def test_curfew_with_no_recent_fix_asks_for_a_roll_call(settings, db, rds, curfewed):
    ws = last_window_start()
    checker = CurfewChecker(settings, psycopg.connect(settings.psycopg_dsn, autocommit=True), rds)
    try:
        assert checker.run(now=ws + 20) == 1
        topics = [t for (t,) in db.execute("SELECT topic FROM outbox")]
        assert topics == ["rollcall.requested"]
        assert _breaches(db) == []
        assert checker.run(now=ws + 40) == 0  # asked once per window
    finally:
        checker.conn.close()


def test_scheduler_curfew_check_runs_again_on_a_new_connection_after_its_own_was_cut(
        settings, db, rds, curfewed):
    # A PostgreSQL failover cuts every connection. The scheduler then opens a new one for each
    # job; the curfew check must use it rather than keep failing on the closed one.
    from alerts.scheduler import Scheduler

    s = Scheduler(settings)
    s.start()
    try:
        s.aps.pause()  # the jobs run below, one at a time, in this thread
        job = s.aps.get_job("curfews").func
        assert s.lease.held()
        job()
        assert s.runs.get("curfews") == 1
        pid = s._conns["curfews"].info.backend_pid
        db.execute("SELECT pg_terminate_backend(%s)", (pid,))
        job()  # fails on the cut connection, which `_guard` drops
        assert s.runs.get("curfews") == 1
        job()
        assert s.runs.get("curfews") == 2
    finally:
        s.stop()
