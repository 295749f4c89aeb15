"""Nothing lost, nothing stuck, nothing twice: concurrent writers of one device, Redis losing its
data, poison messages and outages, on the real database, Redis and broker."""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from pathlib import Path

import httpx
import orjson
import psycopg
import pytest
import redis
from prometheus_client import REGISTRY

from alerts.silences import COMM, SILENT, check_silences, reseed_if_lost
from geofence.crs import point_to_wgs84
from geofence.model import CRS
from ingest.mqtt_worker import MqttIngestWorker
from ingest.pipeline import Channel, Pipeline, RawMessage
from store.registry import Registry
from store.settings import Settings
from store.state import StateStore
from tests.conftest import JIANGAN, JIANGHAN, PASSWORD, Org, login
from tests.geo import deep_inside, near_border
from tests.services import Phone, api_server, forget_session, in_thread, until

HOME = deep_inside(JIANGAN)
SILENCE_S = 1800.0
STEP_S = 240.0  # a shallow fix this long after the last one is news (not a repeat)


def shallow(k: int) -> tuple[float, float]:
    """Just across the border (GCJ-02): an exit needs three such fixes spanning ten minutes,
    so a fix whose evidence were lost would delay or cancel the alert. Alternately 40 m
    further out and back: never a departure (that needs 50 m beyond both accuracies)."""
    return near_border(JIANGAN, JIANGHAN, 300 + 40 * (k % 2))


def _enrol(db: psycopg.Connection, org: Org, *devices: str) -> None:
    """The devices of the two supervisees, in turn (an alert is per person and kind)."""
    for k, d in enumerate(devices):
        db.execute("INSERT INTO devices (id, supervisee_id, secret_hash) VALUES (%s, %s, %s)",
                   (d, (org.supervisee_id, org.other_supervisee_id)[k % 2], f"h-{d}"))


def _native(device: str, lonlat: tuple[float, float], t: float, received_at: float | None = None
            ) -> RawMessage:
    body = {"time": t, "lon": lonlat[0], "lat": lonlat[1], "accuracy": 10.0, "crs": "gcj02"}
    return RawMessage(Channel.NATIVE_MQTT, orjson.dumps(body), device,
                      f"devices/{device}/location", received_at or time.time())


def _flush(r: redis.Redis, settings: Settings) -> int:
    """What a Redis restart without persistence does to this run's keys."""
    keys = list(r.scan_iter(match=settings.redis_prefix + "*", count=1000))
    return int(r.delete(*keys)) if keys else 0


def _exit_alerts(db: psycopg.Connection, device: str | None = None) -> list[tuple]:
    return db.execute("""SELECT device_id, count FROM alerts WHERE kind = 'area_exit'
                          AND (%s::text IS NULL OR device_id = %s) ORDER BY id""",
                      (device, device)).fetchall()


def _assert_state_is_the_fold_of_its_positions(db: psycopg.Connection, rds: redis.Redis,
                                               settings: Settings, device: str) -> None:
    """The engine is pure: the stored state must be what folding every fix that moved it (the
    positions not marked late) gives again. A lost update leaves a fix marked as folded whose
    evidence the state does not hold."""
    store = StateStore(rds, settings.redis_prefix)
    registry = Registry(rds, settings.redis_prefix)
    infos = registry.lookup(db, [device])
    refold = store.rebuild(db, [device], registry.subjects(infos), registry.zones, 86400.0)
    stored = store.load([device])[device]
    assert (stored.last_fix_time, stored.area) == (refold[device].last_fix_time,
                                                   refold[device].area)


