"""Topics map to protocols and devices; anything else is kept as unroutable, never dropped."""

import time

import orjson
import paho.mqtt.client as mqtt
import psycopg
import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from api.routes.broker import service_may
from ingest.mqtt_worker import MqttIngestWorker, partition_of, route, subscriptions, topic_partition
from ingest.pipeline import Channel
from store.broker_sync import service_acl
from store.settings import Settings
from tests.conftest import JIANGAN, Org, login
from tests.geo import deep_inside
from tests.services import forget_session, in_thread
from tests.test_delivery import _until


def test_native_and_owntracks_topics_name_the_device():
    assert (route("devices/d1/location", b"{}", 0.0).channel,
            route("devices/d1/location", b"{}", 0.0).device_id) == (Channel.NATIVE_MQTT, "d1")
    ot = route("owntracks/alice/d2", b"{}", 0.0)
    assert (ot.channel, ot.device_id, ot.topic) == (Channel.OWNTRACKS_MQTT, "d2",
                                                    "owntracks/alice/d2")


def test_topic_prefix_namespaces_the_system_on_a_shared_broker():
    assert subscriptions("ccs/") == [("ccs/devices/+/location", 1), ("ccs/owntracks/+/+", 1),
                                     ("ccs/owntracks/+/+/event", 1), ("ccs/owntracks/+/+/waypoint", 1),
                                     ("ccs/owntracks/+/+/waypoints", 1)]
    assert route("ccs/devices/d1/location", b"", 0.0, "ccs/").device_id == "d1"
    assert route("devices/d1/location", b"", 0.0, "ccs/").device_id is None


def test_unroutable_topic_has_no_device_and_is_dead_lettered_later():
    for topic in ("devices//location", "devices/d1/status", "owntracks/a/", "x/y/z"):
        assert route(topic, b"{}", 0.0).device_id is None, topic


def test_owntracks_event_and_waypoint_topics_name_the_device():
    for sub in ("event", "waypoint", "waypoints"):
        msg = route(f"ccs/owntracks/alice/d2/{sub}", b"{}", 0.0, "ccs/")
        assert (msg.channel, msg.device_id) == (Channel.OWNTRACKS_MQTT, "d2"), sub
    # Other OwnTracks subtopics are not subscribed; would one arrive, it is not read as a report.
    for topic in ("owntracks/alice/d2/cmd", "owntracks/alice/d2/info", "owntracks/alice//event",
                  "owntracks/alice/d2/event/x"):
        assert route(topic, b"{}", 0.0).device_id is None, topic


def test_every_subscription_is_granted_by_both_broker_acls():
    s = Settings(mqtt_topic_prefix="ccs/", mqtt_username="ingest", mqtt_password="pw")
    acl = service_acl(s).splitlines()
    for topic, qos in subscriptions("ccs/"):
        assert qos == 1
        assert f"topic read {topic}" in acl, topic
        assert service_may(s, "ingest", "subscribe", topic), topic
    assert "ccs/owntracks/+/+/event" in [t for t, _ in subscriptions("ccs/")]


def test_owntracks_transition_and_waypoints_over_mqtt_are_stored_not_lost(
        settings: Settings, org: Org, client: TestClient, db: psycopg.Connection):
    h = login(client, "jiangan-officer")
    dev = client.post(f"/api/v1/supervisees/{org.supervisee_id}/devices", json={},
                      headers=h).json()["device_id"]
    base = f"{settings.mqtt_topic_prefix}owntracks/{dev}/{dev}"
    lon, lat = deep_inside(JIANGAN)  # GCJ-02; OwnTracks speaks WGS-84, near enough here
    tst = int(time.time()) - 60
    transition = {"_type": "transition", "wtst": tst - 86400, "lat": lat, "lon": lon, "tst": tst,
                  "acc": 20, "tid": "JA", "event": "leave", "desc": "Home", "t": "c"}
    waypoint = {"_type": "waypoint", "desc": "Home", "lat": lat, "lon": lon, "rad": 100,
                "tst": tst - 86400}
    waypoints = {"_type": "waypoints", "waypoints": [waypoint]}
    worker = MqttIngestWorker(settings, client_id=f"{settings.mqtt_client_id}-ot-topics")
    phone = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                        client_id=f"phone-ot-{dev}", protocol=mqtt.MQTTv5)
    try:
        with in_thread(worker):
            assert worker.connected.wait(10), "ingest worker did not connect to the broker"
            phone.connect(settings.mqtt_host, settings.mqtt_port)
            phone.loop_start()
            for sub, body in (("event", transition), ("waypoint", waypoint),
                              ("waypoints", waypoints)):
                phone.publish(f"{base}/{sub}", orjson.dumps(body), qos=1).wait_for_publish(5)
            rows = _until(lambda: db.execute(
                "SELECT msg_type, source, payload FROM device_messages WHERE device_id = %s"
                " ORDER BY id", (dev,)).fetchall() if worker.processed >= 3 else None,
                20.0, "three OwnTracks messages processed")
    finally:
        phone.disconnect()
        phone.loop_stop()
        forget_session(settings, f"{settings.mqtt_client_id}-ot-topics")
    assert [(r[0], r[1]) for r in rows] == [("transition", "owntracks_mqtt"),
                                           ("waypoint", "owntracks_mqtt"),
                                           ("waypoints", "owntracks_mqtt")]
    assert rows[0][2] == transition and rows[2][2] == waypoints
    pos = db.execute("SELECT fix_time, raw_lon, raw_lat, accuracy, source FROM positions"
                     " WHERE device_id = %s", (dev,)).fetchall()
    assert [(p[0].timestamp(), p[1], p[2], p[3], p[4]) for p in pos] == [
        (tst, lon, lat, 20.0, "owntracks_mqtt")]
    assert db.execute("SELECT count(*) FROM dead_letters").fetchone() == (0,)


