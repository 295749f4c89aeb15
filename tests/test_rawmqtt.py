"""The bench's raw-socket load generator speaks MQTT the broker and paho accept: every publish
arrives once with its topic and payload, and its PUBACK is counted for that very publish."""

from __future__ import annotations

import queue
import time

import numpy as np
import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from simulators.phone import PhoneFleet, districts_from_geojson, fix_payload
from simulators.publisher import MqttTarget, PublishLog
from simulators.rawmqtt import (
    Connection,
    Prebuilt,
    prebuild,
    publish_fleet_raw,
    publish_packet,
    publish_prebuilt,
)
from store.demo import load_regions
from store.settings import Settings


def _listener(settings: Settings, topic: str) -> tuple[mqtt.Client, queue.Queue]:
    got: queue.Queue = queue.Queue()
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                    client_id=f"{settings.mqtt_client_id}-raw-listen",
                    protocol=mqtt.MQTTv5)
    c.on_message = lambda cl, u, m: got.put((m.topic, bytes(m.payload), m.qos))
    c.connect(settings.mqtt_host, settings.mqtt_port)
    c.subscribe(topic, qos=1)
    c.loop_start()
    time.sleep(0.3)
    return c, got


def _send_prebuilt(settings: Settings, pre: Prebuilt, fleet: PhoneFleet, name: str,
                   topic: str) -> tuple[float, PublishLog, list[tuple[str, bytes, int]]]:
    """Publish an encoded run from 0.2 s on through the broker: (its start, the log, what a
    subscriber to `topic` received). Every message went out and was acknowledged."""
    listen, got = _listener(settings, topic)
    try:
        start = time.time() + 0.2
        log = publish_prebuilt(pre, fleet.phone, start, start + 3.5,
                               MqttTarget(settings.mqtt_host, settings.mqtt_port,
                                          f"{settings.mqtt_client_id}-{name}",
                                          topic_prefix=settings.mqtt_topic_prefix),
                               ack_wait_s=5, connections=3)
        assert log.sent == len(pre.due) and log.acked == log.sent and bool(log.acked_mask.all())
        return start, log, [got.get(timeout=10) for _ in range(log.sent)]
    finally:
        listen.disconnect()
        listen.loop_stop()


def test_publish_packet_is_an_mqtt_qos1_publish():
    pkt = publish_packet(b"a/b", 513, b"xyz")
    assert pkt == bytes([0x32, 10, 0, 3]) + b"a/b" + bytes([2, 1]) + b"xyz"
    long = publish_packet(b"t", 1, b"p" * 200)  # remaining length 205: two length bytes
    assert long[:3] == bytes([0x32, 205 & 0x7F | 0x80, 1])


def test_raw_connection_publishes_and_counts_each_puback(settings: Settings):
    prefix = settings.mqtt_topic_prefix
    listen, got = _listener(settings, f"{prefix}raw/#")
    conn = Connection(MqttTarget(settings.mqtt_host, settings.mqtt_port, "x"),
                      f"{settings.mqtt_client_id}-raw-pub")
    try:
        n = 70_000  # more than the 65,535 message ids: they are reused once acknowledged
        for k in range(n):
            while not conn.publish(f"{prefix}raw/{k % 5}".encode(), b"%d" % k, k):
                conn.flush()
                time.sleep(0.01)
                conn.read()
            if k % 1000 == 999:
                conn.flush()
                conn.read()
        conn.flush()
        deadline = time.monotonic() + 30
        while len(conn.acked) < n and time.monotonic() < deadline:
            time.sleep(0.05)
            conn.read()
        assert sorted(conn.acked) == list(range(n)) and conn.in_flight == {}
        received = []
        while len(received) < n:
            received.append(got.get(timeout=30))
        assert sorted(int(p) for _, p, _ in received) == list(range(n))
        assert all(t == f"{prefix}raw/{int(p) % 5}" and q == 1 for t, p, q in received)
    finally:
        conn.close()
        listen.disconnect()
        listen.loop_stop()


