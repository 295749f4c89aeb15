"""Publishing a simulated fleet over MQTT in real time (shared by `python -m simulators` and
the bench).

Each phone reports every `interval_s`; phases are spread evenly over the interval so the
aggregate rate is smooth. A fix's time is the wall-clock time of its publish (ms resolution,
strictly increasing per phone), so (device, fix time) identifies a published fix and
"received - fix time" is the delivery latency.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from simulators.fleet import device_id
from simulators.phone import PhoneFleet, fix_payload

log = logging.getLogger("simulators.publisher")

# No client-side cap on unacknowledged QoS 1 messages (0 = unlimited). paho's default of 20
# would make the PUBACK round trip the limit, and any positive cap is worse than it looks:
# with a cap set, paho 2.x walks every outstanding message on each PUBACK
# (Client._update_inflight), so once a backlog builds each acknowledgement costs O(backlog)
# and the publisher collapses (50,000 messages: 31 s with a cap of 10,000, 3 s without).
MAX_INFLIGHT = 0
ACK_WAIT_S = 30.0
TICK_S = 0.02

Progress = Callable[[int, int, int], None]  # (sent, acked, wanderers out)


@dataclass(frozen=True)
class MqttTarget:
    """Where and as whom to publish."""

    host: str = "127.0.0.1"
    port: int = 1884
    client_id: str = "ccs-simulator"
    username: str | None = None
    password: str | None = None
    topic_prefix: str = ""  # the system's namespace on a shared broker (CCS_MQTT_TOPIC_PREFIX)


@dataclass
class PublishLog:
    """What one publisher sent: one (phone, fix time in ms) per publish, and the PUBACK count."""

    phone: npt.NDArray[np.int64]
    time_ms: npt.NDArray[np.int64]
    acked: int
    started: float
    finished: float
    # Which publishes the broker acknowledged (PUBACK), in the order of `phone`/`time_ms`.
    acked_mask: npt.NDArray[np.bool_]

    @property
    def sent(self) -> int:
        """Number of publishes."""
        return int(self.phone.size)


def connect(target: MqttTarget, threaded: bool = True, timeout_s: float = 10.0) -> mqtt.Client:
    """A connected QoS 1 publisher (raises if the broker does not accept it).

    threaded: paho runs its network loop in a thread; otherwise the caller must call
    `client.loop()` regularly (cheaper: no thread wake-ups and GIL hand-offs per message).
    """
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                         client_id=target.client_id, protocol=mqtt.MQTTv311, clean_session=True)
    client.max_inflight_messages_set(MAX_INFLIGHT)
    client.max_queued_messages_set(0)  # unlimited: nothing generated is dropped client-side
    if target.username:
        client.username_pw_set(target.username, target.password)
    ok = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: ok.set() if not rc.is_failure else None
    client.connect(target.host, target.port, keepalive=30)
    deadline = time.monotonic() + timeout_s
    if threaded:
        client.loop_start()
        ok.wait(timeout_s)
    else:
        while not ok.is_set() and time.monotonic() < deadline:
            client.loop(timeout=0.05)
    if not ok.is_set():
        if threaded:
            client.loop_stop()
        raise ConnectionError(f"MQTT broker {target.host}:{target.port} did not accept us")
    return client


class Schedule:
    """When each phone of a fleet reports next, and the fix times it used (shared by the paho
    and the raw-socket publishers): phases spread by global phone number so several publishers
    interleave evenly; a fix time is the publish's wall-clock ms, strictly increasing per
    phone; a phone past its `silent_at` reports no more."""

    def __init__(self, fleet: PhoneFleet, n_total: int, interval_s: float, t0: float,
                 silent_at: npt.NDArray[np.float64] | None = None) -> None:
        self.fleet, self.interval_s, self.silent_at = fleet, interval_s, silent_at
        self.next_due = t0 + fleet.phone * (interval_s / n_total)
        self.last_ms = np.zeros(fleet.n, dtype=np.int64)
        self.phones: list[npt.NDArray[np.int64]] = []
        self.times: list[npt.NDArray[np.int64]] = []

    def due(self, now: float) -> npt.NDArray[np.intp]:
        """Local indexes of the phones due at `now`."""
        return np.flatnonzero(self.next_due <= now)

    def fix_ms(self, j: int, now_ms: int) -> int:
        """The fix time (ms) of phone j's report now."""
        t_ms = max(now_ms, int(self.last_ms[j]) + 1)
        self.last_ms[j] = t_ms
        return t_ms

    def sent(self, due: npt.NDArray[np.intp], ms: npt.NDArray[np.int64]) -> None:
        """Record what was published and schedule those phones' next reports."""
        self.phones.append(self.fleet.phone[due])
        self.times.append(ms)
        self.next_due[due] += self.interval_s
        if self.silent_at is not None:
            self.next_due[due] = np.where(self.next_due[due] > self.silent_at[due], np.inf,
                                          self.next_due[due])

    def wait_s(self, now: float) -> float:
        """How long until the next tick."""
        return max(float(self.next_due.min()), now + TICK_S) - time.time()

    def log(self, acked: int, started: float, finished: float,
            mask: npt.NDArray[np.bool_]) -> PublishLog:
        """The publisher's result."""
        return PublishLog(
            np.concatenate(self.phones) if self.phones else np.empty(0, dtype=np.int64),
            np.concatenate(self.times) if self.times else np.empty(0, dtype=np.int64),
            acked, started, finished, mask)


