"""The ingest pipeline on the real database and Redis: decode, decide, persist, alert."""

from __future__ import annotations

import time

import orjson
import psycopg
import pytest

from ingest.pipeline import Channel, Pipeline, RawMessage
from store.settings import Settings
from tests.conftest import JIANGAN, JIANGHAN, Org
from tests.geo import deep_inside, near_border

NOW = time.time()


@pytest.fixture()
def device(db: psycopg.Connection, org: Org) -> str:
    """An enrolled phone of the Jiang'an supervisee."""
    db.execute("INSERT INTO devices (id, supervisee_id, secret_hash) VALUES ('dtest', %s, 'x')",
               (org.supervisee_id,))
    return "dtest"


@pytest.fixture()
def pipeline(settings: Settings, db: psycopg.Connection) -> Pipeline:
    p = Pipeline.connect(settings)
    yield p
    p.close()


def fix(lonlat: tuple[float, float], t: float, acc: float | None = 10.0, **kw: object) -> dict:
    d = {"time": t, "lon": lonlat[0], "lat": lonlat[1], "crs": "gcj02", **kw}
    if acc is not None:
        d["accuracy"] = acc
    return d


def native(device: str, *fixes: dict) -> RawMessage:
    body = fixes[0] if len(fixes) == 1 else list(fixes)
    return RawMessage(Channel.NATIVE_MQTT, orjson.dumps(body), device,
                      f"devices/{device}/location")


def alerts(db: psycopg.Connection) -> list[tuple]:
    return db.execute(
        "SELECT kind, status, count, supervisee_id, reason, device_id FROM alerts ORDER BY id"
    ).fetchall()


def test_fix_inside_home_area_is_stored_without_alert(pipeline, device, db):
    res = pipeline.process([native(device, fix(deep_inside(JIANGAN), NOW - 60))], now=NOW)
    assert res[0].ok and res[0].accepted == 1
    row = db.execute("SELECT membership, crs, late FROM positions").fetchone()
    assert row == ("inside", "gcj02", False)
    assert alerts(db) == []


def away(t0: float, n: int = 3, gap: float = 60.0, acc: float = 30.0) -> list[dict]:
    """n fixes 700 m into the neighbouring district (beyond a reflection's 600 m reach, so two
    of them are an exit), `gap` seconds apart from t0."""
    return [fix(near_border(JIANGAN, JIANGHAN, 700), t0 + k * gap, acc=acc) for k in range(n)]


def home(t0: float, n: int = 3, gap: float = 60.0) -> list[dict]:
    return [fix(deep_inside(JIANGAN), t0 + k * gap) for k in range(n)]


def test_exit_needs_accuracy_circle_wholly_outside_for_n_fixes(pipeline, device, db, org):
    pipeline.process([native(device, fix(deep_inside(JIANGAN), NOW - 400))], now=NOW)
    first, second = away(NOW - 300, n=2)
    pipeline.process([native(device, first)], now=NOW)
    assert alerts(db) == []  # one deep fix is not yet a violation (the phone is asked instead)
    pipeline.process([native(device, second)], now=NOW)
    [(kind, status, count, sup, reason, dev)] = alerts(db)
    assert (kind, status, count, sup, dev) == ("area_exit", "open", 1, org.supervisee_id, device)
    assert reason["zone_id"] == org.zone_ids[JIANGAN]
    assert reason["membership"] == "outside"
    assert reason["distance_m"] > 30  # farther from the border than the accuracy radius
    assert reason["accuracy_m"] == 30
    assert reason["profile"] == "national-2020@4"
    since = db.execute("SELECT first_fix_time FROM alerts").fetchone()[0].timestamp()
    assert since == pytest.approx(NOW - 300)  # the violation began with the first evidence


def test_circle_straddling_the_border_decides_nothing(pipeline, device, db):
    # 60 m outside, 150 m accuracy: the person may well be inside; 60 m inside, likewise.
    pipeline.process([native(device, fix(near_border(JIANGAN, JIANGHAN, 60), NOW - 60, acc=150),
                             fix(near_border(JIANGAN, JIANGHAN, -60), NOW - 50, acc=150),
                             fix(near_border(JIANGAN, JIANGHAN, 60), NOW - 40, acc=40))],
                     now=NOW)
    rows = db.execute("SELECT membership FROM positions ORDER BY fix_time").fetchall()
    assert rows == [("border",), ("border",), ("outside",)]
    assert alerts(db) == []  # one sharp fix is evidence, not yet a violation


def test_fix_without_usable_accuracy_decides_nothing(pipeline, device, db):
    pipeline.process([native(device, fix(deep_inside(JIANGHAN), NOW - 90, acc=None)),
                      native(device, fix(deep_inside(JIANGHAN), NOW - 60, acc=900))], now=NOW)
    rows = db.execute("SELECT membership FROM positions ORDER BY fix_time").fetchall()
    assert rows == [("undecidable",), ("undecidable",)]
    assert alerts(db) == []


