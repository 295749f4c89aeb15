"""The ingest worker's paho client reads in bulk and acknowledges in bulk without changing what
MQTT guarantees: every message arrives whole and in order, across read boundaries and with
payloads larger than one read, and exactly the acknowledged ones are not sent again."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest.mqtt_client import READ_SIZE, BatchClient, puback_packets
from store.settings import Settings
from tests.services import forget_session


def test_puback_packets_are_mqtt_pubacks():
    assert puback_packets([1, 258, 65535]) == bytes(
        [0x40, 2, 0, 1, 0x40, 2, 1, 2, 0x40, 2, 0xFF, 0xFF])


class _Sub:
    """A persistent-session BatchClient that records what it receives."""

    def __init__(self, settings: Settings, client_id: str, topic: str, ack_even_now: bool):
        self.got: list[tuple[int, bytes, bool]] = []  # (number, payload, dup)
        self.mids: list[int] = []
        self.subscribed = threading.Event()
        self.c = BatchClient(callback_api_version=CallbackAPIVersion.VERSION2,
                             client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True)

        def on_message(c, u, m):  # type: ignore[no-untyped-def]
            n = int(m.payload[:8])
            self.got.append((n, bytes(m.payload), bool(m.dup)))
            if ack_even_now and n % 2 == 0:
                c.ack_many([m.mid])
            else:
                self.mids.append(m.mid)

        self.c.on_message = on_message
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600
        props.ReceiveMaximum = 65535
        self.c.connect(settings.mqtt_host, settings.mqtt_port, clean_start=False,
                       properties=props)
        self.c.loop_start()
        assert self.subscribed.wait(10)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _wait(cond, timeout: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.05)
    return bool(cond())


def test_bulk_reading_and_acknowledging_keep_every_mqtt_guarantee(settings: Settings):
    topic = f"{settings.mqtt_topic_prefix}bulk/test"
    client_id = f"{settings.mqtt_client_id}-bulk"
    n = 3000
    # Payloads of every size class: tiny, around a read's size, and several reads long.
    sizes = [20 + (k * 37) % 300 for k in range(n)]
    sizes[100], sizes[1500], sizes[2999] = READ_SIZE - 3, 3 * READ_SIZE + 17, 200_000
    bodies = [f"{k:08d}".encode() + bytes([65 + k % 26]) * (sizes[k] - 8) for k in range(n)]
    sub = _Sub(settings, client_id, topic, ack_even_now=True)
    pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                      client_id=f"{settings.mqtt_client_id}-bulk-pub",
                      protocol=mqtt.MQTTv5)
    pub.max_inflight_messages_set(0)
    pub.max_queued_messages_set(0)
    pub.connect(settings.mqtt_host, settings.mqtt_port)
    pub.loop_start()
    try:
        infos = [pub.publish(topic, b, qos=1) for b in bodies]
        for i in infos:
            i.wait_for_publish(20)
        assert all(i.is_published() for i in infos)
        assert _wait(lambda: len(sub.got) >= n)
        time.sleep(0.3)
        # Whole, in order, once.
        assert [k for k, _, _ in sub.got] == list(range(n))
        assert all(body == bodies[k] for k, body, _ in sub.got)
        sub.close()  # the odd ones were never acknowledged
        again = _Sub(settings, client_id, topic, ack_even_now=False)
        assert _wait(lambda: len(again.got) >= n // 2)
        time.sleep(0.5)
        assert [k for k, _, _ in again.got] == list(range(1, n, 2))  # exactly those, again
        assert all(dup for _, _, dup in again.got)
        assert again.c.ack_many(again.mids) == mqtt.MQTT_ERR_SUCCESS
        time.sleep(0.5)
        again.close()
        third = _Sub(settings, client_id, topic, ack_even_now=False)
        time.sleep(1.0)
        third.close()
        assert third.got == []  # everything acknowledged in bulk stayed acknowledged
    finally:
        pub.disconnect()
        pub.loop_stop()
        forget_session(settings, client_id)


def test_reports_arrive_as_plain_values_past_any_mqtt5_properties(settings: Settings):
    """`on_report` gets topic, payload, QoS and message id of each PUBLISH; the properties a
    publisher attached (user properties, content type, expiry) are skipped, not mistaken for
    payload."""
    topic = f"{settings.mqtt_topic_prefix}bulk/report"
    got: list[tuple[bytes, bytes, int, int]] = []
    sub = BatchClient(callback_api_version=CallbackAPIVersion.VERSION2,
                      client_id=f"{settings.mqtt_client_id}-report", protocol=mqtt.MQTTv5,
                      manual_ack=True)
    sub.on_report = lambda t, p, q, m: got.append((t, p, q, m))
    subscribed = threading.Event()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
    sub.connect(settings.mqtt_host, settings.mqtt_port)
    sub.loop_start()
    pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                      client_id=f"{settings.mqtt_client_id}-report-pub", protocol=mqtt.MQTTv5)
    pub.connect(settings.mqtt_host, settings.mqtt_port)
    pub.loop_start()
    try:
        assert subscribed.wait(10)
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("app", "x" * 300), ("k", "v")]  # a multi-byte property length
        props.ContentType = "application/json"
        props.MessageExpiryInterval = 3600
        bodies = [b'{"n": 1}', b"", bytes(range(256)) * 600]
        for k, b in enumerate(bodies):
            pub.publish(topic, b, qos=k % 2, properties=props).wait_for_publish(10)
        assert _wait(lambda: len(got) == 3)
        assert [(t, p, q) for t, p, q, _ in got] == [
            (topic.encode(), bodies[0], 0), (topic.encode(), bodies[1], 1),
            (topic.encode(), bodies[2], 0)]
        assert got[1][3] > 0 and sub.ack_many([got[1][3]]) == mqtt.MQTT_ERR_SUCCESS
    finally:
        pub.disconnect()
        pub.loop_stop()
        sub.disconnect()
        sub.loop_stop()


def test_a_read_limit_bounds_each_read_and_leaves_the_rest_buffered(settings: Settings):
    """With `read_limit`, one read hands over at most that many packets; what was already read
    from the socket waits in the client's buffer (`buffered`), and the next reads deliver it,
    in order, without waiting for the socket."""
    topic = f"{settings.mqtt_topic_prefix}bulk/limit"
    got: list[int] = []
    sub = BatchClient(callback_api_version=CallbackAPIVersion.VERSION2,
                      client_id=f"{settings.mqtt_client_id}-limit", protocol=mqtt.MQTTv5)
    sub.on_report = lambda t, p, q, m: got.append(int(p))
    subscribed = threading.Event()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect(settings.mqtt_host, settings.mqtt_port)
    sub.subscribe(topic, qos=0)
    deadline = time.monotonic() + 10
    while not subscribed.is_set() and time.monotonic() < deadline:
        sub.loop(timeout=0.1)
    pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                      client_id=f"{settings.mqtt_client_id}-limit-pub", protocol=mqtt.MQTTv5)
    pub.connect(settings.mqtt_host, settings.mqtt_port)
    pub.loop_start()
    try:
        for k in range(500):
            pub.publish(topic, b"%d" % k, qos=1).wait_for_publish(5)
        time.sleep(0.5)  # all 500 are in the subscriber's socket now
        sub.read_limit = 10
        sub.loop(timeout=1.0)
        assert len(got) == 10 and sub.buffered
        reads = 1
        while len(got) < 500 and reads < 1000:
            if sub.buffered:
                sub.loop_read()
            else:
                sub.loop(timeout=0.2)
            reads += 1
            assert len(got) <= 10 * reads
        assert got == list(range(500))
    finally:
        pub.disconnect()
        pub.loop_stop()
        sub.disconnect()


def _vbi(n: int) -> bytes:
    """An MQTT variable byte integer."""
    out = bytearray()
    while True:
        n, b = divmod(n, 128)
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _publish(topic: bytes, payload: bytes, qos: int, mid: int, props: bytes | None = None) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + (mid.to_bytes(2, "big") if qos else b"")
    if props is not None:  # MQTT 5: property length (a varint) and the properties
        body += _vbi(len(props)) + props
    body += payload
    return bytes([0x30 | qos << 1]) + _vbi(len(body)) + body


class _NoSocket:
    def close(self) -> None:
        pass


def _buffered(protocol: int, data: bytes) -> tuple[BatchClient, list]:
    c = BatchClient(callback_api_version=CallbackAPIVersion.VERSION2, protocol=protocol)
    got: list = []
    c.on_report = lambda t, p, q, m: got.append((t, p, q, m))
    c._sock = c._rsock = _NoSocket()  # type: ignore[assignment]  # no network: the buffer only
    c._rbuf, c._rpos = data, 0
    return c, got


def test_complete_publishes_in_the_buffer_are_parsed_in_place_and_the_rest_left_to_paho():
    big = bytes(range(256)) * 3  # a two-byte remaining length
    a = _publish(b"t/1", b'{"n":1}', 1, 7)
    b = _publish(b"t/2", big, 0, 0)
    c_ = _publish(b"t/3", b"x", 1, 65535)
    for cut in (1, 2, 5, len(c_) - 1):  # inside the length varint, the topic, the payload
        client, got = _buffered(mqtt.MQTTv311, a + b + c_[:cut])
        assert client._buffered_publishes(100) == 2
        assert got == [(b"t/1", b'{"n":1}', 1, 7), (b"t/2", big, 0, 0)]
        assert client._rpos == len(a + b)  # the cut packet is paho's to finish
    client, got = _buffered(mqtt.MQTTv311, a + b + c_)
    assert client._buffered_publishes(2) == 2 and client._rpos == len(a + b)  # the limit holds
    assert client._buffered_publishes(5) == 1 and got[-1] == (b"t/3", b"x", 1, 65535)
    # A PINGRESP, a QoS 2 PUBLISH or a malformed length stop it where they begin.
    for stopper in (b"\xd0\x00", _publish(b"t/q2", b"y", 2, 9), b"\x32\xff\xff\xff\xff\x01"):
        client, got = _buffered(mqtt.MQTTv311, a + stopper + b)
        assert client._buffered_publishes(100) == 1 and client._rpos == len(a)
    # MQTT 5: the properties are skipped, not taken for payload.
    props = b"\x03\x00\x10application/json"  # content type
    client, got = _buffered(mqtt.MQTTv5, _publish(b"t/5", b"{}", 1, 3, props)
                            + _publish(b"t/6", b"[]", 0, 0, b""))
    assert client._buffered_publishes(100) == 2
    assert got == [(b"t/5", b"{}", 1, 3), (b"t/6", b"[]", 0, 0)]
    # Fields that overrun the packet's length (a topic length too long; MQTT 5 without room
    # for the property length) or QoS 3, which MQTT forbids: left to paho, which rejects them.
    liar = b"\x30\x04\x00\x09ab"
    for protocol, bad in ((mqtt.MQTTv311, liar), (mqtt.MQTTv311, b"\x36\x05\x00\x01t\x00\x01"),
                          (mqtt.MQTTv5, b"\x30\x03\x00\x01t")):
        client, got = _buffered(protocol, a if protocol == mqtt.MQTTv311 else b"")
        client._rbuf += bad + b
        assert client._buffered_publishes(100) == len(got) and client._rpos == len(
            client._rbuf) - len(bad + b)
    # A report the callback could not take is handed over again on the next read, in order.
    client, got = _buffered(mqtt.MQTTv311, a + b)
    calls = []

    def refuse_first(t: bytes, p: bytes, q: int, m: int) -> None:
        calls.append(t)
        if len(calls) == 1:
            raise RuntimeError("not now")
        got.append(t)

    client.on_report = refuse_first
    with pytest.raises(RuntimeError, match="not now"):
        client._buffered_publishes(100)
    assert client._rpos == 0 and client._buffered_publishes(100) == 2
    assert got == [b"t/1", b"t/2"]
    # A buffer left from an earlier connection is never parsed.
    client, got = _buffered(mqtt.MQTTv311, a)
    client._sock = _NoSocket()  # type: ignore[assignment]
    assert client._buffered_publishes(100) == 0 and got == []


@hsettings(max_examples=300, deadline=None)
@given(packets=st.lists(st.tuples(
    st.binary(min_size=1, max_size=40), st.sampled_from([0, 1, 2, 127, 128, 129, 16383, 16384, 20000]),
    st.integers(0, 1), st.integers(1, 65535), st.one_of(st.none(), st.binary(max_size=130))),
    min_size=1, max_size=5), v5=st.booleans(), cut=st.floats(0, 1))
def test_any_run_of_publishes_cut_anywhere_is_read_up_to_the_cut(packets, v5: bool, cut: float):
    """Remaining lengths of one to three bytes, MQTT 5 property lengths of one or two: every
    complete packet before the buffer's end is handed over whole, in order, and nothing of the
    packet the end cuts."""
    wire, want = [], []
    for topic, size, qos, mid, props in packets:
        payload = bytes(i % 251 for i in range(size))
        wire.append(_publish(topic, payload, qos, mid if qos else 0, (props or b"") if v5 else None))
        want.append((topic, payload, qos, mid if qos else 0))
    data = b"".join(wire)
    end = round(cut * len(data))
    client, got = _buffered(mqtt.MQTTv5 if v5 else mqtt.MQTTv311, data[:end])
    complete, pos = 0, 0
    for w in wire:
        if pos + len(w) > end:
            break
        pos += len(w)
        complete += 1
    assert client._buffered_publishes(100) == complete
    assert got == want[:complete] and client._rpos == pos