def publish_fleet(
    fleet: PhoneFleet,
    n_total: int,
    interval_s: float,
    t0: float,
    stop_at: float,
    target: MqttTarget,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    ack_wait_s: float = ACK_WAIT_S,
    silent_at: npt.NDArray[np.float64] | None = None,
) -> PublishLog:
    """Publish the fleet's fixes from t0 until stop_at (or `stop`), then wait for PUBACKs.

    The wait for PUBACKs ends after `ack_wait_s` without any new acknowledgement.
    `silent_at`: per phone of the fleet, the wall-clock time after which it stops reporting
    (inf: never). A lost connection to the broker is re-established; paho sends the
    unacknowledged messages again.
    """
    if interval_s <= 0.001:
        raise ValueError("interval_s must exceed 1 ms (fix times have ms resolution)")
    acked = 0
    in_flight: dict[int, int] = {}  # mid -> index of the publish
    acked_idx: list[int] = []

    def on_publish(client, userdata, mid, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        nonlocal acked
        acked += 1  # called from client.loop() in this thread
        k = in_flight.pop(mid, None)
        if k is not None:
            acked_idx.append(k)

    client = connect(target, threaded=False)
    client.on_publish = on_publish
    topics = [f"{target.topic_prefix}devices/{device_id(int(p))}/location" for p in fleet.phone]
    plan = Schedule(fleet, n_total, interval_s, t0, silent_at)
    sent = 0
    started = time.time()
    reconnect_at = 0.0
    try:
        while True:
            now = time.time()
            if now >= stop_at or (stop is not None and stop.is_set()):
                break
            due = plan.due(now)
            if due.size:
                batch = fleet.advance(now, due)
                ms = np.empty(due.size, dtype=np.int64)
                for k, j in enumerate(due):
                    ms[k] = t_ms = plan.fix_ms(j, round(time.time() * 1000))
                    payload = orjson.dumps(fix_payload(batch, k, t_ms / 1000))
                    info = client.publish(topics[j], payload, qos=1)
                    # paho refuses (MQTT_ERR_QUEUE_SIZE) a message whose id is still in flight
                    # (ids wrap at 65,535): it is never sent, so it stays unacknowledged.
                    if info.rc != mqtt.MQTT_ERR_QUEUE_SIZE:
                        in_flight[info.mid] = sent + k
                plan.sent(due, ms)
                sent += due.size
                if progress is not None:
                    progress(sent, acked, fleet.wanderers_out())
            # Ticks of at least TICK_S: one model step per tick for all phones then due keeps
            # the per-call numpy overhead small (fix times are still taken per publish).
            wait = plan.wait_s(now)
            rc = client.loop(timeout=min(max(wait, 0.0), 0.05))  # PUBACKs, keep-alive, writes
            reconnect_at = _reconnect(client, rc, reconnect_at)
        finished = time.time()
        last_ack, last_change = acked, time.monotonic()
        while acked < sent and time.monotonic() - last_change < ack_wait_s:
            reconnect_at = _reconnect(client, client.loop(timeout=0.05), reconnect_at)
            if acked != last_ack:
                last_ack, last_change = acked, time.monotonic()
                if progress is not None:
                    progress(sent, acked, fleet.wanderers_out())
        if progress is not None:
            progress(sent, acked, fleet.wanderers_out())
    finally:
        client.disconnect()
        client.loop(timeout=0.1)
    if acked < sent:
        log.warning("%d of %d publishes were not acknowledged by the broker", sent - acked, sent)
    mask = np.zeros(sent, dtype=np.bool_)
    mask[np.array(acked_idx, dtype=np.int64)] = True
    return plan.log(acked, started, finished, mask)


def _reconnect(client: mqtt.Client, rc: mqtt.MQTTErrorCode, due_at: float) -> float:
    """After a lost connection, try to reconnect at most every 0.5 s; returns the next try."""
    if rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN) or time.monotonic() < due_at:
        return due_at
    try:
        client.reconnect()
        log.info("reconnected to the broker")
    except OSError as e:
        log.info("broker not reachable (%s); retrying", e)
    return time.monotonic() + 0.5
