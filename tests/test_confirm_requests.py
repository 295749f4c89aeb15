"""Active confirmation (alerts/confirm.py): the engine's request for a fresh fix is recorded,
limited per device and hour, published to the phone by the alert worker, answered by a later
usable fix through the real pipeline, or expired without an alert. Real services; time injected.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import psycopg
import pytest
import redis
from paho.mqtt.enums import CallbackAPIVersion

from alerts import confirm
from alerts.service import AlertTarget, record_events
from alerts.worker import AlertWorker
from geofence.model import Event, EventKind, Membership, Reason
from ingest.pipeline import Channel, Pipeline, RawMessage
from store.settings import Settings
from tests.conftest import JIANGAN, Org, login
from tests.geo import deep_inside
from tests.services import in_thread
from tests.test_api import API

DEV = "dconf"
T = time.time() - 3 * 3600  # the engine's `now` of the first request; fixes follow it


@pytest.fixture()
def phone(db: psycopg.Connection, org: Org) -> str:
    db.execute("INSERT INTO devices (id, supervisee_id, secret_hash) VALUES (%s, %s, 'h')",
               (DEV, org.supervisee_id))
    return DEV


def ask(now: float, device: str = DEV, rule: str = "confirm.area_exit") -> Event:
    """A LOCATION_REQUEST as the engine emits it: about a suggestive fix 30 s before `now`."""
    lon, lat = deep_inside(JIANGAN)
    reason = Reason(rule, 7, Membership.BORDER, 140.0, 90.0, (("exit_fixes", 1),))
    return Event(EventKind.LOCATION_REQUEST, device, now - 30, lon, lat, reason, since=now - 30,
                 detected_at=now)


def record(db: psycopg.Connection, org: Org, rds: redis.Redis | None, settings: Settings,
           *events: Event) -> None:
    """The events through `record_events`, in one transaction as the pipeline does."""
    targets = {ev.device_id: AlertTarget(org.supervisee_id, org.office_ids[JIANGAN])
               for ev in events}
    with db.transaction():
        record_events(db, events, targets, rds, settings.redis_prefix)


def requests(db: psycopg.Connection) -> list[tuple[Any, ...]]:
    return db.execute("SELECT id, status, throttle_reason FROM location_requests ORDER BY id"
                      ).fetchall()


def fix_msg(t: float, received: float, acc: float = 10.0, mock: bool = False) -> RawMessage:
    lon, lat = deep_inside(JIANGAN)
    body = {"time": t, "lon": lon, "lat": lat, "accuracy": acc, "crs": "gcj02", "mock": mock}
    return RawMessage(Channel.NATIVE_MQTT, orjson.dumps(body), DEV, f"devices/{DEV}/location",
                      received_at=received)


class Phone:
    """An MQTT subscriber on a device's command topics (native and OwnTracks)."""

    def __init__(self, settings: Settings, device: str) -> None:
        p = settings.mqtt_topic_prefix
        self.native = f"{p}devices/{device}/cmd"
        self.owntracks = f"{p}owntracks/{device}/{device}/cmd"
        self.got: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        subscribed = threading.Event()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id=f"phone-{device}-{time.time_ns()}",
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = lambda c, u, m: self.got.put((m.topic, orjson.loads(m.payload)))
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(settings.mqtt_host, settings.mqtt_port)
        self.client.loop_start()
        self.client.subscribe([(self.native, 1), (self.owntracks, 1)])
        assert subscribed.wait(10), "the broker never acknowledged the subscription"

    def next(self) -> tuple[str, dict[str, Any]]:
        return self.got.get(timeout=15)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture()
def handset(settings: Settings, phone: str) -> Iterator[Phone]:
    ph = Phone(settings, phone)
    yield ph
    ph.close()


def test_a_location_request_is_recorded_and_the_worker_sends_it_to_the_phone(
        db, rds, settings, org: Org, handset: Phone):
    record(db, org, rds, settings, ask(T))
    [(rid, status, throttled)] = requests(db)
    assert (status, throttled) == ("sent", None)
    row = db.execute("""SELECT device_id, supervisee_id, office_id, rule, evidence,
                               extract(epoch FROM requested_at), extract(epoch FROM sent_at),
                               extract(epoch FROM deadline - sent_at),
                               extract(epoch FROM evidence_fix_time), outbox_id
                          FROM location_requests""").fetchone()
    dev, sup, office, rule, evidence, requested, sent, window, evidence_t, outbox_id = row
    assert (dev, sup, office, rule) == (DEV, org.supervisee_id, org.office_ids[JIANGAN],
                                        "confirm.area_exit")
    assert float(requested) == float(sent) == pytest.approx(T, abs=1e-5)
    assert float(window) == settings.confirm_answer_window_s == 240
    assert float(evidence_t) == pytest.approx(T - 30, abs=1e-5)
    assert (evidence["membership"], evidence["distance_m"], evidence["exit_fixes"]) == (
        "border", 140.0, 1)
    assert "lon" not in evidence and "lat" not in evidence
    assert rds.sismember(settings.redis_prefix + confirm.PENDING, DEV)
    # Not a roll-call, not an alert: only the command is queued.
    assert db.execute("SELECT topic FROM outbox").fetchall() == [("device.command",)]
    assert db.execute("SELECT count(*) FROM roll_calls").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM alerts").fetchone() == (0,)

    with in_thread(AlertWorker(settings, schedule=False)):
        got = dict([handset.next(), handset.next()])
    assert got[handset.native]["type"] == "report_location"
    assert (got[handset.native]["request_id"], got[handset.native]["command_id"]) == (rid,
                                                                                      outbox_id)
    assert got[handset.owntracks] == {"_type": "cmd", "action": "reportLocation"}
    assert db.execute("SELECT published_at IS NOT NULL FROM outbox").fetchone() == (True,)