def test_repeated_exits_update_the_one_open_alert(pipeline, device, db):
    t = NOW - 1800
    for k, run in enumerate([away, home, away, home, away]):
        pipeline.process([native(device, *run(t + k * 300))], now=NOW)
    [(kind, status, count, *_)] = alerts(db)
    assert (kind, status, count) == ("area_exit", "open", 3)
    # (each exit's first fix also asked the phone for a fix: device commands, left aside here)
    outbox = db.execute("SELECT topic FROM outbox WHERE topic LIKE 'alert.%' ORDER BY id").fetchall()
    assert [t for (t,) in outbox] == ["alert.opened", "alert.cleared", "alert.updated",
                                      "alert.cleared", "alert.updated"]


def test_buffered_fixes_in_one_message_are_evaluated_in_fix_time_order(pipeline, device, db):
    # Sent newest first: sorted by fix time, the person went out for three minutes and came back.
    fixes = home(NOW - 700, n=1) + away(NOW - 430) + home(NOW - 130)
    pipeline.process([native(device, *reversed(fixes))], now=NOW)
    [(kind, status, count, *_)] = alerts(db)
    assert (kind, count) == ("area_exit", 1)
    cleared = db.execute("SELECT cleared_at FROM alerts").fetchone()[0]
    assert cleared.timestamp() == pytest.approx(NOW - 10)  # back after three inside fixes


def test_fix_older_than_device_state_is_stored_late_and_decides_nothing(pipeline, device, db):
    # 300 m beyond the border: one such fix (a reflection could make it) decides nothing alone.
    inside, outside = deep_inside(JIANGAN), near_border(JIANGAN, JIANGHAN, 300)
    pipeline.process([native(device, fix(inside, NOW - 10))], now=NOW)
    pipeline.process([native(device, fix(outside, NOW - 100))], now=NOW)
    rows = db.execute("SELECT late, membership FROM positions ORDER BY fix_time").fetchall()
    assert rows == [(True, "outside"), (False, "inside")]
    assert alerts(db) == []


def test_redelivered_message_is_recognised_as_duplicate(pipeline, device, db):
    msg = native(device, *away(NOW - 300))
    first = pipeline.process([msg], now=NOW)[0]
    again = pipeline.process([msg, msg], now=NOW)
    assert (first.accepted, first.duplicates) == (3, 0)
    assert [(r.accepted, r.duplicates) for r in again] == [(0, 3), (0, 3)]
    assert db.execute("SELECT count(*) FROM positions").fetchone() == (3,)
    assert [a[2] for a in alerts(db)] == [1]  # the replay did not bump the alert


def test_a_batch_replayed_after_its_commit_was_in_doubt_opens_no_second_alert(
        pipeline, device, db, rds, settings):
    # The primary died while the batch's COMMIT was in flight, after the synchronous standby
    # had it (tests/test_pg_failover.py): the new primary holds the batch, but the worker heard
    # of no commit, so it wrote no engine state and acknowledged nothing. The broker delivers
    # the batch again, to a new pipeline (the worker drops its connections on the failure)
    # that folds it from the state before it.
    key = f"{settings.redis_prefix}st:{device}"
    pipeline.process([native(device, *home(NOW - 900))], now=NOW)
    before = rds.get(key)
    assert before is not None
    msg = native(device, *away(NOW - 300))
    pipeline.process([msg], now=NOW)
    rds.set(key, before)  # the state write that never happened
    replay = Pipeline.connect(settings)
    try:
        [again] = replay.process([msg], now=NOW)
    finally:
        replay.close()
    assert (again.accepted, again.duplicates) == (0, 3)
    assert db.execute("SELECT count(*) FROM positions").fetchone() == (6,)
    # The exit the replay decides again finds the alert open (ON CONFLICT on the person and
    # kind): still one alert, opened once, counted once.
    assert [(a[0], a[1], a[2]) for a in alerts(db)] == [("area_exit", "open", 1)]
    assert db.execute("SELECT count(*) FROM outbox WHERE topic = 'alert.opened'"
                      ).fetchone() == (1,)


