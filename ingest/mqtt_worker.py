"""MQTT ingest worker: persistent MQTT 5 session, QoS 1, acknowledged only after commit.

Each message is acknowledged, in arrival order, only after its batch committed. If this
process dies, the broker redelivers everything unacknowledged; duplicates are recognised by
(device, fix time).

Several workers split the load (`ingest_dispatch`, store/settings.py), each with its own client
id and persistent session:
- "partition" (the default, for Mosquitto): every worker subscribes to every report with a plain
  subscription and processes only the devices of its partition (`partition_of`), acknowledging
  the others unread; one device's reports reach one worker, in order. Mosquitto restores plain
  subscriptions of persistent sessions after its own restart, so reports published before the
  workers are back are queued for them. It does not restore shared ones (2.0.11, measured:
  tests/test_broker_restart.py), which is why this is the default.
- "share" (for an EMQX cluster, dispatched by client id hash): an MQTT 5 shared subscription
  `$share/{group}/...`. Mosquitto 2 hands a shared message to the group's members in turn,
  offline persistent sessions included, and what a worker received but had not acknowledged
  goes back to that same session only.
Either way a worker's client id must survive its restarts (a worker id, or the hostname and
the worker's index; never the pid), or its messages wait in an orphaned session until that
expires. The worker's owner leases on devices (store/state.py) carry the same id, so a worker
restarted after a kill takes its predecessor's leases over at once instead of waiting for them
to run out.

One thread does everything: it runs paho's network loop itself (`_pump`), collects what
arrived, processes a batch, acknowledges it, and reads again. While a batch is processed
nothing is read, so the kernel's socket buffer and then the broker hold the backlog (the broker
keeps it in the session, which survives this process): the worker's memory stays bounded and
no network thread competes with the pipeline for the interpreter.

A batch that fails because a service is unreachable is retried whole, with backoff; a message
that fails for any other reason is dead-lettered alone with the exception as its reason, and
the rest of the batch goes on: no worker ever spins on one batch.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
import time
import zlib
from dataclasses import dataclass

import paho.mqtt.client as mqtt
import redis
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client import Counter, Gauge, Histogram

from alerts.silences import write_load, write_watermark
from ingest.mqtt_client import BatchClient
from ingest.pipeline import (
    Channel,
    MessageResult,
    Pipeline,
    RawMessage,
    transient_reason,
)
from store import redisconn
from store.observe import Health, setup_logging
from store.runtime import tune_gc
from store.settings import Settings, get_settings
from store.topics import OWNTRACKS_SUBTOPICS, ingest_filters

log = logging.getLogger("ingest.mqtt")

RETRIES = Counter("ccs_ingest_batch_retries", "Batches retried after a transient failure",
                  ["reason"])
POISONED = Counter("ccs_ingest_messages_dead_lettered_on_error",
                   "Messages dead-lettered alone because processing them raised")
OTHERS = Counter("ccs_ingest_messages_other_partition",
                 "Messages acknowledged unread because another worker's partition holds the device")
RECEIVED = Counter("ccs_ingest_received", "Messages of this worker's own received from the broker",
                   ["worker"])
COMMITTED = Counter("ccs_ingest_committed", "Messages processed and committed (stored, or "
                    "recorded as dead letters) and then acknowledged", ["worker"])
DEAD = Counter("ccs_ingest_dead_letters", "Messages kept as dead letters, by reason",
               ["worker", "reason"])
BACKLOG = Gauge("ccs_ingest_backlog", "Messages received by this worker, not yet committed "
                "(the broker's queue for its session is the broker's own metric)", ["worker"])
BATCH = Histogram("ccs_ingest_batch_seconds", "Time to process and commit one batch", ["worker"],
                  buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
LAG = Gauge("ccs_ingest_commit_lag_seconds", "Age of the oldest message this worker received "
            "and has not committed yet (0: none waiting)", ["worker"])

def worker_client_id(settings: Settings) -> str:
    """This worker's MQTT client id: stable across restarts, distinct between workers."""
    worker = settings.ingest_worker_id or f"{socket.gethostname()}-{settings.ingest_worker_index}"
    return f"{settings.mqtt_client_id}-{worker}"


def shared(subs: list[tuple[str, int]], group: str) -> list[tuple[str, int]]:
    """The filters as an MQTT 5 shared subscription of `group` (none: plain filters)."""
    return [(f"$share/{group}/{t}", q) for t, q in subs] if group else subs