def test_partitions_split_devices_evenly_and_every_index_must_exist():
    from ingest.mqtt_worker import partition_of
    from store.settings import Settings

    devices = [f"d{k:05d}" for k in range(4000)]
    counts = [0, 0, 0, 0]
    for d in devices:
        counts[partition_of(d, 4)] += 1
    assert all(900 < c < 1100 for c in counts), counts
    assert {partition_of(d, 1) for d in devices} == {0}
    assert partition_of(None, 4) == 0  # reports naming no device: dead-lettered by one worker
    with pytest.raises(ValueError, match="CCS_INGEST_WORKER_INDEX=2 must be below"):
        Settings(ingest_workers=2, ingest_worker_index=2)


@hsettings(max_examples=1500, deadline=None)
@given(parts=st.lists(st.one_of(
    st.sampled_from(["devices", "location", "owntracks", "event", "waypoint", "waypoints", "cmd",
                     "", "d1", "ccs", "ccs-test"]),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=6)), min_size=0, max_size=6),
    prefix=st.sampled_from(["", "ccs/", "ccs-test-1/", "x"]), lead=st.sampled_from(["", "ccs/"]),
    workers=st.integers(1, 5), junk=st.booleans())
def test_a_workers_partition_read_off_the_topic_bytes_is_the_routed_ones(
        parts: list[str], prefix: str, lead: str, workers: int, junk: bool) -> None:
    """A partitioned worker skips other partitions' reports on the topic's bytes alone
    (`topic_partition`): on any topic, UTF-8 or not, it gives the partition `route` and
    `partition_of` give, or None (only route can tell)."""
    topic = (lead + "/".join(parts)).encode() + (b"\xff" if junk else b"")
    fast = topic_partition(topic, prefix.encode(), workers)
    name = topic.decode(errors="replace")
    routed = partition_of(route(name, b"{}", 0.0, prefix).device_id, workers)
    assert fast == routed or (fast is None and not topic.isascii())
    if topic.isascii():
        assert fast is not None


def test_topic_partition_spreads_real_device_topics() -> None:
    """Not vacuous: ordinary topics get a partition, and it is the device's."""
    for d in ("d00001", "dev-x", "7"):
        for t in (f"ccs/devices/{d}/location", f"ccs/owntracks/u/{d}", f"ccs/owntracks/u/{d}/event"):
            assert topic_partition(t.encode(), b"ccs/", 3) == partition_of(d, 3)
    assert topic_partition(b"ccs/devices//location", b"ccs/", 3) == 0
    # Topics that name a device-like part but route to no device: partition 0, not d1's (1).
    for t in (b"ccs/owntracks/u/d1/cmd", b"ccs/devices/d1/cmd", b"devices/d1/location",
              b"ccs/owntracks/u/d1/event/x", b"ccs/devices/d1/location/x"):
        routed = route(t.decode(), b"", 0.0, "ccs/").device_id
        assert topic_partition(t, b"ccs/", 3) == 0 == partition_of(routed, 3)
    assert topic_partition(b"ccs/devices/d1/location", b"ccs/", 3) == 1
    assert topic_partition("ccs/devices/dé/location".encode(), b"ccs/", 3) is None


def test_a_partitioned_worker_acknowledges_every_message_in_arrival_order(settings, monkeypatch):
    """Another partition's reports are acknowledged in their turn, with the batch they came
    in, never ahead of earlier reports still being committed: Mosquitto numbers messages with
    16-bit ids it does not keep unique among the unacknowledged, so acknowledging out of order
    let ids wrap onto uncommitted reports (seen in the bench: ~100,000 committed reports per
    worker never released)."""
    from ingest.mqtt_worker import MqttIngestWorker, partition_of

    s = settings.model_copy(update={"ingest_workers": 2, "ingest_worker_index": 0,
                                    "batch_max_messages": 3, "batch_max_wait_ms": 0})
    w = MqttIngestWorker(s, client_id="order-test")
    devices = [f"d{k}" for k in range(40)]
    mine = [d for d in devices if partition_of(d, 2) == 0]
    assert mine and len(mine) < len(devices)
    prefix = s.mqtt_topic_prefix
    for mid, d in enumerate(devices, start=1):
        w._on_report(f"{prefix}devices/{d}/location".encode(), b"{}", 1, mid)
    processed: list[list[str]] = []
    acked: list[int] = []
    monkeypatch.setattr(w, "_pump", lambda timeout: None)
    monkeypatch.setattr(w, "_handle", lambda batch: processed.append(
        [b.raw.device_id for b in batch]) or True)
    monkeypatch.setattr(w.client, "ack_many", lambda mids: acked.extend(mids))
    while w._pending:
        batch = w._next_batch()
        own = [b for b in batch if b.raw is not None]
        if own:
            w._handle(own)
        w.client.ack_many([b.mid for b in batch])
    assert acked == list(range(1, len(devices) + 1))  # every one, in arrival order
    assert [d for batch in processed for d in batch] == mine  # only its own, in order
    assert all(len(b) == 3 for b in processed[:-1])  # batches count its own messages
