"""MQTT ingest worker: persistent MQTT 5 session, QoS 1, acknowledged only after commit.

paho's network thread only queues messages; the main thread drains them in batches through the
pipeline and acknowledges each message after its batch committed. If this process dies, the
broker redelivers everything unacknowledged; duplicates are recognised by (device, fix time).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest.pipeline import Channel, Pipeline, RawMessage
from store.settings import Settings, get_settings
from store.topics import OWNTRACKS_SUBTOPICS, ingest_filters

log = logging.getLogger("ingest.mqtt")



def subscriptions(prefix: str) -> list[tuple[str, int]]:
    """Topic filters of the ingest worker (QoS 1): store/topics.py."""
    return [(f, 1) for f in ingest_filters(prefix)]


@dataclass(slots=True)
class Inbound:
    """A received MQTT message waiting for its batch."""

    mid: int
    qos: int
    raw: RawMessage


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
        self.client_id = client_id or self.settings.mqtt_client_id
        self.inbox: queue.Queue[Inbound] = queue.Queue()
        self._stop = threading.Event()
        self.connected = threading.Event()
        self.processed = 0
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if self.settings.mqtt_username:
            self.client.username_pw_set(self.settings.mqtt_username, self.settings.mqtt_password)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        if reason_code.is_failure:
            log.error("MQTT connect refused: %s", reason_code)
            return
        client.subscribe(subscriptions(self.settings.mqtt_topic_prefix))
        log.info("MQTT connected (session present: %s)", flags.session_present)
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        self.connected.clear()
        if not self._stop.is_set():
            log.warning("MQTT disconnected (%s); paho reconnects", reason_code)

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:  # type: ignore[no-untyped-def]
        self.inbox.put(Inbound(msg.mid, msg.qos, route(msg.topic, bytes(msg.payload), time.time(),
                                                   self.settings.mqtt_topic_prefix)))

    def _connect(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.settings.mqtt_session_expiry_s
        props.ReceiveMaximum = 65535  # let the broker keep a whole batch in flight
        self.client.reconnect_delay_set(min_delay=1, max_delay=10)
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

    def _next_batch(self) -> list[Inbound]:
        try:
            first = self.inbox.get(timeout=0.5)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.settings.batch_max_wait_ms / 1000
        while len(batch) < self.settings.batch_max_messages:
            remaining = deadline - time.monotonic()
            try:
                batch.append(self.inbox.get(timeout=max(remaining, 0)) if remaining > 0
                             else self.inbox.get_nowait())
            except queue.Empty:
                break
        return batch

    def run(self) -> None:
        """Process until `stop()`; database or Redis outages are retried, never acked early."""
        pipeline: Pipeline | None = None
        self._connect()
        self.client.loop_start()
        try:
            while not self._stop.is_set():
                batch = self._next_batch()
                if not batch:
                    continue
                failures = 0
                while not self._stop.is_set():
                    try:
                        if pipeline is None:
                            pipeline = Pipeline.connect(self.settings)
                        if failures >= 2:
                            # The batch keeps failing while the services answer: find the
                            # message that cannot be stored and dead-letter it alone, so one
                            # poison message never holds up the city.
                            self._one_by_one(pipeline, batch)
                        else:
                            pipeline.process([b.raw for b in batch])
                        break
                    except Exception:
                        # Never ack what is not committed: drop the connections and retry.
                        failures += 1
                        log.exception("batch of %d failed (%d); retrying", len(batch), failures)
                        if pipeline is not None:
                            _close_quietly(pipeline)
                            pipeline = None
                        self._stop.wait(1)
                else:
                    break  # stopping with an uncommitted batch: the broker will redeliver it
                for b in batch:
                    if b.qos > 0:
                        self.client.ack(b.mid, b.qos)
                self.processed += len(batch)
        finally:
            self.client.disconnect()
            self.client.loop_stop()
            if pipeline is not None:
                _close_quietly(pipeline)

    @staticmethod
    def _one_by_one(pipeline: Pipeline, batch: list[Inbound]) -> None:
        for b in batch:
            try:
                pipeline.process([b.raw])
            except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as e:
                # The data itself is refused by the database (a service outage raises other
                # errors and is retried whole): keep the message with the reason.
                log.error("message on %s cannot be stored: %s", b.raw.topic, e)
                pipeline.conn.rollback()
                pipeline.reject(b.raw, "storage_error", str(e))

    def stop(self) -> None:
        """Ask `run()` to finish after the current batch."""
        self._stop.set()


def _close_quietly(p: Pipeline) -> None:
    # Closing a broken connection may raise anything; it is being thrown away regardless.
    with contextlib.suppress(Exception):
        p.close()


def main() -> None:
    """Entry point: `python -m ingest.mqtt_worker`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    worker = MqttIngestWorker()
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    signal.signal(signal.SIGINT, lambda *_: worker.stop())
    worker.run()
    log.info("ingest worker stopped after %d messages", worker.processed)


if __name__ == "__main__":
    main()