def test_publish_fleet_raw_sends_the_fleet_s_fixes_on_schedule(settings: Settings):
    prefix = settings.mqtt_topic_prefix
    listen, got = _listener(settings, f"{prefix}devices/+/location")
    fleet = PhoneFleet(districts_from_geojson(load_regions()), 40, 1, None, time.time(),
                       np.arange(40))
    try:
        t0 = time.time() + 0.2
        log = publish_fleet_raw(fleet, 40, 0.5, t0, t0 + 3.0,
                                MqttTarget(settings.mqtt_host, settings.mqtt_port,
                                           f"{settings.mqtt_client_id}-raw-fleet",
                                           topic_prefix=prefix), ack_wait_s=5, connections=3)
        assert 200 <= log.sent <= 280  # 40 phones every 0.5 s for 3 s
        assert log.acked == log.sent and bool(log.acked_mask.all())
        received = [got.get(timeout=10) for _ in range(log.sent)]
        times = sorted((t.split("/")[-2], round(orjson.loads(p)["time"] * 1000))
                       for t, p, _ in received)
        from simulators.fleet import device_id
        assert times == sorted((device_id(int(ph)), int(ms))
                               for ph, ms in zip(log.phone, log.time_ms, strict=True))
    finally:
        listen.disconnect()
        listen.loop_stop()


def test_a_run_encoded_before_it_starts_sends_the_same_reports_with_live_fix_times(
        settings: Settings):
    prefix = settings.mqtt_topic_prefix
    regions = districts_from_geojson(load_regions())
    fleet = PhoneFleet(regions, 40, 1, None, 0.0, np.arange(40))
    twin = PhoneFleet(regions, 40, 1, None, 0.0, np.arange(40))  # the same phones, run live
    silent = np.full(40, np.inf)
    silent[7] = 1.2  # phone 7 stops reporting 1.2 s into the run
    pre = prebuild(fleet, 40, 0.5, 3.0, prefix, silent)
    assert 200 <= len(pre.due) <= 240 and bool(np.all(np.diff(pre.due) >= 0))
    assert int((pre.phone == 7).sum()) == 3  # at 0.0875 + 0 / 0.5 / 1.0 s, then silent
    start, log, received = _send_prebuilt(settings, pre, fleet, "prebuilt",
                                          f"{prefix}devices/+/location")
    from simulators.fleet import device_id
    # Every packet was well-formed (the broker passed it on) and its fix time is the one logged,
    # the wall clock when it went out: after the start plus its due time, strictly increasing.
    payloads = sorted(((t.split("/")[-2], orjson.loads(p)) for t, p, _ in received),
                      key=lambda x: (x[0], x[1]["time"]))
    assert [(d, round(m["time"] * 1000)) for d, m in payloads] == sorted(
        (device_id(int(ph)), int(ms)) for ph, ms in zip(log.phone, log.time_ms, strict=True))
    sent_at = start + pre.due
    assert bool(np.all(log.time_ms >= np.floor(sent_at * 1000)))
    assert bool(np.all(log.time_ms <= np.ceil((sent_at + 1.0) * 1000)))
    # The reports themselves are the fleet's: phone 0's first one, taken live, is the same fix.
    first = twin.advance(0.0, np.array([0]))
    expected = fix_payload(first, 0)
    mine = next(m for d, m in payloads if d == device_id(0))
    assert {k: v for k, v in mine.items() if k != "time"} == {
        k: v for k, v in expected.items() if k != "time"}