def test_two_pipelines_folding_one_device_at_once_lose_no_evidence(
        settings: Settings, db, rds, org: Org):
    """Two writers (two workers, or a worker and an HTTP request) hold the next two fixes of
    one phone at the same moment, pair after pair: each fix is folded on the state the other
    left, or is late against it; the three-fix exit streak alerts exactly once."""
    _enrol(db, org, "dcas")
    a, b = Pipeline.connect(settings), Pipeline.connect(settings)
    try:
        t0 = float(int(time.time()) - 5 * 3600)  # whole seconds: positions keep microseconds
        a.process([_native("dcas", HOME, t0)])
        for k in range(6):  # six pairs: at least one fix of each pair is in order
            start = threading.Barrier(2)
            errors: list[BaseException] = []

            def send(p: Pipeline, t: float, start: threading.Barrier = start,
                     errors: list[BaseException] = errors) -> None:
                try:
                    start.wait()
                    p.process([_native("dcas", shallow(round((t - t0) / STEP_S)), t)])
                except BaseException as e:  # noqa: BLE001 - reported below
                    errors.append(e)

            ts = [threading.Thread(target=send, args=(p, t0 + STEP_S * (2 * k + j + 1)))
                  for j, p in enumerate((a, b))]
            for th in ts:
                th.start()
            for th in ts:
                th.join(30)
            assert errors == []
        assert db.execute("SELECT count(*), count(DISTINCT fix_time) FROM positions").fetchone() \
            == (13, 13)
        assert _exit_alerts(db) == [("dcas", 1)]
        _assert_state_is_the_fold_of_its_positions(db, rds, settings, "dcas")
    finally:
        a.close()
        b.close()


def test_an_exit_streak_goes_on_after_redis_lost_the_engine_state(
        settings: Settings, db, rds, org: Org):
    _enrol(db, org, "dflush")
    p = Pipeline.connect(settings)
    try:
        t0 = float(int(time.time()) - 5 * 3600)  # whole seconds: positions keep microseconds
        p.process([_native("dflush", HOME, t0)])
        for k in range(1, 4):
            p.process([_native("dflush", shallow(k), t0 + STEP_S * k)])
        assert _exit_alerts(db) == []  # three shallow fixes over 8 min: not yet an exit
        assert _flush(rds, settings) > 0
        # The fourth makes the streak span ten minutes: folded on the rebuilt streak, it alerts.
        p.process([_native("dflush", shallow(4), t0 + STEP_S * 4)])
        assert _exit_alerts(db) == [("dflush", 1)]
        p.process([_native("dflush", shallow(5), t0 + STEP_S * 5)])
        assert _exit_alerts(db) == [("dflush", 1)]  # and once only
        _assert_state_is_the_fold_of_its_positions(db, rds, settings, "dflush")
    finally:
        p.close()


def _silences(db: psycopg.Connection) -> list[tuple]:
    return db.execute("""SELECT device_id, kind, count, cleared_at IS NOT NULL FROM alerts
                          WHERE kind IN ('communication_failure', 'phone_off')
                          ORDER BY device_id, kind""").fetchall()


def test_after_redis_lost_the_deadlines_silent_phones_still_alert_and_only_once(
        settings: Settings, db, rds, org: Org):
    _enrol(db, org, "dold", "dnew")
    db.execute("UPDATE devices SET created_at = now() - interval '1 day'")  # enrolled yesterday
    prefix = settings.redis_prefix
    p = Pipeline.connect(settings)
    try:
        now = time.time()
        p.process([_native("dold", HOME, now - 4 * 3600 - 1, now - 4 * 3600)], now=now - 4 * 3600)
        assert check_silences(db, rds, prefix, now=now - 4 * 3600 + SILENCE_S + 1) == 1
        # dnew falls silent an hour ago; Redis is lost before anyone checked.
        p.process([_native("dnew", HOME, now - 3601, now - 3600)], now=now - 3600)
        assert _silences(db) == [("dold", "communication_failure", 1, False)]
        _flush(rds, settings)
        assert check_silences(db, rds, prefix, now=now) == 0  # nothing left to check...
        assert reseed_if_lost(db, rds, prefix, 2 * 86400.0) == 2  # ...until the scheduler reseeds
        assert reseed_if_lost(db, rds, prefix, 2 * 86400.0) == 0  # (once)
        assert rds.sismember(prefix + SILENT[COMM], "dold")  # its open alert waits for a message
        assert check_silences(db, rds, prefix, now=now) == 2
        assert _silences(db) == [("dnew", "communication_failure", 1, False),
                                 ("dold", "communication_failure", 1, False),  # not again
                                 ("dold", "phone_off", 1, False)]  # off for 4 h (3 h allowed)
        assert check_silences(db, rds, prefix, now=now + 1) == 0
        p.process([_native("dold", HOME, time.time())])  # the phone speaks: its silences end
        assert _silences(db) == [("dnew", "communication_failure", 1, False),
                                 ("dold", "communication_failure", 1, True),
                                 ("dold", "phone_off", 1, True)]
    finally:
        p.close()


