"""End to end on the real broker, database and Redis: phone → MQTT → ingest → alert → SSE."""

from __future__ import annotations

import json
import queue
import signal
import threading
import time

import httpx
import psycopg

from alerts.worker import AlertWorker
from ingest.mqtt_worker import MqttIngestWorker
from store.settings import Settings
from tests.conftest import JIANGAN, JIANGHAN, PASSWORD, Org
from tests.geo import deep_inside
from tests.services import (
    Phone,
    api_server,
    forget_session,
    in_thread,
    ingest_process_client_id,
    start_ingest_process,
)

FEED = "/api/v1/alerts/stream/live?purpose=duty+monitoring"


def _read_sse(url: str, headers: dict[str, str], out: queue.Queue, stop: threading.Event) -> None:
    try:
        with httpx.Client(timeout=None) as c, c.stream("GET", url, headers=headers) as r:
            out.put(("status", r.status_code))
            event: dict[str, str] = {}
            for line in r.iter_lines():
                if stop.is_set():
                    return
                if line == "":
                    if "data" in event:
                        out.put(("event", event))
                    event = {}
                elif not line.startswith(":"):
                    k, _, v = line.partition(": ")
                    event[k] = v
    except httpx.HTTPError as e:
        # The test's server stops while the stream is open: say so to whoever still listens.
        out.put(("closed", repr(e)))


def test_phone_leaving_its_district_raises_an_alert_on_the_live_feed(settings: Settings, org: Org):
    client_id = f"{settings.mqtt_client_id}-e2e"
    ingest = MqttIngestWorker(settings, client_id=client_id)
    try:
        with api_server(settings) as base, in_thread(ingest), in_thread(AlertWorker(settings)):
            assert ingest.connected.wait(10), "ingest worker did not connect to the broker"
            token = httpx.post(f"{base}/api/v1/auth/token",
                               data={"username": "jiangan-officer", "password": PASSWORD}).json()
            h = {"Authorization": f"Bearer {token['access_token']}"}
            cred = httpx.post(f"{base}/api/v1/supervisees/{org.supervisee_id}/devices",
                              json={}, headers=h).json()
            # Another office's officer listens too: they must not see it.
            other = httpx.post(f"{base}/api/v1/auth/token",
                               data={"username": "jianghan-officer", "password": PASSWORD}).json()
            feeds: dict[str, queue.Queue] = {"mine": queue.Queue(), "other": queue.Queue()}
            stop = threading.Event()
            oh = {"Authorization": f"Bearer {other['access_token']}"}
            for name, hdr in (("mine", h), ("other", oh)):
                threading.Thread(target=_read_sse, daemon=True, args=(
                    f"{base}{FEED}", hdr, feeds[name], stop)).start()
                assert feeds[name].get(timeout=10) == ("status", 200)
            phone = Phone(settings, cred["device_id"])
            t0 = time.time() - 900
            home, away = deep_inside(JIANGAN), deep_inside(JIANGHAN)
            phone.report(*home, t0).wait_for_publish(5)
            for k in range(3):  # a quarter of an hour later, across the river, three reports
                phone.report(*away, t0 + 600 + k * 60).wait_for_publish(5)
            kind, event = feeds["mine"].get(timeout=20)
            data = json.loads(event["data"])
            assert (kind, event["event"]) == ("event", "alert.opened")
            assert (data["kind"], data["supervisee_id"], data["device_id"]) == (
                "area_exit", org.supervisee_id, cred["device_id"])
            assert data["reason"]["zone_id"] == org.zone_ids[JIANGAN]
            # Now a marker the other officer does see: their own supervisee leaves Jianghan.
            # The feed keeps the stream's order, so by the time the marker reaches them, the
            # first alert would have too, had it been sent to them.
            cred2 = httpx.post(f"{base}/api/v1/supervisees/{org.other_supervisee_id}/devices",
                               json={}, headers=oh).json()
            phone2 = Phone(settings, cred2["device_id"])
            phone2.report(*away, t0).wait_for_publish(5)
            for k in range(3):
                phone2.report(*home, t0 + 600 + k * 60).wait_for_publish(5)
            seen = []
            while not seen or seen[-1].get("supervisee_id") != org.other_supervisee_id:
                kind, event = feeds["other"].get(timeout=20)
                assert kind == "event", (kind, event)
                seen.append(json.loads(event["data"]))
            stop.set()
            phone.close()
            phone2.close()
            assert [e["supervisee_id"] for e in seen if e.get("supervisee_id") == org.supervisee_id
                    or e.get("device_id") == cred["device_id"]] == []
            assert (seen[-1]["kind"], seen[-1]["device_id"]) == ("area_exit", cred2["device_id"])
    finally:
        forget_session(settings, client_id)