def test_the_hourly_limit_records_the_excess_as_throttled_and_sends_nothing_for_it(
        db, rds, settings, org: Org, handset: Phone, monkeypatch):
    monkeypatch.setattr(settings, "confirm_max_per_hour", 2)
    p = settings.redis_prefix
    record(db, org, rds, settings, ask(T))  # sent
    record(db, org, rds, settings, ask(T + 60))  # the first still awaits its answer
    assert confirm.expire(db, rds, p, now=T + 241) == 1
    record(db, org, rds, settings, ask(T + 400))  # sent: the second of the hour
    assert confirm.expire(db, rds, p, now=T + 701) == 1
    record(db, org, rds, settings, ask(T + 800))  # a third within the hour: the battery limit
    record(db, org, rds, settings, ask(T + 3601))  # the first has left the hour: sent again
    assert [(s, why) for _, s, why in requests(db)] == [
        ("expired", None), ("throttled", "pending"), ("expired", None),
        ("throttled", "hourly_limit"), ("sent", None)]
    sent_ids = [rid for rid, s, _ in requests(db) if s != "throttled"]
    queued = [p["command"]["request_id"] for (p,) in db.execute(
        "SELECT payload FROM outbox WHERE topic = 'device.command' ORDER BY id")]
    assert queued == sent_ids
    # A marker after them all: once it arrives, everything queued before it has been sent.
    db.execute("""INSERT INTO outbox (topic, payload) VALUES ('device.command',
                  '{"device_ids": ["dconf"], "command": {"type": "marker"}}')""")
    with in_thread(AlertWorker(settings, schedule=False)):
        native: list[dict[str, Any]] = []
        while not native or native[-1]["type"] != "marker":
            topic, payload = handset.next()
            if topic == handset.native:
                native.append(payload)
    assert [c.get("request_id") for c in native] == [*sent_ids, None]


def test_a_later_usable_fix_through_the_pipeline_answers_it_with_its_latency(
        db, rds, settings, org: Org, phone):
    record(db, org, rds, settings, ask(T))
    pipeline = Pipeline.connect(settings)
    try:
        pipeline.process([fix_msg(T - 35, T + 2)], now=T + 2)  # before the command and its slack
        pipeline.process([fix_msg(T + 5, T + 6, acc=900)], now=T + 6)  # decides nothing
        pipeline.process([fix_msg(T + 8, T + 9, mock=True)], now=T + 9)  # a mock location
        assert requests(db)[0][1] == "sent"
        assert rds.sismember(settings.redis_prefix + confirm.PENDING, DEV)
        pipeline.process([fix_msg(T + 20, T + 26), fix_msg(T + 40, T + 26)], now=T + 26)
    finally:
        pipeline.close()
    status, fix_t, answered, latency, acc = db.execute(
        """SELECT status, extract(epoch FROM answer_fix_time), extract(epoch FROM answered_at),
                  latency_s, answer_accuracy_m FROM location_requests""").fetchone()
    assert status == "answered"
    assert float(fix_t) == pytest.approx(T + 20, abs=1e-5)  # the first fresh fix
    assert float(answered) == pytest.approx(T + 26, abs=1e-5)
    assert (round(latency, 3), acc) == (26.0, 10.0)
    assert not rds.sismember(settings.redis_prefix + confirm.PENDING, DEV)
    assert confirm.expire(db, rds, settings.redis_prefix, now=T + 3600) == 0
    assert requests(db)[0][1] == "answered"