def test_unknown_device_is_dead_lettered_with_raw_bytes(pipeline, db, org):
    msg = native("dghost", fix(deep_inside(JIANGAN), NOW - 60))
    [res] = pipeline.process([msg], now=NOW)
    assert not res.ok and res.reason == "unknown_device"
    raw, reason, dev, topic = db.execute(
        "SELECT raw, reason, device_id, topic FROM dead_letters").fetchone()
    assert (bytes(raw), reason, dev, topic) == (msg.payload, "unknown_device", "dghost",
                                                "devices/dghost/location")
    assert db.execute("SELECT count(*) FROM positions").fetchone() == (0,)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "bad_json"),
        (orjson.dumps({"time": NOW, "lat": 95.0, "lon": 114.3, "accuracy": 5}),
         "impossible_coordinates"),
        (orjson.dumps({"time": NOW, "lat": "north", "lon": 114.3}), "bad_type"),
        (orjson.dumps({"lat": 30.6, "lon": 114.3}), "missing_field"),
        (orjson.dumps({"time": NOW + 86400, "lat": 30.6, "lon": 114.3}), "future_time"),
        (b"x" * (64 * 1024 + 1), "oversized"),
    ],
    # Named by the reason: the same in every process (the payloads hold the time of collection).
    ids=["bad_json", "impossible_coordinates", "bad_type", "missing_field", "future_time",
         "oversized"],
)
def test_bad_input_is_dead_lettered_with_its_reason(pipeline, device, db, payload, reason):
    good = native(device, fix(deep_inside(JIANGAN), NOW - 60))
    bad = RawMessage(Channel.NATIVE_MQTT, payload, device, f"devices/{device}/location")
    res = pipeline.process([bad, good], now=NOW)
    assert (res[0].ok, res[0].reason) == (False, reason)
    assert res[1].ok and res[1].accepted == 1  # one bad message does not sink the batch
    stored = db.execute("SELECT reason, raw_size FROM dead_letters").fetchall()
    assert stored == [(reason, len(payload))]


def test_owntracks_other_message_types_are_recorded_not_rejected(pipeline, device, db):
    msg = RawMessage(Channel.OWNTRACKS_MQTT, orjson.dumps({"_type": "lwt", "tst": int(NOW)}),
                     device, f"owntracks/u/{device}")
    [res] = pipeline.process([msg], now=NOW)
    assert res.ok and res.other == 1
    assert db.execute("SELECT msg_type, device_id FROM device_messages").fetchall() == [
        ("lwt", device)]
    assert db.execute("SELECT count(*) FROM dead_letters").fetchone() == (0,)


def test_revoked_device_is_refused_at_once(pipeline, device, db, rds, settings):
    from store.registry import bump_config_version

    pipeline.process([native(device, fix(deep_inside(JIANGAN), NOW - 90))], now=NOW)
    db.execute("UPDATE devices SET active = false WHERE id = %s", (device,))
    bump_config_version(rds, settings.redis_prefix)
    [res] = pipeline.process([native(device, fix(deep_inside(JIANGAN), NOW - 60))], now=NOW)
    assert (res.ok, res.reason) == (False, "unknown_device")


def test_an_older_fix_never_replaces_the_state_of_a_newer_one(settings, device, db, rds):
    a, b = Pipeline.connect(settings), Pipeline.connect(settings)
    try:
        outside, inside = near_border(JIANGAN, JIANGHAN, 300), deep_inside(JIANGAN)
        # Worker b decides a later fix first; worker a then saves a state for an older fix.
        b.process([native(device, fix(outside, NOW - 10))], now=NOW)
        a.process([native(device, fix(inside, NOW - 50))], now=NOW)
        t, version, body = rds.get(a.state_key(device)).split(b" ", 2)
        state = orjson.loads(body)
        assert (float(t), version) == (pytest.approx(NOW - 10), b"1")  # written once
        assert state["t"] == pytest.approx(NOW - 10)
        assert state["area"][:3] == ["unknown", None, 1]  # b's evidence, not a's older fix
    finally:
        a.close()
        b.close()


def test_positions_are_partitioned_by_day(pipeline, device, db):
    pipeline.process([native(device, fix(deep_inside(JIANGAN), NOW - 60))], now=NOW)
    part = db.execute("SELECT tableoid::regclass::text FROM positions").fetchone()[0]
    assert part.startswith("positions_p2") and part != "positions_default"
    # A buffered fix from a week ago lands in its own day's partition (made 31 days back).
    pipeline.process([native(device, fix(deep_inside(JIANGAN), NOW - 7 * 86400))], now=NOW)
    parts = {p for (p,) in db.execute("SELECT tableoid::regclass::text FROM positions")}
    assert len(parts) == 2 and "positions_default" not in parts


def test_stored_fix_keeps_raw_and_wgs84_coordinates(pipeline, device, db):
    lon, lat = deep_inside(JIANGAN)
    pipeline.process([native(device, fix((lon, lat), NOW - 60))], now=NOW)
    raw_lon, raw_lat, wlon, wlat = db.execute(
        "SELECT raw_lon, raw_lat, lon, lat FROM positions").fetchone()
    assert (raw_lon, raw_lat) == (lon, lat)
    # GCJ-02 is offset from WGS-84 by a few hundred metres around Wuhan.
    assert 0.002 < abs(raw_lon - wlon) + abs(raw_lat - wlat) < 0.02


