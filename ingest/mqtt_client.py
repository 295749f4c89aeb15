"""paho-mqtt's client, reading and acknowledging in bulk (the ingest worker's hot path).

Stock paho 2 reads each incoming packet with at least three `recv()` calls (command byte,
each length byte, the rest) and does one `select()` per packet, and sends every PUBACK as its
own `send()` after waking its network thread through a socket pair. At thousands of reports
a second that, not the pipeline, is where an ingest worker's time goes. This subclass changes
only the I/O under paho's packet handling, which stays paho's:

- `_sock_recv` serves paho's small reads from a 64 KiB buffer filled by one `recv()`;
- `_handle_publish` hands a QoS 0/1 message to `on_report` as (topic, payload, qos, mid)
  bytes and ints, without paho's MQTTMessage, MQTT 5 properties object and debug line;
- `_handle_on_message` calls `on_message` without matching the topic against per-topic
  callbacks (`message_callback_add` is refused);
- `loop_read` handles every complete packet that arrived (paho's handles one per wake-up),
  parsing the QoS 0/1 PUBLISH packets that lie whole in the buffer in place and leaving
  anything else, or a packet the buffer's end cuts, to paho's reader;
- `ack_many` queues the PUBACKs of a whole batch as one write.

paho is pinned (requirements.lock): these override private methods whose behaviour the tests
pin down (tests/test_mqtt_client.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

PUBACK = 0x40
READ_SIZE = 65536


def puback_packets(mids: Iterable[int]) -> bytes:
    """Consecutive PUBACK packets (remaining length 2: success, no properties, which MQTT 5
    allows and MQTT 3.1.1 requires)."""
    return b"".join(b"\x40\x02" + mid.to_bytes(2, "big") for mid in mids)


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """An MQTT variable byte integer (at most 4 bytes) at `pos`, before `end`: (position after
    it, value), or (-1, 0) when it is cut by `end` or longer than 4 bytes."""
    value, mult = 0, 1
    for p in range(pos, min(pos + 4, end)):
        b = buf[p]
        value += (b & 0x7F) * mult
        if not b & 0x80:
            return p + 1, value
        mult *= 128
    return -1, 0


def _publish_fields(buf: bytes, p: int, stop: int, qos: int, v5: bool
                    ) -> tuple[bytes, int, int] | None:
    """A PUBLISH's variable header between `p` and `stop`: (topic, where the payload begins,
    packet id (0 at QoS 0)), MQTT 5 properties skipped; None when its fields overrun `stop`."""
    if p + 2 > stop:
        return None
    q = p + 2 + int.from_bytes(buf[p:p + 2], "big")
    topic = buf[p + 2:q]
    mid = 0
    if qos:
        mid = int.from_bytes(buf[q:q + 2], "big")
        q += 2
    if v5 and q <= stop:  # the properties: their length (a varint), then them
        if q < stop and buf[q] < 0x80:  # the usual: none, or a few bytes
            q += 1 + buf[q]
        else:
            q, plen = _varint(buf, q, stop)
            q = q + plen if q >= 0 else stop + 1
    return None if q > stop else (topic, q, mid)


class BatchClient(mqtt.Client):
    """A paho client that reads many packets per system call and acknowledges in bulk."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""
        self._rpos = 0
        self._rsock: object = None
        # At most this many packets per loop_read (None or 0: until the socket is empty). A caller
        # that bounds how far it reads ahead sets it, and reads `buffered` bytes first.
        self.read_limit: int | None = None
        # on_report(topic: bytes, payload: bytes, qos, mid): every QoS 0/1 PUBLISH, instead of
        # on_message (None: paho's on_message path)
        self.on_report: Callable[[bytes, bytes, int, int], None] | None = None

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._sock is not self._rsock:  # a new connection: nothing buffered belongs to it
            self._rsock, self._rbuf, self._rpos = self._sock, b"", 0
        if self._rpos >= len(self._rbuf):
            data = super()._sock_recv(READ_SIZE)  # raises BlockingIOError when nothing came
            if not data:
                return data  # the connection closed
            self._rbuf, self._rpos = data, 0
        end = self._rpos + bufsize
        out = self._rbuf[self._rpos:end]
        self._rpos = min(end, len(self._rbuf))
        return out

    @property
    def buffered(self) -> bool:
        """Whether bytes already read from the socket wait in this client's buffer (a
        `select()` on the socket would not see them: call `loop_read` again)."""
        return self._sock is not None and self._sock is self._rsock and \
            self._rpos < len(self._rbuf)

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Handle the packets the socket holds, until a read would block or `read_limit`
        packets were handled (then `buffered` may be true)."""
        left = self.read_limit or 2**62
        while left > 0:
            if self._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            if self.on_report is not None and self._in_packet["command"] == 0:
                left -= self._buffered_publishes(left)
                if left <= 0:
                    break
            rc = self._packet_read()
            left -= 1
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            if rc > 0:
                return self._loop_rc_handle(rc)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _buffered_publishes(self, limit: int) -> int:
        """Hand the complete QoS 0/1 PUBLISH packets at the head of the read buffer to
        `on_report`, parsed in place (paho reads a packet in three or more steps, each a call
        and a copy); stop at anything else, at a packet the buffer's end cuts, or at one whose
        fields do not fit its length, which paho's own reader then takes (and rejects, if
        malformed). A packet counts as read only once `on_report` returned: if it raises, the
        packet is handed over again on the next read, as paho does. Returns how many."""
        if self._rsock is not self._sock:
            return 0
        buf, pos, end = self._rbuf, self._rpos, len(self._rbuf)
        on_report = self.on_report
        assert on_report is not None
        v5 = self._protocol == mqtt.MQTTv5
        n = 0
        try:
            while n < limit and pos < end:
                header = buf[pos]
                qos = (header & 0x06) >> 1
                if header & 0xF0 != 0x30 or qos >= 2:
                    break  # not a PUBLISH we take (QoS 2; QoS 3 is a protocol error): paho's
                # The remaining length: one byte up to 127, two up to 16,383 (every report),
                # read here; longer ones by _varint.
                p = pos + 2
                length = buf[pos + 1] if p <= end else 128
                if length & 0x80:
                    if p < end and not buf[p] & 0x80:
                        length = (length & 0x7F) | buf[p] << 7
                        p += 1
                    else:
                        p, length = _varint(buf, pos + 1, end)
                if p < 0:
                    break  # length cut by the buffer's end, or malformed: paho's
                stop = p + length
                if stop > end:
                    break  # the rest has not arrived yet
                fields = _publish_fields(buf, p, stop, qos, v5)
                if fields is None:
                    break  # its fields overrun its length: malformed, paho's to reject
                topic, q, mid = fields
                on_report(topic, buf[q:stop], qos, mid)
                pos = self._rpos = stop
                n += 1
        finally:
            if n:
                with self._msgtime_mutex:
                    self._last_bytes_received = mqtt.time_func()
        return n

    def _handle_publish(self) -> MQTTErrorCode:
        # With `on_report` set, a QoS 0 or 1 PUBLISH goes to it as plain values, without the
        # MQTTMessage, the parsed MQTT 5 properties and the debug log line paho builds for each
        # (a fifth of the ingest worker's time). The server sends no topic alias unless the
        # client allows one in its CONNECT, which this client never does; QoS 2 goes to paho.
        on_report = self.on_report
        header = self._in_packet["command"]
        qos = (header & 0x06) >> 1
        if on_report is None or qos >= 2:
            return super()._handle_publish()
        packet = bytes(self._in_packet["packet"])
        fields = _publish_fields(packet, 0, len(packet), qos, self._protocol == mqtt.MQTTv5)
        if fields is None:  # malformed: paho's own parser says so
            return super()._handle_publish()
        topic, pos, mid = fields
        on_report(topic, packet[pos:], qos, mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def message_callback_add(self, sub: str, callback: Any) -> None:
        """Not supported: every message goes to `on_message` (see `_handle_on_message`)."""
        raise NotImplementedError("BatchClient delivers every message to on_message")

    def _handle_on_message(self, message: mqtt.MQTTMessage) -> None:
        # Straight to on_message: paho first matches every topic against its tree of per-topic
        # callbacks, which this client never has (a tenth of the ingest worker's time).
        on_message = self.on_message
        if on_message is None:
            return
        with self._in_callback_mutex:
            try:
                on_message(self, self._userdata, message)
            except Exception as err:
                self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                if not self.suppress_exceptions:
                    raise

    def ack_many(self, mids: list[int]) -> MQTTErrorCode:
        """Acknowledge QoS 1 messages (manual acknowledgement) in one write."""
        if not mids:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        if self._sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN  # the broker sends them again on reconnect
        return self._packet_queue(PUBACK, puback_packets(mids), 0, 0)
