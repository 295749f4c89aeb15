"""A load generator that does not eat the CPU it measures: MQTT 3.1.1 QoS 1 PUBLISH packets
encoded by hand and written to raw sockets in batches, PUBACKs parsed in bulk and counted per
connection (`make bench`; the paho publisher in simulators/publisher.py makes one system call
and several Python objects per message, which at 10,000 reports/s costs more CPU than the
ingest worker it is measuring).

It speaks just enough MQTT for that: CONNECT (clean session), PUBLISH at QoS 1, PUBACK,
PINGREQ/PINGRESP. A lost connection is an error (the bench does not restart its broker; the
fault-injection run keeps the paho publisher, which reconnects).
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import orjson

from geofence.crs import to_wgs84_mixed
from simulators.fleet import device_id
from simulators.phone import PhoneFleet, fix_payload, owntracks_payload
from simulators.publisher import TICK_S, MqttTarget, Progress, PublishLog, Schedule

KEEPALIVE_S = 60


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: bytes) -> bytes:
    return struct.pack("!H", len(s)) + s


def connect_packet(client_id: str, username: str | None, password: str | None) -> bytes:
    """MQTT 3.1.1 CONNECT, clean session."""
    flags = 0x02 | (0x80 if username else 0) | (0x40 if password else 0)
    body = _str(b"MQTT") + bytes([4, flags]) + struct.pack("!H", KEEPALIVE_S)
    body += _str(client_id.encode())
    if username:
        body += _str(username.encode())
    if password:
        body += _str(password.encode())
    return b"\x10" + _varint(len(body)) + body


def publish_packet(topic: bytes, mid: int, payload: bytes) -> bytes:
    """MQTT PUBLISH at QoS 1 (fixed header 0x32)."""
    n = 2 + len(topic) + 2 + len(payload)
    return b"\x32" + _varint(n) + struct.pack("!H", len(topic)) + topic + \
        struct.pack("!H", mid) + payload


class Connection:
    """One MQTT connection: packets go out in batches, PUBACKs come back in bulk."""

    def __init__(self, target: MqttTarget, client_id: str, timeout_s: float = 10.0) -> None:
        self.sock = socket.create_connection((target.host, target.port), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(connect_packet(client_id, target.username, target.password))
        ack = b""
        while len(ack) < 4:
            chunk = self.sock.recv(4 - len(ack))
            if not chunk:
                raise ConnectionError("the broker closed the connection before CONNACK")
            ack += chunk
        if ack[0] != 0x20 or ack[3] != 0:
            raise ConnectionError(f"MQTT broker refused us: CONNACK {ack.hex()}")
        self.sock.setblocking(False)
        self.out: list[bytes] = []
        self.next_mid = 1
        self.in_flight: dict[int, int] = {}  # mid -> index of the publish
        self.acked: list[int] = []
        self.rbuf = b""
        self.last_sent = time.monotonic()

    def publish(self, topic: bytes, payload: bytes, index: int) -> bool:
        """Queue one publish; False if every message id is in flight (the caller waits)."""
        n = 2 + len(topic) + 2 + len(payload)
        return self.publish_encoded(b"\x32" + _varint(n) + struct.pack("!H", len(topic)) + topic,
                                    payload, index)

    def publish_encoded(self, head: bytes, tail: bytes, index: int) -> bool:
        """Queue a packet encoded ahead, `head` up to the message id and `tail` after it; False
        if every message id is in flight (the caller waits)."""
        for _ in range(65535):
            mid = self.next_mid
            self.next_mid = mid % 65535 + 1
            if mid not in self.in_flight:
                self.in_flight[mid] = index
                self.out.append(head + mid.to_bytes(2, "big") + tail)
                return True
        return False

    def flush(self) -> None:
        """Write what is queued (blocking until the kernel took it all)."""
        if not self.out:
            if time.monotonic() - self.last_sent > KEEPALIVE_S / 2:
                self.out.append(b"\xc0\x00")  # PINGREQ
            else:
                return
        data = b"".join(self.out)
        self.out = []
        self.sock.setblocking(True)
        try:
            self.sock.sendall(data)
        finally:
            self.sock.setblocking(False)
        self.last_sent = time.monotonic()

    def read(self) -> int:
        """Take every PUBACK that arrived; returns how many."""
        got = 0
        while True:
            try:
                chunk = self.sock.recv(65536)
            except BlockingIOError:
                break
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            self.rbuf += chunk
        buf, pos = self.rbuf, 0
        while len(buf) - pos >= 2:
            kind, length = buf[pos], buf[pos + 1]  # PUBACK and PINGRESP: one length byte
            if len(buf) - pos < 2 + length:
                break
            if kind == 0x40:
                index = self.in_flight.pop(int.from_bytes(buf[pos + 2:pos + 4], "big"), None)
                if index is not None:
                    self.acked.append(index)
                    got += 1
            elif kind != 0xD0:
                raise ConnectionError(f"unexpected MQTT packet type {kind:#x} from the broker")
            pos += 2 + length
        self.rbuf = buf[pos:]
        return got

    def close(self) -> None:
        """DISCONNECT and close."""
        try:
            self.sock.setblocking(True)
            self.sock.sendall(b"\xe0\x00")
        except OSError:
            pass
        self.sock.close()


def _read_ready(conns: list[Connection], timeout: float) -> int:
    """Wait up to `timeout` for PUBACKs on any connection; returns how many came."""
    readable, _, _ = select.select([c.sock for c in conns], [], [], timeout)
    return sum(c.read() for c in conns if c.sock in readable)


def _drain(conns: list[Connection], sent: int, acked: int, ack_wait_s: float,
           on_ack: Callable[[int], None]) -> int:
    """After the last publish: wait for PUBACKs until all came or none for `ack_wait_s`."""
    last_ack, last_change = acked, time.monotonic()
    while acked < sent and time.monotonic() - last_change < ack_wait_s:
        for c in conns:
            c.flush()
        acked += _read_ready(conns, 0.05)
        if acked != last_ack:
            last_ack, last_change = acked, time.monotonic()
            on_ack(acked)
    return acked


def _acked_mask(conns: list[Connection], sent: int) -> npt.NDArray[np.bool_]:
    mask = np.zeros(sent, dtype=np.bool_)
    mask[np.array([i for c in conns for i in c.acked], dtype=np.int64)] = True
    return mask


def publish_fleet_raw(
    fleet: PhoneFleet,
    n_total: int,
    interval_s: float,
    t0: float,
    stop_at: float,
    target: MqttTarget,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    ack_wait_s: float = 30.0,
    silent_at: npt.NDArray[np.float64] | None = None,
    connections: int = 4,
) -> PublishLog:
    """`simulators.publisher.publish_fleet` on raw sockets: the same schedule, fixes, fix times
    and result, over `connections` MQTT connections (phone j uses connection j mod n)."""
    if interval_s <= 0.001:
        raise ValueError("interval_s must exceed 1 ms (fix times have ms resolution)")
    conns = [Connection(target, f"{target.client_id}-{k}") for k in range(connections)]
    topics = [f"{target.topic_prefix}devices/{device_id(int(p))}/location".encode()
              for p in fleet.phone]
    plan = Schedule(fleet, n_total, interval_s, t0, silent_at)
    sent = acked = 0
    started = time.time()
    try:
        while True:
            now = time.time()
            if now >= stop_at or (stop is not None and stop.is_set()):
                break
            due = plan.due(now)
            if due.size:
                batch = fleet.advance(now, due)
                ms = np.empty(due.size, dtype=np.int64)
                t_ms_now = round(time.time() * 1000)
                for k, j in enumerate(due):
                    ms[k] = t_ms = plan.fix_ms(j, t_ms_now)
                    c = conns[j % connections]
                    while not c.publish(topics[j], orjson.dumps(fix_payload(batch, k, t_ms / 1000)),
                                        sent + k):
                        c.flush()
                        select.select([c.sock], [], [], 0.05)
                        acked += c.read()
                plan.sent(due, ms)
                sent += due.size
                for c in conns:
                    c.flush()
                if progress is not None:
                    progress(sent, acked, fleet.wanderers_out())
            acked += _read_ready(conns, min(max(plan.wait_s(now), 0.0), 0.05))
        finished = time.time()

        def report(n: int) -> None:
            if progress is not None:
                progress(sent, n, fleet.wanderers_out())

        acked = _drain(conns, sent, acked, ack_wait_s, report)
        report(acked)
    finally:
        for c in conns:
            c.close()
    return plan.log(acked, started, finished, _acked_mask(conns, sent))


# -- everything encoded before the run -------------------------------------------------------

_TIME_KEY = b'{"time":'
_TIME_W = 14  # "1733548800.123": the fix time's width in seconds with ms, until the year 2286
_TST_KEY = b'{"tst":'
_TST_W = 10  # "1733548800": OwnTracks' whole seconds, until the year 2286


@dataclass
class Prebuilt:
    """A publisher's whole run, encoded before it starts: for each message, when it is due
    (seconds after the start), which phone (local index) sends it, and its PUBLISH packet cut
    in two around the parts filled in when it goes out (the message id and the fix time)."""

    due: npt.NDArray[np.float64]
    phone: npt.NDArray[np.int64]
    head: list[bytes]  # fixed header with the remaining length, topic
    body: list[bytes]  # the JSON after `{"time":<fix time>` (OwnTracks: `{"tst":<seconds>`)
    out_at: npt.NDArray[np.float64]  # wanderers outside their district from these times on...
    out_n: npt.NDArray[np.int64]  # ...this many (for the progress line)
    whole_seconds: bool = False  # OwnTracks: the fix time in whole seconds (`tst`)


def prebuild(fleet: PhoneFleet, n_total: int, interval_s: float, duration_s: float,
             topic_prefix: str, silent_after: npt.NDArray[np.float64] | None = None,
             payload: str = "native") -> Prebuilt:
    """Run the fleet's schedule in virtual time (0 = the start) and encode every report.

    The same steps as the live loop when it keeps up: the phones due at a tick advance and
    report together, ticks at least `TICK_S` apart. `fleet` must be built for start time 0 and
    is left at the end of the run. The fix time goes in when the message is sent (the wall
    clock then, as `publish_fleet_raw` does), so the JSON is encoded with it cut out; its width
    is fixed, so the packet's length is known now. `payload` "owntracks": each phone publishes
    as the OwnTracks app does (`owntracks/bench/<device>`, `simulators.phone.owntracks_payload`,
    the fix time in whole seconds; odd-numbered phones as the 2014-15 iOS app did, -1 for what
    they lack).
    """
    own = payload == "owntracks"
    if not own and payload != "native":
        raise ValueError(f"payload {payload!r}: native or owntracks")
    if own and interval_s < 1.0:  # whole seconds: a faster phone's fix times would run ahead
        raise ValueError(f"an OwnTracks phone reports at most once a second, not every {interval_s:g} s")
    topics = [(f"{topic_prefix}owntracks/bench/{device_id(int(p))}" if own else
               f"{topic_prefix}devices/{device_id(int(p))}/location").encode()
              for p in fleet.phone]
    key, width = (_TST_KEY, _TST_W) if own else (_TIME_KEY, _TIME_W)
    plan = Schedule(fleet, n_total, interval_s, 0.0, silent_after)
    due_l: list[float] = []
    phone_l: list[int] = []
    head: list[bytes] = []
    body: list[bytes] = []
    out_at: list[float] = []
    out_n: list[int] = []
    vt = 0.0
    while vt < duration_s:
        due = plan.due(vt)
        if due.size:
            batch = fleet.advance(vt, due)
            wgs84 = to_wgs84_mixed(batch.lon, batch.lat, batch.crs) if own else None
            for k, j in enumerate(due.tolist()):
                if own:
                    # Every other phone an iPhone with the older app: -1 for what it lacks.
                    msg = owntracks_payload(batch, k, wgs84=wgs84,
                                            ios=bool(fleet.phone[j] % 2))
                else:
                    msg = fix_payload(batch, k)
                    del msg["time"]
                rest = b"," + orjson.dumps(msg)[1:]
                topic = topics[j]
                n = 2 + len(topic) + 2 + len(key) + width + len(rest)
                head.append(b"\x32" + _varint(n) + struct.pack("!H", len(topic)) + topic)
                body.append(rest)
                due_l.append(vt)
                phone_l.append(j)
            plan.sent(due, np.zeros(due.size, dtype=np.int64))
            out_at.append(vt)
            out_n.append(fleet.wanderers_out())
        vt = max(vt + TICK_S, float(plan.next_due.min()))
    return Prebuilt(np.array(due_l), np.array(phone_l, dtype=np.int64), head, body,
                    np.array(out_at), np.array(out_n, dtype=np.int64), own)


def publish_prebuilt(
    pre: Prebuilt,
    phones: npt.NDArray[np.int64],
    start: float,
    stop_at: float,
    target: MqttTarget,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    ack_wait_s: float = 30.0,
    connections: int = 4,
) -> PublishLog:
    """Send a `prebuild` run in real time from `start`: per wake-up, the messages then due get
    their message id and the wall-clock fix time (strictly increasing per phone) and go out in
    one write per connection; PUBACKs are counted as in `publish_fleet_raw`. `phones`: the
    global phone number of each local index (`fleet.phone`)."""
    conns = [Connection(target, f"{target.client_id}-{k}") for k in range(connections)]
    n = len(pre.due)
    time_ms = np.zeros(n, dtype=np.int64)
    last_ms: dict[int, int] = {}
    sent = acked = 0
    started = time.time()
    due, phone, head, body = pre.due, pre.phone.tolist(), pre.head, pre.body
    whole = pre.whole_seconds
    key, width, step = (_TST_KEY, _TST_W, 1000) if whole else (_TIME_KEY, _TIME_W, 1)

    def fmt(ms: int) -> bytes:
        return b"%d" % (ms // 1000) if whole else b"%.3f" % (ms / 1000)

    try:
        while True:
            now = time.time()
            if now >= stop_at or (stop is not None and stop.is_set()):
                break
            upto = int(np.searchsorted(due, now - start, side="right"))
            if upto > sent:
                # The fix time: now, to the millisecond (OwnTracks: the whole second)
                now_ms = (int(now) * 1000) if whole else round(now * 1000)
                stamp = fmt(now_ms)
                if len(stamp) != width:  # the packets' lengths were counted with this width
                    raise RuntimeError(f"the clock reads {stamp!r}: outside 2001-2286")
                for m in range(sent, upto):
                    j = phone[m]
                    t_ms = now_ms
                    if last_ms.get(j, 0) >= now_ms:  # twice in one tick of the clock: one later
                        t_ms = last_ms[j] + step
                    last_ms[j] = time_ms[m] = t_ms
                    c = conns[j % connections]
                    tail = key + (stamp if t_ms == now_ms else fmt(t_ms)) + body[m]
                    while not c.publish_encoded(head[m], tail, m):
                        c.flush()
                        select.select([c.sock], [], [], 0.05)
                        acked += c.read()
                sent = upto
                for c in conns:
                    c.flush()
                if progress is not None:
                    k = int(np.searchsorted(pre.out_at, now - start, side="right")) - 1
                    progress(sent, acked, int(pre.out_n[k]) if k >= 0 else 0)
            if sent >= n:
                break
            acked += _read_ready(conns, min(max(start + float(due[sent]) - time.time(), 0.0),
                                            0.05))
        finished = time.time()
        out = int(pre.out_n[-1]) if len(pre.out_n) else 0
        acked = _drain(conns, sent, acked, ack_wait_s,
                       lambda n: progress(sent, n, out) if progress is not None else None)
    finally:
        for c in conns:
            c.close()
    return PublishLog(phones[pre.phone[:sent]], time_ms[:sent], acked, started, finished,
                      _acked_mask(conns, sent))