def test_a_phone_enrolled_and_never_reporting_alerts(settings: Settings, db, rds, org: Org,
                                                     client):
    h = login(client, "jiangan-supervisor")
    r = client.post(f"/api/v1/supervisees/{org.supervisee_id}/devices", json={}, headers=h)
    assert r.status_code == 201, r.text
    device = r.json()["device_id"]
    deadline = rds.zscore(settings.redis_prefix + COMM, device)
    assert deadline == pytest.approx(time.time() + SILENCE_S, abs=60)
    assert check_silences(db, rds, settings.redis_prefix, now=deadline + 1) == 1
    assert db.execute("SELECT device_id, kind FROM alerts").fetchall() == [
        (device, "communication_failure")]


def test_make_services_leaves_redis_with_an_append_only_file(rds: redis.Redis):
    root = Path(__file__).resolve().parent.parent
    # A Redis with the rewrite percentage right but not the minimum size is set right too.
    rds.config_set("auto-aof-rewrite-percentage", 400)
    rds.config_set("auto-aof-rewrite-min-size", 64 * 1024 ** 2)
    out = subprocess.run(["bash", str(root / "deploy" / "ensure-services.sh")], cwd=root,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert rds.config_get("appendonly") == {"appendonly": "yes"}, out.stdout
    assert rds.config_get("appendfsync") == {"appendfsync": "everysec"}
    # Rewritten at five times the data and 1 GB, not every few seconds under load
    # (deploy/redis/redis.conf).
    assert rds.config_get("auto-aof-rewrite-percentage") == {"auto-aof-rewrite-percentage": "400"}
    assert rds.config_get("auto-aof-rewrite-min-size") == {
        "auto-aof-rewrite-min-size": str(1024 ** 3)}


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _subscribed(settings: Settings, db: psycopg.Connection, device: str) -> Phone:
    """A phone whose probe fix got through: the workers' subscription is in place."""
    phone = Phone(settings, device)
    t = time.time() - 8 * 3600  # older than what the tests send next
    for k in range(40):
        phone.report(*HOME, t + k).wait_for_publish(5)
        if until(lambda: db.execute("SELECT count(*) FROM positions").fetchone()[0] > 0, 0.5):
            return phone
    raise AssertionError("the ingest worker never subscribed")


def _stored(db: psycopg.Connection, device: str, *times: float) -> bool:
    """Whether every one of these fixes of the device is stored. Within a microsecond: the
    pipeline keeps round(t * 1e6) µs, while PostgreSQL's to_timestamp(t) subtracts its own
    epoch before rounding and lands 1 µs away for about 6 % of fix times."""
    return db.execute("""SELECT count(*) FROM unnest(%s::float8[]) AS x(t)
                          WHERE EXISTS (SELECT 1 FROM positions WHERE device_id = %s
                             AND fix_time BETWEEN to_timestamp(x.t) - interval '1 microsecond'
                                              AND to_timestamp(x.t) + interval '1 microsecond')""",
                      (list(times), device)).fetchone()[0] == len(times)


def test_a_message_that_breaks_the_pipeline_is_dead_lettered_alone_and_the_batch_goes_on(
        settings: Settings, db, rds, org: Org, monkeypatch):
    import ingest.pipeline

    _enrol(db, org, "dgood", "dpoison")  # (dpoison: the other supervisee's)
    real = ingest.pipeline.evaluate

    def evaluate(fixes, *args, **kwargs):  # type: ignore[no-untyped-def]
        if any(f.device_id == "dpoison" for f in fixes):
            raise ValueError("the engine chokes on dpoison")
        return real(fixes, *args, **kwargs)

    monkeypatch.setattr(ingest.pipeline, "evaluate", evaluate)
    client_id = f"{settings.mqtt_client_id}-poison"
    worker = MqttIngestWorker(settings, client_id=client_id)
    retried = _metric("ccs_ingest_batch_retries_total", reason="unexpected")
    poisoned = _metric("ccs_ingest_messages_dead_lettered_on_error_total")
    try:
        with in_thread(worker):
            assert worker.connected.wait(10)
            good = _subscribed(settings, db, "dgood")
            bad = Phone(settings, "dpoison")
            t = time.time() - 600
            sent = [good.report(*HOME, t), bad.report(*HOME, t + 1), good.report(*HOME, t + 2)]
            for info in sent:
                info.wait_for_publish(5)
            assert until(lambda: db.execute(
                "SELECT count(*) FROM dead_letters").fetchone()[0] == 1, 30)
            assert db.execute("SELECT device_id, reason, detail FROM dead_letters").fetchall() == [
                ("dpoison", "processing_error", "ValueError: the engine chokes on dpoison")]
            good.report(*HOME, t + 3).wait_for_publish(5)  # and the worker goes on
            assert until(lambda: db.execute("""SELECT count(*) FROM positions
                WHERE device_id = 'dgood' AND fix_time >= to_timestamp(%s)""",
                (t - 1,)).fetchone()[0] == 3, 30)  # (the probe fixes are hours older)
            good.close()
            bad.close()
        assert _metric("ccs_ingest_messages_dead_lettered_on_error_total") == poisoned + 1
        assert _metric("ccs_ingest_batch_retries_total", reason="unexpected") == retried
    finally:
        forget_session(settings, client_id)


@pytest.mark.parametrize("error", [
    redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
    redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
    psycopg.errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction"),
])
def test_a_service_that_refuses_writes_is_an_outage_not_a_bad_message(
        settings: Settings, db, org: Org, monkeypatch, error: Exception):
    """A Redis master demoted in a failover answers READONLY, one at its memory limit OOM, a
    PostgreSQL standby refuses writes: the batch is retried until the service takes writes
    again, as when it does not answer, never dead-lettered message by message (the fixes would
    be kept but never judged)."""
    import ingest.pipeline

    _enrol(db, org, "dfailover")
    real = ingest.pipeline.evaluate
    failures = [3]  # none until the probe went through

    def evaluate(fixes, *args, **kwargs):  # type: ignore[no-untyped-def]
        if failures[0] < 3:
            failures[0] += 1
            raise error
        return real(fixes, *args, **kwargs)

    monkeypatch.setattr(ingest.pipeline, "evaluate", evaluate)
    client_id = f"{settings.mqtt_client_id}-refuses"
    worker = MqttIngestWorker(settings.model_copy(update={
        "ingest_retry_min_s": 0.05, "ingest_retry_max_s": 0.2}), client_id=client_id)
    reason = "redis" if isinstance(error, redis.RedisError) else "database"
    try:
        with in_thread(worker):
            assert worker.connected.wait(10)
            phone = _subscribed(settings, db, "dfailover")
            retried = _metric("ccs_ingest_batch_retries_total", reason=reason)
            failures[0] = 0  # from now on the service refuses the next three batches
            t = time.time() - 600
            phone.report(*HOME, t).wait_for_publish(5)
            assert until(lambda: db.execute("""SELECT count(*) FROM positions
                WHERE device_id = 'dfailover' AND fix_time >= to_timestamp(%s)""",
                (t - 1,)).fetchone()[0] == 1, 30)
            phone.close()
        assert failures[0] == 3
        assert _metric("ccs_ingest_batch_retries_total", reason=reason) == retried + 3
        assert db.execute("SELECT count(*) FROM dead_letters").fetchone() == (0,)
    finally:
        forget_session(settings, client_id)


def test_a_real_redis_short_of_replicas_is_an_outage_however_the_command_was_sent(
        tmp_path: Path) -> None:
    """deploy/redis/redis.conf makes a master without a replica refuse writes (NOREPLICAS),
    a reply redis-py has no class for: whether the write was a command, a script or a
    pipeline's, the ingest paths must see an outage to retry, not a bad message."""
    from ingest.pipeline import transient_reason
    from tests.services import free_port

    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path), "--min-replicas-to-write", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        r = redis.Redis(port=port)
        assert until(lambda: _pings(r), 10)
        errors = []
        for write in (lambda: r.set("k", "v"),
                      lambda: r.eval("return redis.call('SET', KEYS[1], 'v')", 1, "k"),
                      lambda: r.register_script("return redis.call('SET', KEYS[1], 'v')")(
                          keys=["k"]),
                      lambda: r.pipeline(transaction=False).set("k", "v").execute(),
                      lambda: r.pipeline(transaction=True).set("k", "v").execute()):
            with pytest.raises(redis.RedisError) as e:
                write()
            errors.append(e.value)
        assert all("NOREPLICAS" in str(e) for e in errors)
        assert [transient_reason(e) for e in errors] == ["redis"] * len(errors)
        assert transient_reason(redis.ResponseError("ERR wrong number of arguments")) is None
        # A pipeline's error repeats the command: an argument cannot pass for the code.
        with pytest.raises(redis.ResponseError) as e:
            r.pipeline(transaction=False).zrange("OOM x", "a", "b").execute()
        assert "OOM x" in str(e.value) and transient_reason(e.value) is None
        r.close()
    finally:
        server.terminate()
        server.wait(10)