def test_replayed_fixes_do_not_reopen_a_resolved_alert(pipeline, device, db):
    msg = native(device, *away(NOW - 300))
    pipeline.process([msg], now=NOW)
    db.execute("UPDATE alerts SET status = 'resolved', resolution_note = 'seen'")
    [res] = pipeline.process([msg], now=NOW)  # the broker redelivers the same message
    assert (res.accepted, res.duplicates) == (0, 3)
    assert db.execute("SELECT count(*), min(status) FROM alerts").fetchone() == (1, "resolved")


def test_buffered_upload_older_than_a_live_fix_still_reveals_the_past_exit(pipeline, device, db):
    pipeline.process([native(device, fix(deep_inside(JIANGAN), NOW - 30))], now=NOW)  # live
    pipeline.process([native(device, *away(NOW - 3600))], now=NOW)  # then the offline hour
    [(kind, status, count, _, reason, _)] = alerts(db)
    late, first = db.execute("SELECT late, first_fix_time FROM alerts").fetchone()
    assert (kind, late) == ("area_exit", True)
    assert first.timestamp() == pytest.approx(NOW - 3600)
    assert reason["detected_at"] > reason["fix_time"]  # both times are kept


@pytest.mark.parametrize("override", [{"altitude": 1e300}, {"speed": 1e9}, {"accuracy": 1e12},
                                      {"provider": "gps\u0000"}])
def test_values_the_database_cannot_hold_are_rejected_before_the_batch(pipeline, device, db,
                                                                       override):
    bad = native(device, {**fix(deep_inside(JIANGAN), NOW - 60), **override})
    good = native(device, fix(deep_inside(JIANGAN), NOW - 30))
    res = pipeline.process([bad, good], now=NOW)
    assert (res[0].ok, res[0].reason) == (False, "bad_value")
    assert res[1].accepted == 1  # the rest of the batch is stored


def test_nul_characters_in_other_owntracks_messages_are_kept_not_fatal(pipeline, device, db):
    msg = RawMessage(Channel.OWNTRACKS_MQTT, b'{"_type": "card", "name": "a\\u0000b"}', device,
                     f"owntracks/u/{device}")
    [res] = pipeline.process([msg], now=NOW)
    assert res.ok and res.other == 1
    assert db.execute("SELECT payload->>'name' FROM device_messages").fetchone() == ("a\ufffdb",)


@pytest.mark.parametrize("provider", ["gps", "a\tb", "back\\slash", "new\nline\r", "\\N", "\u96fb\u4fe1",
                                      None])
def test_every_field_is_stored_as_decoded(pipeline, device, db, provider):
    """The positions COPY is written by hand (`Pipeline._write_positions`): text with COPY's
    separators and escapes, times to the microsecond, and every number come back unchanged."""
    lon, lat = deep_inside(JIANGAN)
    t = NOW - 60 + 0.123457  # a microsecond the float rounds up to
    extra = {"altitude": -12.5, "speed": 0.1, "heading": 359.9, "battery": 7.0, "seq": 2**62,
             "mock": True, "provider": provider}
    [res] = pipeline.process([native(device, fix((lon, lat), t, 1e-31, **extra))],  # 1e-31: a
                             now=NOW + 0.5)  # real cannot hold it, stored as 0

    assert res.accepted == 1
    row = db.execute(
        """SELECT device_id, supervisee_id, fix_time, received_at, raw_lon, raw_lat, crs, accuracy,
                  altitude, speed, heading, battery, provider, source, mock, seq, late, membership
             FROM positions""").fetchone()
    fix_time = row[2].timestamp()
    assert round(fix_time * 1e6) == round(t * 1e6)
    assert row[3] is not None and abs(row[3].timestamp() - time.time()) < 600
    assert row[4:] == (lon, lat, "gcj02", 0.0, -12.5, pytest.approx(0.1), pytest.approx(359.9),
                       7.0, provider, "native_mqtt", True, 2**62, False, "undecidable")
    [again] = pipeline.process([native(device, fix((lon, lat), t, 1e-31, **extra))], now=NOW + 0.5)
    assert (again.accepted, again.duplicates) == (0, 1)  # the stored key is the decoded one


def test_the_pipeline_plans_no_parallel_workers(pipeline, db):
    # A batch's look-ups are small: helper processes per batch cost more than they save (a
    # registry warm-up without planner statistics started two per batch).
    cheap = ("SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; "
             "SET min_parallel_table_scan_size = 0")
    query = "EXPLAIN SELECT count(*) FROM devices"
    db.execute(cheap)  # control: with parallel plans made free, another connection uses one
    assert any("Gather" in row[0] for row in db.execute(query).fetchall())
    pipeline.conn.execute(cheap)
    assert not any("Gather" in row[0] for row in pipeline.conn.execute(query).fetchall())
