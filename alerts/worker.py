"""Alert worker: relays the transactional outbox to the live feed (a Redis stream).

Woken by LISTEN/NOTIFY within milliseconds of an alert's commit, and sweeping every few seconds
so a missed notification (worker restart, dropped connection) delays nothing for long. A row is
marked published only after the stream has it; a crash in between republishes it, and every
entry carries its outbox id so consumers can drop the repeat.
"""

from __future__ import annotations

import logging
import signal
import threading

import orjson
import paho.mqtt.client as mqtt
import psycopg
import redis
from paho.mqtt.enums import CallbackAPIVersion

from alerts.scheduler import Scheduler
from alerts.service import OUTBOX_CHANNEL
from store import redisconn
from store.observe import Health, fix_id, setup_logging
from store.runtime import tune_gc
from store.settings import Settings, get_settings

log = logging.getLogger("alerts.worker")

FEED_STREAM = "feed"
SWEEP_S = 2.0


def feed_key(settings: Settings) -> str:
    """Redis stream carrying alert events to live consumers (SSE)."""
    return settings.redis_prefix + FEED_STREAM


class CommandPublisher:
    """QoS 1 publisher of device commands (`{prefix}devices/{id}/cmd`), connected lazily."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client: mqtt.Client | None = None

    def publish(self, device_id: str, command: dict[str, object], owntracks: bool = False) -> None:
        """Publish and wait for the broker's acknowledgement (raises on failure)."""
        if self.client is None:
            c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                            client_id=f"{self.settings.mqtt_client_id}-commands",
                            protocol=mqtt.MQTTv5)
            username, password = self.settings.mqtt_commands_credentials
            if username:
                c.username_pw_set(username, password)
            c.connect(self.settings.mqtt_host, self.settings.mqtt_port)
            c.loop_start()
            self.client = c
        p = self.settings.mqtt_topic_prefix
        topic = f"{p}owntracks/{device_id}/{device_id}/cmd" if owntracks else f"{p}devices/{device_id}/cmd"
        info = self.client.publish(topic, orjson.dumps(command), qos=1)
        info.wait_for_publish(10)
        if not info.is_published():
            raise OSError(f"command to {device_id} not acknowledged by the broker")

    def close(self) -> None:
        """Disconnect."""
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None


def relay_once(conn: psycopg.Connection, r: redis.Redis, settings: Settings, limit: int = 500,
               commands: CommandPublisher | None = None) -> int:
    """Publish up to `limit` unpublished outbox rows of each sort; returns how many.

    Alerts go to the live feed first, in their own transaction; device commands follow
    separately, so a broker that is down or slow never holds an alert back.
    """
    n = _relay_alerts(conn, r, settings, limit)
    if commands is not None:
        n += _relay_commands(conn, commands, limit)
    return n


def _relay_alerts(conn: psycopg.Connection, r: redis.Redis, settings: Settings, limit: int) -> int:
    with conn.transaction():
        rows = conn.execute(
            """SELECT id, topic, payload FROM outbox
                WHERE published_at IS NULL AND topic <> 'device.command'
                ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED""",
            (limit,),
        ).fetchall()
        if not rows:
            return 0
        # Alerts of a suspended supervisee are recorded, not announced; a person's step on one
        # (suspending it, acknowledging it...: the payload says `by` whom) is still shown to the
        # colleagues whose consoles list it.
        alert_ids = [p.get("alert_id") for _, t, p in rows if t.startswith("alert.")]
        muted = {a for (a,) in conn.execute(
            "SELECT id FROM alerts WHERE id = ANY(%s) AND suppressed", (alert_ids,))} \
            if alert_ids else set()
        pipe = r.pipeline(transaction=False)
        for oid, topic, payload in rows:
            if topic.startswith("alert.") and payload.get("alert_id") in muted \
                    and payload.get("by") is None:
                continue
            pipe.xadd(
                feed_key(settings),
                {"outbox_id": oid, "topic": topic, "payload": orjson.dumps(payload)},
                maxlen=settings.alert_feed_maxlen,
                approximate=True,
            )
        if settings.redis_wait_replicas:
            # Replication is asynchronous: a master killed now could take these entries with
            # it while the rows below say published. WAIT returns once that many replicas have
            # them, or at the timeout; then the rows still count as published (retrying would
            # repeat them on the feed for as long as no replica is connected), and it is logged
            # (docs/high-availability.md).
            pipe.execute_command("WAIT", settings.redis_wait_replicas,
                                 settings.redis_wait_timeout_ms)
        got = pipe.execute()
        if settings.redis_wait_replicas and got and int(got[-1]) < settings.redis_wait_replicas:
            log.warning("alert feed: %d of %d replicas confirmed %d entries within %d ms",
                        int(got[-1]), settings.redis_wait_replicas, len(got) - 1,
                        settings.redis_wait_timeout_ms)
        conn.execute("UPDATE outbox SET published_at = now() WHERE id = ANY(%s)",
                      ([row[0] for row in rows],))
    for oid, topic, payload in rows:  # on the feed: the trail of the fix that caused it
        if topic.startswith("alert."):
            quiet = payload.get("alert_id") in muted and payload.get("by") is None
            log.info("%s %s %s", topic, payload.get("alert_id"),
                     "recorded, not announced (supervision suspended)" if quiet else
                     "on the live feed", extra={
                         "fix_id": fix_id(payload["device_id"], payload["fix_time"])
                         if payload.get("device_id") and payload.get("fix_time") else None,
                         "alert_id": payload.get("alert_id"), "outbox_id": oid})
    return len(rows)