def _pings(r: redis.Redis) -> bool:
    try:
        return bool(r.ping())
    except redis.ConnectionError:
        return False


def test_an_unreachable_database_is_retried_with_backoff_and_counted(
        settings: Settings, db, org: Org, caplog):
    down = settings.model_copy(update={
        "database_url": "postgresql+psycopg://postgres@127.0.0.1:9/nowhere",
        "ingest_retry_min_s": 0.05, "ingest_retry_max_s": 0.2})
    client_id = f"{settings.mqtt_client_id}-down"
    worker = MqttIngestWorker(down, client_id=client_id)
    before = _metric("ccs_ingest_batch_retries_total", reason="database")
    caplog.set_level(logging.WARNING, logger="ingest.mqtt")
    try:
        with in_thread(worker):
            assert worker.connected.wait(10)
            phone = Phone(settings, "ddown")
            for k in range(40):  # until the subscription is in place and the batch fails
                phone.report(*HOME, time.time() - 60 + k).wait_for_publish(5)
                if until(lambda: _metric("ccs_ingest_batch_retries_total",
                                          reason="database") >= before + 4, 0.5):
                    break
            phone.close()
            assert _metric("ccs_ingest_batch_retries_total", reason="database") >= before + 4
            assert worker.processed == 0  # nothing acknowledged while nothing is stored
        delays = [r.getMessage().rsplit("retrying in ", 1)[1] for r in caplog.records
                  if "(database:" in r.getMessage()]
        assert delays[:4] == ["0.05 s", "0.10 s", "0.20 s", "0.20 s"]
    finally:
        forget_session(settings, client_id)


