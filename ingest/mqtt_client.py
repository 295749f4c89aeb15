"""paho-mqtt's client, reading and acknowledging in bulk (the ingest worker's hot path).

Stock paho 2 reads each incoming packet with at least three `recv()` calls (command byte,
each length byte, the rest) and does one `select()` per packet, and sends every PUBACK as its
own `send()` after waking its network thread through a socket pair. At thousands of reports
a second that, not the pipeline, is where an ingest worker's time goes. This subclass changes
only the I/O under paho's packet handling, which stays paho's:

- `_sock_recv` serves paho's small reads from a 64 KiB buffer filled by one `recv()`;
- `loop_read` handles every complete packet that arrived (paho's handles one per wake-up);
- `ack_many` queues the PUBACKs of a whole batch as one write, and acknowledgements made
  from a message callback (`ack_later`) go out together once the read is done.

paho is pinned (requirements.lock): these override private methods whose behaviour the tests
pin down (tests/test_mqtt_client.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

PUBACK = 0x40
READ_SIZE = 65536


def puback_packets(mids: Iterable[int]) -> bytes:
    """Consecutive PUBACK packets (remaining length 2: success, no properties, which MQTT 5
    allows and MQTT 3.1.1 requires)."""
    return b"".join(b"\x40\x02" + mid.to_bytes(2, "big") for mid in mids)


class BatchClient(mqtt.Client):
    """A paho client that reads many packets per system call and acknowledges in bulk."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""
        self._rpos = 0
        self._rsock: object = None
        self._later: list[int] = []

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

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Handle every packet the socket holds (until a read would block), then send the
        acknowledgements the callbacks asked for, in one write."""
        try:
            while True:
                if self._sock is None:
                    return MQTTErrorCode.MQTT_ERR_NO_CONN
                rc = self._packet_read()
                if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                    return MQTTErrorCode.MQTT_ERR_SUCCESS
                if rc > 0:
                    return self._loop_rc_handle(rc)
        finally:
            if self._later:
                mids, self._later = self._later, []
                self.ack_many(mids)

    def ack_later(self, mid: int) -> None:
        """Acknowledge a QoS 1 message once the current read is done (call from `on_message`)."""
        self._later.append(mid)

    def ack_many(self, mids: list[int]) -> MQTTErrorCode:
        """Acknowledge QoS 1 messages (manual acknowledgement) in one write."""
        if not mids:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        if self._sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN  # the broker sends them again on reconnect
        return self._packet_queue(PUBACK, puback_packets(mids), 0, 0)