def test_killed_ingest_worker_loses_no_acknowledged_fix(settings: Settings, org: Org,
                                                       db: psycopg.Connection, tmp_path):
    db.execute("INSERT INTO devices (id, supervisee_id, secret_hash) VALUES ('dkill', %s, 'h')",
               (org.supervisee_id,))
    client_id = f"{settings.mqtt_client_id}-kill"
    n, home = 1500, deep_inside(JIANGAN)
    worker = start_ingest_process(settings, client_id, str(tmp_path / 'ingest.log'))
    phone = Phone(settings, "dkill")
    try:
        # Until the worker has subscribed, the broker has nobody to queue for: probe first.
        t0 = time.time() - 600
        for attempt in range(40):
            phone.report(*home, t0 - 100 + attempt).wait_for_publish(5)
            if _wait_for_count(db, 1, 0.5) >= 1:
                break
        assert _wait_for_count(db, 1, 1) >= 1, "the ingest worker never subscribed"
        infos = []
        for k in range(n):
            infos.append(phone.report(home[0], home[1], t0 + k * 0.1))
            if k == n // 3:
                worker.send_signal(signal.SIGKILL)  # no chance to ack or clean up
                worker.wait(10)
            if k == 2 * n // 3:
                worker = start_ingest_process(settings, client_id, str(tmp_path / 'ingest.log'))
            time.sleep(0.001)
        for info in infos:
            info.wait_for_publish(10)  # every fix was accepted by the broker (PUBACK)
        # Probes (older fix times) may still trickle in: count the series alone. The bound sits
        # half a step before the first fix: PostgreSQL's to_timestamp(t0) and the stored fix
        # time round t0 to the microsecond each its own way (1 µs apart for ~3 % of t0).
        since = t0 - 0.05
        stored = _wait_for_count(db, n, 60, since=since)
        if stored != n:  # say which ones, and what the worker logged about them
            have = {round((r[0] - t0) * 10) for r in db.execute(
                "SELECT extract(epoch FROM fix_time)::float8 FROM positions"
                " WHERE fix_time >= to_timestamp(%s)", (since,))}
            missing = sorted(set(range(n)) - have)
            raise AssertionError(f"{stored} of {n} stored; missing k = {missing[:20]}\n"
                                 + (tmp_path / "ingest.log").read_text()[-3000:])
        assert db.execute("SELECT count(*) FROM dead_letters").fetchone() == (0,)
    finally:
        phone.close()
        worker.terminate()
        worker.wait(10)
        forget_session(settings, ingest_process_client_id(client_id))


def _wait_for_count(db: psycopg.Connection, want: int, timeout: float, since: float = 0.0) -> int:
    deadline = time.monotonic() + timeout
    count = 0
    while time.monotonic() < deadline:
        count = db.execute("SELECT count(*) FROM positions WHERE fix_time >= to_timestamp(%s)",
                           (since,)).fetchone()[0]
        if count >= want:
            return count
        time.sleep(0.2)
    return count


def test_permit_outcome_reaches_the_phone_over_mqtt(settings: Settings, org: Org,
                                                    db: psycopg.Connection):
    import orjson
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    got: queue.Queue = queue.Queue()
    sub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="phone-dcmd",
                      protocol=mqtt.MQTTv5)
    sub.on_message = lambda c, u, m: got.put((m.topic, orjson.loads(m.payload), m.qos))
    sub.connect(settings.mqtt_host, settings.mqtt_port)
    topic = f"{settings.mqtt_topic_prefix}devices/dcmd/cmd"
    sub.subscribe(topic, qos=1)
    sub.loop_start()
    try:
        time.sleep(0.3)
        db.execute("""INSERT INTO outbox (topic, payload) VALUES ('device.command',
                      '{"device_ids": ["dcmd"], "command": {"type": "permit", "status": "approved"}}')""")
        with in_thread(AlertWorker(settings)):
            t, payload, qos = got.get(timeout=15)
        assert (t, payload["type"], payload["status"], qos) == (topic, "permit", "approved", 1)
        assert db.execute("SELECT published_at IS NOT NULL FROM outbox").fetchone() == (True,)
    finally:
        sub.disconnect()
        sub.loop_stop()


def test_an_unreachable_broker_never_holds_back_the_alert_feed(settings: Settings, org: Org,
                                                               db: psycopg.Connection, rds):
    from alerts.worker import CommandPublisher, feed_key, relay_once
    from tests.services import free_port

    db.execute("""INSERT INTO outbox (topic, payload) VALUES
                  ('device.command', '{"device_ids": ["dx"], "command": {"type": "rollcall"}}'),
                  ('alert.opened', '{"alert_id": 1, "office_id": 1}')""")
    down = CommandPublisher(settings.model_copy(update={"mqtt_port": free_port()}))
    with psycopg.connect(settings.psycopg_dsn) as conn:
        assert relay_once(conn, rds, settings, commands=down) == 1
    assert rds.xlen(feed_key(settings)) == 1  # the alert went out
    waiting = db.execute("SELECT topic FROM outbox WHERE published_at IS NULL").fetchall()
    assert waiting == [("device.command",)]  # the command waits for the broker


def test_live_feed_ends_when_the_token_is_revoked(settings: Settings, org: Org, monkeypatch):
    import api.routes.alerts as alerts_route

    monkeypatch.setattr(alerts_route, "HEARTBEAT_S", 0.3)
    with api_server(settings) as base:
        token = httpx.post(f"{base}/api/v1/auth/token",
                           data={"username": "jiangan-officer", "password": PASSWORD}).json()
        h = {"Authorization": f"Bearer {token['access_token']}"}
        feed: queue.Queue = queue.Queue()
        stop = threading.Event()
        threading.Thread(target=_read_sse, daemon=True,
                         args=(f"{base}{FEED}", h, feed, stop)).start()
        assert feed.get(timeout=10) == ("status", 200)
        assert httpx.post(f"{base}/api/v1/auth/logout", headers=h).status_code == 204
        kind, event = feed.get(timeout=10)
        stop.set()
        assert (kind, event["event"]) == ("event", "end")
        assert "session ended" in event["data"]
