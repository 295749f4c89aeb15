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

import numpy as np
import numpy.typing as npt
import orjson

from simulators.fleet import device_id
from simulators.phone import PhoneFleet, fix_payload
from simulators.publisher import MqttTarget, Progress, PublishLog, Schedule

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
        for _ in range(65535):
            mid = self.next_mid
            self.next_mid = mid % 65535 + 1
            if mid not in self.in_flight:
                self.in_flight[mid] = index
                self.out.append(publish_packet(topic, mid, payload))
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
    socks = [c.sock for c in conns]
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
            wait = plan.wait_s(now)
            readable, _, _ = select.select(socks, [], [], min(max(wait, 0.0), 0.05))
            for c in conns:
                if c.sock in readable:
                    acked += c.read()
        finished = time.time()
        last_ack, last_change = acked, time.monotonic()
        while acked < sent and time.monotonic() - last_change < ack_wait_s:
            for c in conns:
                c.flush()
            readable, _, _ = select.select(socks, [], [], 0.05)
            for c in conns:
                if c.sock in readable:
                    acked += c.read()
            if acked != last_ack:
                last_ack, last_change = acked, time.monotonic()
                if progress is not None:
                    progress(sent, acked, fleet.wanderers_out())
        if progress is not None:
            progress(sent, acked, fleet.wanderers_out())
    finally:
        for c in conns:
            c.close()
    mask = np.zeros(sent, dtype=np.bool_)
    mask[np.array([i for c in conns for i in c.acked], dtype=np.int64)] = True
    return plan.log(acked, started, finished, mask)