def partition_of(device_id: str | None, workers: int) -> int:
    """The partition (worker index) of a device: the same in every process and release. Reports
    that name no device go to partition 0, which dead-letters them once."""
    return zlib.crc32(device_id.encode()) % workers if device_id and workers > 1 else 0



_OWNTRACKS_SUBTOPICS_B = tuple(t.encode() for t in OWNTRACKS_SUBTOPICS)


def topic_partition(topic: bytes, prefix: bytes, workers: int) -> int | None:
    """`partition_of(route(topic...).device_id, workers)` read off the topic's bytes, without
    decoding it or building the message: how a worker passes over the other partitions'
    reports, half or more of what it reads. None where only `route` can tell (a topic that is
    not ASCII)."""
    if not topic.isascii():
        return None
    parts = topic[len(prefix):].split(b"/") if topic.startswith(prefix) else []
    n = len(parts)
    if n == 3 and parts[0] == b"devices" and parts[2] == b"location" and parts[1]:
        dev = parts[1]
    elif n in (3, 4) and parts[0] == b"owntracks" and parts[2] and (
            n == 3 or parts[3] in _OWNTRACKS_SUBTOPICS_B):
        dev = parts[2]
    else:
        return 0  # no device: partition 0 dead-letters it
    return zlib.crc32(dev) % workers if workers > 1 else 0


def subscriptions(prefix: str) -> list[tuple[str, int]]:
    """Topic filters of the ingest worker (QoS 1): store/topics.py."""
    return [(f, 1) for f in ingest_filters(prefix)]


@dataclass(slots=True)
class Inbound:
    """A received MQTT message waiting for its batch; `raw` None: another worker's partition
    (acknowledged in its turn, unread)."""

    mid: int
    qos: int
    raw: RawMessage | None
    at: float  # when it was received


def route(topic: str, payload: bytes, received_at: float, prefix: str = "") -> RawMessage:
    """Map a topic to its channel and the device it names (unroutable topics get device None)."""
    parts = topic[len(prefix):].split("/") if topic.startswith(prefix) else []
    if len(parts) == 3 and parts[0] == "devices" and parts[2] == "location" and parts[1]:
        return RawMessage(Channel.NATIVE_MQTT, payload, parts[1], topic, received_at)
    if parts[:1] == ["owntracks"] and len(parts) in (3, 4) and parts[2] and (
            len(parts) == 3 or parts[3] in OWNTRACKS_SUBTOPICS):  # location / event, waypoint(s)
        return RawMessage(Channel.OWNTRACKS_MQTT, payload, parts[2], topic, received_at)
    return RawMessage(Channel.NATIVE_MQTT, payload, None, topic, received_at)