def test_an_owntracks_run_is_what_the_app_publishes_and_what_ingest_reads(settings: Settings):
    """`make bench --payload owntracks`: each phone publishes OwnTracks' location JSON on
    owntracks/bench/<device>, with the fix time in whole seconds (strictly increasing per
    phone), in WGS-84 (phones that report GCJ-02 natively converted), and the ingest worker's
    own routing and decoder read each as that phone's fix at that time and place. (This run's
    phones all have a speed: the iPhones' -1 is checked on its own at the end.)"""
    from geofence.crs import point_to_wgs84
    from geofence.model import CRS, Source
    from ingest.mqtt_worker import route
    from ingest.protocols.owntracks import decode_owntracks
    from simulators.fleet import device_id
    from simulators.phone import owntracks_payload

    prefix = settings.mqtt_topic_prefix
    regions = districts_from_geojson(load_regions())
    fleet = PhoneFleet(regions, 40, 2, None, 0.0, np.arange(40))
    twin = PhoneFleet(regions, 40, 2, None, 0.0, np.arange(40))
    pre = prebuild(fleet, 40, 1.0, 3.0, prefix, payload="owntracks")
    start, log, received = _send_prebuilt(settings, pre, fleet, "prebuilt-ot",
                                          f"{prefix}owntracks/bench/+")
    assert log.sent >= 100
    # Each fix time is the whole second the report went out in (not before its due time's
    # second, at most a second of sending late after it).
    sent_at = start + pre.due
    assert bool(np.all(log.time_ms >= np.floor(sent_at) * 1000))
    assert bool(np.all(log.time_ms <= np.ceil(sent_at + 1.0) * 1000))
    with pytest.raises(ValueError, match="at most once a second"):
        prebuild(twin, 40, 0.5, 3.0, prefix, payload="owntracks")
    fixes = []
    for topic, payload, _ in received:
        msg = route(topic, payload, time.time(), prefix)
        assert msg.device_id is not None and msg.device_id == topic.rsplit("/", 1)[1]
        [fix] = decode_owntracks(msg.device_id, payload, time.time()).fixes
        assert fix.source == Source.OWNTRACKS_MQTT and fix.crs == CRS.WGS84
        assert isinstance(orjson.loads(payload)["tst"], int)
        fixes.append(fix)
    # Whole seconds, as logged (the bench matches stored rows by them), increasing per phone.
    assert sorted((f.device_id, round(f.time * 1000)) for f in fixes) == sorted(
        (device_id(int(ph)), int(ms)) for ph, ms in zip(log.phone, log.time_ms, strict=True))
    assert all(ms % 1000 == 0 for ms in log.time_ms.tolist())
    by_phone: dict[str, list[float]] = {}
    for f in sorted(fixes, key=lambda f: f.time):
        by_phone.setdefault(f.device_id, []).append(f.time)
    assert all(b > a for ts in by_phone.values() for a, b in zip(ts, ts[1:], strict=False))
    # The place is the fleet's own fix, in WGS-84 whatever the phone reports natively: the
    # same phones' run encoded natively (same seed, same schedule) names the same places.
    native = prebuild(twin, 40, 1.0, 3.0, prefix)
    assert native.phone.tolist() == pre.phone.tolist()
    kinds = set()
    for p, nb, ob in zip(pre.phone.tolist(), native.body, pre.body, strict=True):
        n, o = orjson.loads(b"{" + nb[1:]), orjson.loads(b"{" + ob[1:])
        kinds.add(n["crs"])
        lon, lat = point_to_wgs84(n["lon"], n["lat"], CRS(n["crs"]))
        assert abs(o["lon"] - lon) < 2e-7 and abs(o["lat"] - lat) < 2e-7, (n, o)
        # Whole metres, percent and km/h (the native payload keeps a decimal or two).
        assert isinstance(o["acc"], int) and abs(o["acc"] - n["accuracy"]) <= 0.55
        assert isinstance(o["batt"], int) and abs(o["batt"] - n["battery"]) <= 0.55
        if "speed" in n:
            assert isinstance(o["vel"], int) and abs(o["vel"] - n["speed"] * 3.6) <= 0.52
        else:  # the iPhones (odd phones) say -1, the Android phones leave it out
            assert o.get("vel", "absent") == (-1 if p % 2 else "absent"), (p, o)
    assert kinds == {"wgs84", "gcj02"}, "the sample should hold both kinds of phone"
    # What an iPhone and an Android phone send for a fix without speed, course or altitude.
    batch = twin.advance(10.0, np.array([0, 1]))
    batch.speed[:] = batch.heading[:] = batch.altitude[:] = np.nan
    iphone, android = owntracks_payload(batch, 0, ios=True), owntracks_payload(batch, 1)
    assert (iphone["vel"], iphone["cog"], iphone["vac"]) == (-1, -1, -1)
    assert not {"vel", "cog", "alt"} & set(android)
    [fix] = decode_owntracks("d", orjson.dumps(iphone | {"tst": int(time.time())}),
                             time.time()).fixes
    assert (fix.speed, fix.heading, fix.altitude) == (None, None, None)