def test_two_ingest_workers_and_http_posts_of_one_phone_keep_its_state(
        settings: Settings, db, rds, org: Org):
    """Two MQTT workers share the subscription (each its own session) while the same phone's
    next fix arrives over HTTP at the same moment: every fix stored once, the exit streak
    alerts once, and the state is the fold of the positions it took in."""
    ids = [f"{settings.mqtt_client_id}-share{k}" for k in range(2)]
    # The shared subscription (the EMQX dispatch): both workers get this phone's reports.
    shared = settings.model_copy(update={"ingest_dispatch": "share"})
    workers = [MqttIngestWorker(shared, client_id=c) for c in ids]
    try:
        with api_server(settings) as base, in_thread(workers[0]), in_thread(workers[1]):
            assert all(w.connected.wait(10) for w in workers)
            token = httpx.post(f"{base}/api/v1/auth/token", data={
                "username": "jiangan-supervisor", "password": PASSWORD}).json()["access_token"]
            cred = httpx.post(f"{base}/api/v1/supervisees/{org.supervisee_id}/devices", json={},
                              headers={"Authorization": f"Bearer {token}"}).json()
            device, secret = cred["device_id"], cred["secret"]
            phone = _subscribed(settings, db, device)
            t0 = float(int(time.time()) - 4 * 3600)
            phone.report(*HOME, t0).wait_for_publish(5)
            assert until(lambda: _stored(db, device, t0), 30)
            with httpx.Client(base_url=base) as http:
                for k in range(6):  # MQTT has fix 2k+1, HTTP fix 2k+2, sent together
                    t = t0 + STEP_S * (2 * k + 1)
                    info = phone.report(*shallow(2 * k + 1), t)
                    # Traccar Client sends WGS-84.
                    lon, lat = point_to_wgs84(*shallow(2 * k + 2), CRS.GCJ02)
                    r = http.post(f"/api/v1/ingest/osmand/{secret}", params={
                        "id": device, "lat": lat, "lon": lon, "timestamp": int(t + STEP_S),
                        "accuracy": 10})
                    assert r.status_code == 200, r.text
                    info.wait_for_publish(5)
                    # The next pair goes out once both are in: order within a pair only.
                    assert until(lambda t=t: _stored(db, device, t, t + STEP_S), 30)
            phone.close()
        assert all(w.processed > 0 for w in workers)  # the load was shared
        assert db.execute("""SELECT count(*) FROM positions WHERE device_id = %s
                              AND fix_time >= to_timestamp(%s)""", (device, t0)).fetchone() \
            == (13,)  # each fix once
        assert _exit_alerts(db, device) == [(device, 1)]
        _assert_state_is_the_fold_of_its_positions(db, rds, settings, device)
    finally:
        for c in ids:
            forget_session(settings, c)