def test_an_unanswered_request_expires_without_raising_any_alert(db, rds, settings, org: Org,
                                                                 phone):
    p = settings.redis_prefix
    record(db, org, rds, settings, ask(T))
    assert confirm.expire(db, rds, p, now=T + 239) == 0  # still within the window
    assert confirm.expire(db, rds, p, now=T + 241) == 1
    assert confirm.expire(db, rds, p, now=T + 400) == 0
    assert requests(db)[0][1] == "expired"
    assert not rds.sismember(p + confirm.PENDING, DEV)
    pipeline = Pipeline.connect(settings)
    try:  # the phone wakes up late: a fix after the window answers nothing any more
        pipeline.process([fix_msg(T + 500, T + 501)], now=T + 501)
    finally:
        pipeline.close()
    assert requests(db)[0][1] == "expired"
    assert db.execute("SELECT count(*) FROM alerts").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM roll_calls").fetchone() == (0,)
    assert db.execute("SELECT DISTINCT topic FROM outbox").fetchall() == [("device.command",)]


def test_the_alert_workers_scheduler_expires_overdue_requests(db, rds, settings, org: Org,
                                                              phone):
    record(db, org, rds, settings, ask(time.time() - 3600))
    with in_thread(AlertWorker(settings)):
        deadline = time.monotonic() + 30
        while requests(db)[0][1] == "sent" and time.monotonic() < deadline:
            time.sleep(0.2)
    assert requests(db)[0][1] == "expired"
    assert db.execute("SELECT count(*) FROM alerts").fetchone() == (0,)


def test_the_scheduler_restores_a_pending_device_missing_from_redis(db, rds, settings, org: Org,
                                                                    phone):
    p = settings.redis_prefix
    record(db, org, rds, settings, ask(T))
    rds.delete(p + confirm.PENDING)  # a racing worker removed it, or Redis restarted
    assert confirm.expire(db, rds, p, now=T + 10) == 0
    assert rds.sismember(p + confirm.PENDING, DEV)


def test_two_concurrent_callers_cannot_exceed_the_limit(db, rds, settings, org: Org, phone,
                                                        monkeypatch):
    """Two ingest workers' transactions ask for the same device at once: the second waits for
    the first to commit and counts what it sent."""
    monkeypatch.setattr(settings, "confirm_max_per_hour", 3)
    targets = {DEV: AlertTarget(org.supervisee_id, org.office_ids[JIANGAN])}
    # Each caller marks its requests answered at once, so none is throttled as still pending.
    events = [ask(T + k) for k in range(3)]

    def worker(conn: psycopg.Connection) -> None:
        with conn.transaction():
            for ev in events:
                record_events(conn, [ev], targets)
                conn.execute("UPDATE location_requests SET status = 'answered', "
                             "answered_at = sent_at WHERE status = 'sent'")

    with psycopg.connect(settings.psycopg_dsn, autocommit=True) as first, \
            psycopg.connect(settings.psycopg_dsn, autocommit=True) as second:
        t = threading.Thread(target=worker, args=(second,))
        with first.transaction():
            for ev in events[:2]:  # two sent, not yet committed
                record_events(first, [ev], targets)
                first.execute("UPDATE location_requests SET status = 'answered', "
                              "answered_at = sent_at WHERE status = 'sent'")
            t.start()
            # The first commits only once the second waits for the device's lock (or, were
            # there no lock, has finished on its own).
            deadline = time.monotonic() + 15
            while t.is_alive() and time.monotonic() < deadline and not db.execute(
                    """SELECT 1 FROM pg_locks WHERE pid = %s AND locktype = 'advisory'
                        AND NOT granted""", (second.info.backend_pid,)).fetchone():
                time.sleep(0.05)
        t.join(15)
        assert not t.is_alive()
    statuses = [s for _, s, _ in requests(db)]
    assert statuses.count("answered") == 3  # sent: the limit, across both callers
    assert statuses.count("throttled") == 2
    assert db.execute("SELECT count(*) FROM outbox WHERE topic = 'device.command'"
                      ).fetchone() == (3,)


def test_staff_see_a_supervisees_requests_without_coordinates(client, db, rds, settings,
                                                              org: Org, phone, monkeypatch):
    monkeypatch.setattr(settings, "confirm_max_per_hour", 1)
    record(db, org, rds, settings, ask(T))
    confirm.expire(db, rds, settings.redis_prefix, now=T + 241)
    record(db, org, rds, settings, ask(T + 400, rule="confirm.exclusion_entry"))
    url = f"{API}/supervisees/{org.supervisee_id}/location-requests"
    r = client.get(url, headers=login(client, "jiangan-officer"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert [(x["rule"], x["status"], x["throttle_reason"]) for x in body] == [
        ("confirm.exclusion_entry", "throttled", "hourly_limit"),
        ("confirm.area_exit", "expired", None)]
    assert body[1]["sent_at"] is not None and body[1]["expired_at"] is not None
    assert not {"lon", "lat", "evidence"} & set(body[0])
    assert client.get(url, headers=login(client, "jianghan-officer")).status_code == 404
