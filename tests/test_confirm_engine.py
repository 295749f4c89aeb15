"""Active confirmation end to end: the engine's own requests through the real pipeline, the
clock's follow-up of a silent phone (alerts/checks.py), and the answers that decide the exit.
Real PostgreSQL and Redis; time injected.
"""

from __future__ import annotations

import time

import psycopg
import pytest
import redis

from alerts.checks import CurfewChecker
from ingest.pipeline import RawMessage
from store.settings import Settings
from store.state import PENDING_EXITS
from tests.conftest import JIANGAN, JIANGHAN
from tests.geo import deep_inside, near_border
from tests.test_pipeline import alerts, device, fix, native, pipeline  # noqa: F401 (fixtures)

NOW = time.time() - 3600


def at(msg: RawMessage, received: float) -> RawMessage:
    """The message as it arrived at `received` (the injected clock)."""
    msg.received_at = received
    return msg


def requests(db: psycopg.Connection) -> list[tuple[str, str]]:
    return db.execute("SELECT status, rule FROM location_requests ORDER BY id").fetchall()


def test_a_suggestive_fix_asks_the_phone_and_a_deep_answer_decides(pipeline, device, db):  # noqa: F811
    pipeline.process([native(device, fix(deep_inside(JIANGAN), NOW))], now=NOW + 1)
    # 300 m into Jianghan: within a reflection's reach, so the engine asks for a fix now.
    pipeline.process([native(device, fix(near_border(JIANGAN, JIANGHAN, 300), NOW + 600))],
                     now=NOW + 601)
    assert requests(db) == [("sent", "confirm.area_exit_suggestive")]
    cmd = db.execute("SELECT payload FROM outbox WHERE topic = 'device.command'").fetchone()[0]
    assert cmd["command"]["type"] == "report_location" and cmd["device_ids"] == [device]
    assert alerts(db) == []
    # The answer 40 s later, 900 m in (the person went on): an exit, and the request answered.
    pipeline.process([at(native(device, fix(near_border(JIANGAN, JIANGHAN, 900), NOW + 640)),
                         NOW + 641)], now=NOW + 641)
    [(kind, status, *_rest)] = alerts(db)
    assert (kind, status) == ("area_exit", "open")
    assert requests(db) == [("answered", "confirm.area_exit_suggestive")]


def test_the_clock_asks_a_silent_phone_again_and_a_repeated_reflection_decides_nothing(
        pipeline, device, db, settings: Settings, rds: redis.Redis):  # noqa: F811
    pipeline.process([native(device, fix(deep_inside(JIANGAN), NOW))], now=NOW + 1)
    out = near_border(JIANGAN, JIANGHAN, 300)
    pipeline.process([native(device, fix(out, NOW + 600))], now=NOW + 601)
    assert rds.sismember(settings.redis_prefix + PENDING_EXITS, device)
    checker = CurfewChecker(settings, psycopg.connect(settings.psycopg_dsn, autocommit=True), rds)
    try:
        # Not yet: the phone spoke 100 s ago.
        assert checker.run(now=NOW + 700) == 0
        # Silent for 5 minutes and the streak undecided: asked again, on the clock.
        assert checker.run(now=NOW + 905) == 1
        assert [r for _, r in requests(db)] == ["confirm.area_exit_suggestive",
                                                "confirm.area_exit_follow_up"]
        # Its answer at the same place (a still phone repeats a reflection): no exit.
        pipeline.process([native(device, fix(out, NOW + 930))], now=NOW + 931)
        assert alerts(db) == []
        # Back inside: the streak ends and the device leaves the follow-up set.
        pipeline.process([native(device, fix(deep_inside(JIANGAN), NOW + 1500))], now=NOW + 1501)
        assert not rds.sismember(settings.redis_prefix + PENDING_EXITS, device)
        assert checker.run(now=NOW + 2000) == 0
    finally:
        checker.conn.close()


def test_the_clock_never_drops_a_streak_the_pipeline_stored_after_its_read(
        pipeline, device, db, settings: Settings, rds: redis.Redis):  # noqa: F811
    from store.state import StateStore

    store = StateStore(rds, settings.redis_prefix)
    pipeline.process([native(device, fix(deep_inside(JIANGAN), NOW))], now=NOW + 1)
    judged = store.load([device])[device]  # what a clock check read: no streak
    # Meanwhile the pipeline stores a fresh streak and puts the device in the set.
    pipeline.process([native(device, fix(near_border(JIANGAN, JIANGHAN, 300), NOW + 600))],
                     now=NOW + 601)
    key = settings.redis_prefix + PENDING_EXITS
    assert rds.sismember(key, device)
    assert store.drop_pending_exits({device: judged}) == 0  # the stale judgement drops nothing
    assert rds.sismember(key, device)
    assert store.drop_pending_exits({device: store.load([device])[device]}) == 1
    assert not rds.sismember(key, device)
    rds.sadd(key, "dgone")  # a device with no state at all leaves on a judgement of none
    assert store.drop_pending_exits({"dgone": None}) == 1


def test_a_follow_up_is_recorded_even_when_a_report_lands_while_the_clock_decides(
        pipeline, device, db, settings: Settings, rds: redis.Redis):  # noqa: F811
    from geofence.engine import tick
    from store.state import StateStore

    store = StateStore(rds, settings.redis_prefix)
    out = near_border(JIANGAN, JIANGHAN, 300)
    pipeline.process([native(device, fix(deep_inside(JIANGAN), NOW))], now=NOW + 1)
    pipeline.process([native(device, fix(out, NOW + 600))], now=NOW + 601)
    checker = CurfewChecker(settings, psycopg.connect(settings.psycopg_dsn, autocommit=True), rds)
    try:
        infos = checker.registry.lookup(checker.conn, [device])
        read, versions = store.load_versioned([device])
        result = tick(checker.registry.subjects(infos), checker.registry.zones, read, NOW + 905)
        assert [e.reason.rule for e in result.events] == ["confirm.area_exit_follow_up"]
        # A report of the same streak is stored before the clock saves what it did.
        pipeline.process([native(device, fix(out, NOW + 880))], now=NOW + 906)
        checker._save(result, versions, NOW + 905)
        st = store.load([device])[device]
        assert st.last_fix_time == pytest.approx(NOW + 880)  # the newer report is kept...
        assert st.area.followup == NOW + 905  # ...and knows the phone was asked
        assert NOW + 905 in st.requests
    finally:
        checker.conn.close()