def test_an_ingest_worker_s_watermark_follows_what_it_committed_and_stops_while_it_is_away(
        settings: Settings, db, rds, org: Org):
    from alerts.silences import INGEST_WATERMARKS

    _enrol(db, org, "dwm")
    client_id = f"{settings.mqtt_client_id}-wm"
    worker = MqttIngestWorker(settings, client_id=client_id)

    def watermark() -> float | None:
        v = rds.hget(settings.redis_prefix + INGEST_WATERMARKS, client_id)
        return float(v.split()[0]) if v else None

    try:
        with in_thread(worker):
            assert worker.connected.wait(10)
            phone = Phone(settings, "dwm")
            sent = time.time()
            phone.report(*HOME, sent - 60).wait_for_publish(5)
            assert until(lambda: _stored(db, "dwm", sent - 60), 10)
            # Committed, then idle: the watermark passes the report and keeps up with the clock.
            assert until(lambda: (watermark() or 0) > sent, 10)
            assert until(lambda: (watermark() or 0) > time.time() - 2, 10)
            phone.close()
        stopped = watermark()
        assert stopped is not None
        time.sleep(1.5)
        assert watermark() == stopped  # away: it no longer claims to have heard anything
    finally:
        forget_session(settings, client_id)


def test_a_cached_engine_state_is_used_only_while_it_is_the_stored_one(
        settings: Settings, rds: redis.Redis):
    """A worker keeps the states it read or wrote decoded in memory, and Redis tells it whether
    each is still the stored one: another writer's newer state, or a state Redis lost, is never
    served from memory."""
    from geofence.model import DeviceState

    mine = StateStore(rds, settings.redis_prefix, cache=10)
    other = StateStore(rds, settings.redis_prefix)  # another writer, without a cache
    first = DeviceState(last_fix_time=1000.25)
    assert mine.save({"dcache": first}, {}) == [True]
    states, versions = mine.load_versioned(["dcache", "dnone"])
    assert states["dcache"] is first and versions == {"dcache": 1, "dnone": 0}
    assert (mine.cache_hits, mine.cache_misses) == (1, 1)

    assert other.save({"dcache": DeviceState(last_fix_time=2000.5)}, {"dcache": 1}) == [True]
    states, versions = mine.load_versioned(["dcache"])
    assert states["dcache"].last_fix_time == 2000.5 and versions == {"dcache": 2}
    assert mine.cache_hits == 1  # read from Redis, not from memory
    states, _ = mine.load_versioned(["dcache"])
    assert states["dcache"].last_fix_time == 2000.5 and mine.cache_hits == 2

    rds.delete(mine.key("dcache"))  # Redis lost it: no state, whatever memory holds
    assert mine.load_versioned(["dcache"]) == ({}, {"dcache": 0})

    many = {f"dmany{k}": DeviceState(last_fix_time=float(k)) for k in range(25)}
    assert all(mine.save(many, {}))
    assert len(mine._cache) <= 10
    states, versions = mine.load_versioned(list(many))
    assert {d: s.last_fix_time for d, s in states.items()} == {d: s.last_fix_time
                                                                for d, s in many.items()}
    assert set(versions.values()) == {1}