class MqttIngestWorker:
    """Subscribes, batches, processes and acknowledges; `stop()` ends `run()` cleanly."""

    def __init__(self, settings: Settings | None = None, client_id: str | None = None) -> None:
        self.settings = settings or get_settings()
        self.client_id = client_id or worker_client_id(self.settings)
        self._pending: list[Inbound] = []  # received, not yet in a batch (on_report appends)
        self._own = 0  # how many of them are this worker's to process
        self._others = 0  # other partitions' reports not yet counted in OTHERS
        self._batch_stats: list[float] = [0, 0, 0.0]  # batches, messages, seconds processing
        self._stats_at = time.monotonic()
        self._reconnect_at = 0.0
        self._stop = threading.Event()
        self.connected = threading.Event()
        self.processed = 0
        self._subscribed_at = float("inf")
        self._watermark_at = 0.0
        self._redis: redis.Redis | None = None
        share = self.settings.ingest_dispatch == "share"
        self.group = self.settings.mqtt_share_group if share else ""
        # Partition mode with several workers: this worker's part of the devices.
        self.partition: tuple[int, int] | None = None
        self._prefix_b = self.settings.mqtt_topic_prefix.encode()
        if not share and self.settings.ingest_workers > 1:
            self.partition = (self.settings.ingest_worker_index, self.settings.ingest_workers)
        self.client = BatchClient(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if self.settings.mqtt_username:
            self.client.username_pw_set(self.settings.mqtt_username, self.settings.mqtt_password)
        self.client.on_connect = self._on_connect
        self.client.on_report = self._on_report
        # Read at most a batch's worth per wake-up: whatever the broker sends ahead waits in
        # the socket, so unacknowledged messages stay far below the 65,535 message ids.
        self.client.read_limit = self.settings.batch_max_messages
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        # Operations (store/observe.py): heartbeat, readiness, metrics of this worker.
        self.health = Health(f"ingest {self.client_id}", self._ready)
        self._failing: str | None = None  # a transient failure the current batch waits out
        self._oldest_at: float | None = None  # receive time of the oldest uncommitted message
        self._received = RECEIVED.labels(self.client_id)
        self._committed = COMMITTED.labels(self.client_id)
        self._batch_hist = BATCH.labels(self.client_id)
        BACKLOG.labels(self.client_id).set_function(lambda: self._own + self._in_batch)
        LAG.labels(self.client_id).set_function(
            lambda: 0.0 if self._oldest_at is None else max(time.time() - self._oldest_at, 0.0))
        self._in_batch = 0
        # Share of the time spent on batches, published with the watermark (alerts/silences.py
        # `write_load`): the positions archive gives way while a worker is saturated.
        self._busy_s, self._busy_since = 0.0, time.monotonic()

    def _ready(self) -> tuple[bool, str]:
        if not self.connected.is_set():
            return False, "not subscribed to the broker"
        if self._failing:
            return False, f"batches retried: {self._failing} unreachable"
        return True, "subscribed; the last batch committed"

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        if reason_code.is_failure:
            log.error("MQTT connect refused: %s", reason_code)
            return
        subs = subscriptions(self.settings.mqtt_topic_prefix)
        # A session that ran in the other dispatch mode keeps that mode's filters: drop them, or
        # it would receive every report twice.
        client.unsubscribe([t for t, _ in (subs if self.group else
                                           shared(subs, self.settings.mqtt_share_group))])
        client.subscribe(shared(subs, self.group))
        log.info("MQTT connected (session present: %s; %s)", flags.session_present,
                 f"shared subscription, group {self.group}" if self.group else
                 f"partition {self.partition[0]} of {self.partition[1]}" if self.partition else
                 "the only worker")
        if self.partition is not None and not flags.session_present:
            # The others acknowledged this partition's reports while no session held them.
            log.warning("this worker's MQTT session is new: reports of partition %d published "
                        "before now were not kept for it (docs/operations.md, changing the "
                        "number of ingest workers)", self.partition[0])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:  # type: ignore[no-untyped-def]
        refused = [str(rc) for rc in reason_codes if rc.is_failure]
        if refused:
            log.error("MQTT subscription refused (%s): check the broker's ACL for this worker",
                      ", ".join(refused))
            return
        log.info("MQTT subscribed")
        self._subscribed_at = time.time()
        self.connected.set()  # reports reach this worker from now on

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        self.connected.clear()
        if not self._stop.is_set():
            log.warning("MQTT disconnected (%s); reconnecting every second", reason_code)

    def _on_report(self, topic: bytes, payload: bytes, qos: int, mid: int) -> None:
        now = time.time()
        part = self.partition
        fast = None if part is None else topic_partition(topic, self._prefix_b, part[1])
        mine = part is None or fast == part[0]
        raw = None
        if mine or fast is None:
            try:
                name = topic.decode()
            except UnicodeDecodeError:  # kept as unroutable, like any topic we cannot read
                name = topic.decode(errors="replace")
            raw = route(name, payload, now, self.settings.mqtt_topic_prefix)
            if not mine:  # a topic only route can read
                mine = partition_of(raw.device_id, part[1]) == part[0]  # type: ignore[index]
        if not mine:
            # Another worker's device: that worker's own session holds this report too. It is
            # acknowledged with the batch it arrived in, in arrival order: acknowledging it at
            # once, ahead of earlier reports still being committed, would let the broker's
            # 16-bit message ids wrap around onto those (Mosquitto numbers each message sent
            # and does not skip ids still unacknowledged), and an acknowledgement could then
            # release a report that is not committed yet.
            self._pending.append(Inbound(mid, qos, None, now))
            self._others += 1  # counted into OTHERS once per batch (its lock costs per call)
            return
        self._pending.append(Inbound(mid, qos, raw, now))  # type: ignore[arg-type]
        self._own += 1
        if self._oldest_at is None:
            self._oldest_at = now

    def _connect(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.settings.mqtt_session_expiry_s
        # Ten batches in flight: enough to keep the pipeline fed, few enough that the message
        # ids (16 bits) never wrap among unacknowledged ones (deploy/mosquitto/mosquitto.conf).
        props.ReceiveMaximum = 20000
        while not self._stop.is_set():
            try:
                self.client.connect(
                    self.settings.mqtt_host, self.settings.mqtt_port, keepalive=30,
                    clean_start=False, properties=props,
                )
                return
            except OSError as e:
                log.warning("MQTT broker not reachable (%s); retrying", e)
                self._stop.wait(2)

    def _pump(self, timeout: float) -> None:
        """Run the MQTT client once: wait up to `timeout` for the socket (not when bytes read
        before wait in the client's buffer), read up to a batch of packets (on_report appends
        them to the pending list), send what is queued (acknowledgements, keep-alive).
        After a lost connection, reconnect at most every second; the broker sends
        what was not acknowledged again, to this session."""
        if self.client.buffered:  # read before, not yet handled: no select() would see it
            rc = self.client.loop_read()
            if rc == mqtt.MQTT_ERR_SUCCESS:
                rc = self.client.loop_write()
            if rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN):
                rc = self.client.loop_misc()
        else:
            rc = self.client.loop(timeout=timeout)
        if rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN):
            return
        self.connected.clear()
        now = time.monotonic()
        if now < self._reconnect_at:
            self._stop.wait(min(max(timeout, 0.01), self._reconnect_at - now))
            return
        self._reconnect_at = now + 1.0
        try:
            self.client.reconnect()
        except OSError as e:
            log.warning("MQTT broker not reachable (%s); retrying", e)

    def _wait(self, seconds: float) -> None:
        """Let time pass (a retry's backoff) while keeping the MQTT connection alive; read only
        while fewer than two batches wait, so a long outage piles up at the broker, not here."""
        end = time.monotonic() + seconds
        while not self._stop.is_set() and (left := end - time.monotonic()) > 0:
            self.health.beat()  # waiting out an outage is alive (not ready: `_failing`)
            if len(self._pending) < 2 * self.settings.batch_max_messages:
                self._pump(min(left, 0.5))
            else:
                self._stop.wait(min(left, 0.5))

    def _next_batch(self) -> list[Inbound]:
        """The received messages up to and including the batch_max_messages-th of this
        worker's own, once the first has waited batch_max_wait_ms or the batch is full (with
        the other partitions' messages among them, to be acknowledged in their turn); [] after
        half a second without any message."""
        idle_until = time.monotonic() + 0.5
        self.health.beat()
        while not self._pending:
            if self._stop.is_set() or time.monotonic() >= idle_until:
                return []
            self._pump(max(idle_until - time.monotonic(), 0.0))
        n = self.settings.batch_max_messages
        fill_until = time.monotonic() + self.settings.batch_max_wait_ms / 1000
        while self._own < n and not self._stop.is_set() and \
                (left := fill_until - time.monotonic()) > 0:
            self._pump(left)
        cut, own = len(self._pending), 0
        for i, b in enumerate(self._pending):
            if b.raw is not None:
                own += 1
                if own == n:
                    cut = i + 1
                    break
        batch, self._pending = self._pending[:cut], self._pending[cut:]
        self._own -= own
        return batch

    def run(self) -> None:
        """Process until `stop()`; database or Redis outages are retried, never acked early."""
        self._pipeline: Pipeline | None = None
        self._connect()
        try:
            while not self._stop.is_set():
                waiting_since = time.time()
                batch = self._next_batch()
                if not batch:
                    # Nothing came for a while: everything received before the wait began is
                    # committed, if the broker had a live subscription to give it to us.
                    if self.connected.is_set() and waiting_since - self._subscribed_at > 1.0:
                        self._watermark(waiting_since)
                    continue
                began = time.monotonic()
                mine = [b for b in batch if b.raw is not None]
                self._in_batch = len(mine)
                self._received.inc(len(mine))
                if mine and not self._handle(mine):
                    break  # stopping with an uncommitted batch: the broker will redeliver it
                # In arrival order (MQTT 4.6), the other partitions' messages in their turn.
                self.client.ack_many([b.mid for b in batch if b.qos > 0])
                self.processed += len(mine)
                self._committed.inc(len(mine))
                self._in_batch = 0
                spent = time.monotonic() - began
                self._batch_hist.observe(spent)
                self._busy_s += spent
                self._oldest_at = next((b.at for b in self._pending if b.raw is not None), None)
                if self._others:
                    OTHERS.inc(self._others)
                    self._others = 0
                self._stats(len(mine), spent, self._own)
                # First in, first out: all received up to this batch's last is committed.
                self._watermark(batch[-1].at)
        finally:
            with contextlib.suppress(Exception):  # whatever state the connection is in
                self.client.loop_write()
                self.client.disconnect()
                self.client.loop(timeout=0.1)
            if self._pipeline is not None:
                _close_quietly(self._pipeline)
            if self._redis is not None:
                self._redis.close()

    def _stats(self, size: int, seconds: float, waiting: int) -> None:
        """A line a minute: batches, their mean size and processing time, and what waits."""
        st = self._batch_stats
        st[0] += 1
        st[1] += size
        st[2] += seconds
        if time.monotonic() - self._stats_at >= 60:
            log.info("last %.0f s: %d messages in %d batches (mean %.0f, %.1f ms each); %d "
                     "received and waiting", time.monotonic() - self._stats_at, st[1], st[0],
                     st[1] / st[0], 1000 * st[2] / st[0], waiting)
            self._batch_stats, self._stats_at = [0, 0, 0.0], time.monotonic()

    def _watermark(self, t: float) -> None:
        """Tell the silence checks that everything this worker received before `t` is
        committed (alerts/silences.py, `ingest_watermark`); at most four times a second."""
        now = time.monotonic()
        if now - self._watermark_at < 0.25:
            return
        self._watermark_at = now
        try:
            if self._redis is None:
                self._redis = redisconn.sync_client(self.settings, socket_timeout=2)
            write_watermark(self._redis, self.settings.redis_prefix, self.client_id, t)
            if (span := now - self._busy_since) >= 2.0:
                write_load(self._redis, self.settings.redis_prefix, self.client_id,
                           min(self._busy_s / span, 1.0))
                self._busy_s, self._busy_since = 0.0, now
        except redis.RedisError as e:  # the next batch retries it; nothing else depends on it
            log.debug("watermark not written: %s", e)

    def _handle(self, batch: list[Inbound]) -> bool:
        """Commit or dead-letter every message of the batch; False if stopped before that."""
        delay = self.settings.ingest_retry_min_s
        one_by_one = False
        while not self._stop.is_set():
            try:
                if self._pipeline is None:
                    self._pipeline = Pipeline.connect(self.settings,
                                                      owner_token=f"mqtt:{self.client_id}")
                if one_by_one:
                    results = self._one_by_one(self._pipeline, batch)
                else:
                    results = self._pipeline.process([b.raw for b in batch if b.raw is not None])
                self._failing = None
                for r in results:
                    if not r.ok:
                        DEAD.labels(self.client_id, r.reason or "unknown").inc()
                return True
            except Exception as e:
                reason = transient_reason(e)
                if self._pipeline is not None:
                    # Never ack what is not committed: drop the connections, start clean.
                    _close_quietly(self._pipeline)
                    self._pipeline = None
                if reason is None and not one_by_one:
                    # Something in the batch breaks the pipeline: find it, message by message.
                    log.warning("batch of %d failed (%r); processing it message by message",
                                len(batch), e)
                    one_by_one = True
                    continue
                RETRIES.labels(reason or "unexpected").inc()
                self._failing = reason or "unexpected"
                log.warning("batch of %d failed (%s: %s); retrying in %.2f s", len(batch),
                            reason or "unexpected", e, delay)
                self._wait(delay)
                delay = min(delay * 2, self.settings.ingest_retry_max_s)
        return False

    @staticmethod
    def _one_by_one(pipeline: Pipeline, batch: list[Inbound]) -> list[MessageResult]:
        """Each message in its own transaction; one that raises anything but a transient
        failure is dead-lettered with the exception as its reason (transient ones propagate:
        the whole batch is retried)."""
        results: list[MessageResult] = []
        for raw in [b.raw for b in batch if b.raw is not None]:
            try:
                results += pipeline.process([raw])
            except Exception as e:
                if transient_reason(e) is not None:
                    raise
                log.exception("message on %s cannot be processed; dead-lettered", raw.topic)
                if not pipeline.conn.closed:
                    pipeline.conn.rollback()
                results.append(pipeline.reject_failed(raw, e))
                POISONED.inc()
        return results

    def stop(self) -> None:
        """Ask `run()` to finish after the current batch."""
        self._stop.set()


def _close_quietly(p: Pipeline) -> None:
    # Closing a broken connection may raise anything; it is being thrown away regardless.
    with contextlib.suppress(Exception):
        p.close()


def main() -> None:
    """Entry point: `python -m ingest.mqtt_worker`."""
    settings = get_settings()
    setup_logging("ingest", settings.log_format)
    tune_gc(settings.gc_threshold)
    worker = MqttIngestWorker(settings)
    if settings.health_port:
        worker.health.start(settings.health_port, settings.health_host)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    signal.signal(signal.SIGINT, lambda *_: worker.stop())
    worker.run()
    log.info("ingest worker stopped after %d messages", worker.processed)


if __name__ == "__main__":
    main()