def _relay_commands(conn: psycopg.Connection, commands: CommandPublisher, limit: int) -> int:
    done: list[int] = []
    with conn.transaction():
        rows = conn.execute(
            """SELECT id, payload FROM outbox
                WHERE published_at IS NULL AND topic = 'device.command'
                ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED""",
            (limit,),
        ).fetchall()
        try:
            for oid, payload in rows:
                for dev in payload["device_ids"]:
                    commands.publish(dev, {**payload["command"], "command_id": oid})
                    if payload.get("owntracks"):
                        # OwnTracks phones listen on their own topic and know this command.
                        commands.publish(dev, {"_type": "cmd", "action": "reportLocation"},
                                         owntracks=True)
                done.append(oid)
        except (OSError, RuntimeError, ValueError):
            # The broker is away: what was sent is marked, the rest waits for the next round.
            log.warning("device commands wait: the MQTT broker does not answer", exc_info=True)
            commands.close()
        if done:
            conn.execute("UPDATE outbox SET published_at = now() WHERE id = ANY(%s)", (done,))
    return len(done)


class AlertWorker:
    """Runs the outbox relay and the leader-elected scheduler until stopped."""

    def __init__(self, settings: Settings | None = None, schedule: bool = True) -> None:
        self.settings = settings or get_settings()
        self.schedule = schedule  # run the (leader-elected) time-driven jobs too
        self._stop = threading.Event()
        self.relayed = 0
        self.commands = CommandPublisher(self.settings)
        self.connected = False
        self.health = Health("alerts", lambda: (
            (True, "relaying the outbox") if self.connected else
            (False, "no database or Redis connection")))

    def stop(self) -> None:
        """Finish after the current round."""
        self._stop.set()

    def run(self) -> None:
        """Relay loop with reconnection on database or Redis failure."""
        scheduler = Scheduler(self.settings) if self.schedule else None
        if scheduler is not None:
            scheduler.start()
        try:
            while not self._stop.is_set():
                try:
                    self._serve()
                except (psycopg.Error, redis.RedisError, OSError):
                    self.connected = False
                    self.health.beat()
                    log.exception("alert worker lost a connection; reconnecting")
                    self.commands.close()
                    self._stop.wait(1)
        finally:
            self.commands.close()
            if scheduler is not None:
                scheduler.stop()

    def _serve(self) -> None:
        r = redisconn.sync_client(self.settings)
        with psycopg.connect(self.settings.psycopg_dsn, autocommit=True) as listen_conn, \
                psycopg.connect(self.settings.psycopg_dsn) as conn:
            listen_conn.execute(f"LISTEN {OUTBOX_CHANNEL}")
            while not self._stop.is_set():
                while (n := relay_once(conn, r, self.settings, commands=self.commands)) > 0:
                    self.relayed += n
                self.connected = True
                self.health.beat()
                # Wait for the next NOTIFY (or the sweep interval), then drain everything.
                for _ in listen_conn.notifies(timeout=SWEEP_S, stop_after=1):
                    pass


def main() -> None:
    """Entry point: `python -m alerts.worker`."""
    settings = get_settings()
    setup_logging("alerts", settings.log_format)
    tune_gc(settings.gc_threshold)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # one line per job run is noise
    worker = AlertWorker(settings)
    if settings.health_port:
        worker.health.start(settings.health_port, settings.health_host)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    signal.signal(signal.SIGINT, lambda *_: worker.stop())
    log.info("alert worker started")
    worker.run()
    log.info("alert worker stopped after relaying %d events", worker.relayed)


if __name__ == "__main__":
    main()