def test_a_cache_smaller_than_the_fleet_still_finds_states_when_phones_report_in_turn(
        settings: Settings, rds: redis.Redis):
    """Phones report in a cycle. With more devices than the cache holds, forgetting in insertion
    order forgot each device just before its next report: not one state was ever found in
    memory. Forgetting at random keeps about a quarter at 1.75 devices per place."""
    from geofence.model import DeviceState

    store = StateStore(rds, settings.redis_prefix, cache=400)
    devices = [f"dcycle{k}" for k in range(700)]
    found = asked = 0
    for cycle in range(4):
        for lo in range(0, len(devices), 50):  # batches, as the pipeline reads and writes them
            chunk = devices[lo:lo + 50]
            hits = store.cache_hits
            _, versions = store.load_versioned(chunk)
            if cycle >= 2:
                found += store.cache_hits - hits
                asked += len(chunk)
            store.save({d: DeviceState(last_fix_time=float(cycle)) for d in chunk}, versions)
        assert len(store._cache) <= 400
    assert 0.15 <= found / asked <= 0.45, (found, asked)
    rds.delete(*(store.key(d) for d in devices))


def test_a_stale_cached_state_forgotten_earlier_in_the_same_read_is_no_error(
        settings: Settings, rds: redis.Redis, monkeypatch: pytest.MonkeyPatch):
    """A read remembers the states it fetched as it goes, and a full cache forgets entries at
    random: the entry of a later device of the same read may be gone when its stale state is
    dropped (it raised KeyError, and the whole batch failed)."""
    from geofence.model import DeviceState

    mine = StateStore(rds, settings.redis_prefix, cache=4)
    other = StateStore(rds, settings.redis_prefix)
    held = [f"dforget{k}" for k in range(4)]
    assert all(mine.save({d: DeviceState(last_fix_time=1.0) for d in held}, {}))
    # Another writer changes them all, and a new device's state is stored.
    assert all(other.save({d: DeviceState(last_fix_time=2.0) for d in held},
                          dict.fromkeys(held, 1)))
    assert other.save({"dforget-new": DeviceState(last_fix_time=3.0)}, {}) == [True]
    # The new device comes first; remembering it forgets the last held device.
    monkeypatch.setattr(mine._evict, "sample",
                        lambda keys, k: [held[-1]] if held[-1] in keys else keys[:k])
    states, versions = mine.load_versioned(["dforget-new", *held])
    assert {d: s.last_fix_time for d, s in states.items()} == {
        "dforget-new": 3.0, **dict.fromkeys(held, 2.0)}
    assert versions == {"dforget-new": 1, **dict.fromkeys(held, 2)}
    rds.delete(*(mine.key(d) for d in [*held, "dforget-new"]))


def test_leases_and_states_are_taken_together_and_given_back_with_the_save(
        settings: Settings, rds: redis.Redis):
    """The pipeline's one round trip before a batch (`own_and_load`) and one after (`save` with
    `release`): a device another writer holds is neither owned nor read; a stale write is
    refused and its lease is still given back; a state stored by an older release (fix time,
    then JSON, no version) is read."""
    from geofence.model import DeviceState

    a = StateStore(rds, settings.redis_prefix, cache=10)
    b = StateStore(rds, settings.redis_prefix)
    assert b.save({"dl1": DeviceState(last_fix_time=5.0)}, {}) == [True]
    rds.set(b.key("dl3"), b"7.5 " + orjson.dumps(DeviceState(last_fix_time=7.5).to_dict()))
    assert a.own(["dl2"]) == {"dl2"}
    owned, states, versions = b.own_and_load(["dl1", "dl2", "dl3", "dl4"])
    assert owned == {"dl1", "dl3", "dl4"}  # dl2 is a's
    assert {d: s.last_fix_time for d, s in states.items()} == {"dl1": 5.0, "dl3": 7.5}
    assert versions == {"dl1": 1, "dl3": 0, "dl4": 0}
    assert a.own_and_load(["dl1"]) == (set(), {}, {})  # b holds it now
    saved = b.save({"dl1": DeviceState(last_fix_time=6.0), "dl3": DeviceState(last_fix_time=8.0)},
                   {"dl1": 0, "dl3": 0}, release=owned)  # dl1 read at version 1: stale
    assert saved == [False, True]
    assert rds.get(b.key("dl1")).startswith(b"5.0 1 ") and rds.get(b.key("dl3")).startswith(b"8.0 1 ")
    owned, states, versions = a.own_and_load(["dl1", "dl2", "dl3"])  # every lease given back
    assert owned == {"dl1", "dl2", "dl3"} and versions == {"dl1": 1, "dl2": 0, "dl3": 1}
    a.save({"dl2": DeviceState(last_fix_time=9.0)}, versions, release=owned)
    _, states, _ = a.own_and_load(["dl2"])  # a's own write: served from its cache
    assert states["dl2"].last_fix_time == 9.0 and a.cache_hits == 1
    a.release(["dl2"])
    assert not any(rds.exists(f"{settings.redis_prefix}own:{d}") for d in ("dl1", "dl2", "dl3", "dl4"))
    # A stored state that no longer decodes: the read fails, and the leases it took go back.
    rds.set(b.key("dl5"), b"1.0 1 {not json")
    with pytest.raises(orjson.JSONDecodeError):
        b.own_and_load(["dl5", "dl6"])
    assert not any(rds.exists(f"{settings.redis_prefix}own:{d}") for d in ("dl5", "dl6"))


def test_a_state_older_than_the_one_last_written_is_folded_again_as_if_lost(
        settings: Settings, rds: redis.Redis):
    """A Redis failover can forget the last writes the old master acknowledged: the promoted
    replica then holds an older state. The writer that wrote the newer one notices (its cache
    holds a higher version) and leaves the state out, with the stored version, so that the
    pipeline folds it again from positions and its compare-and-set still succeeds."""
    from geofence.model import DeviceState

    mine = StateStore(rds, settings.redis_prefix, cache=10)
    assert mine.save({"drewind": DeviceState(last_fix_time=1000.0)}, {}) == [True]
    before = rds.get(mine.key("drewind"))
    assert mine.save({"drewind": DeviceState(last_fix_time=1001.0)}, {"drewind": 1}) == [True]
    rds.set(mine.key("drewind"), before)  # what a replica that missed the last write holds

    assert mine.load_versioned(["drewind"]) == ({}, {"drewind": 1}) and mine.rewound == 1
    assert mine.save({"drewind": DeviceState(last_fix_time=1001.0)}, {"drewind": 1}) == [True]
    states, versions = mine.load_versioned(["drewind"])
    assert states["drewind"].last_fix_time == 1001.0 and versions == {"drewind": 2}
    assert mine.rewound == 1
