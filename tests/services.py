"""Running the real processes inside tests: API server, workers, MQTT phones."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import uvicorn
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from store.backup import free_port
from store.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def until(pred: Callable[[], object], timeout: float) -> bool:
    """Poll `pred` until it holds or `timeout` seconds passed; whether it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return bool(pred())


@contextlib.contextmanager
def api_server(settings: Settings) -> Iterator[str]:
    """The real app under uvicorn on a free port; yields its base URL."""
    from api.app import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port,
                                           log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline, "API server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        t.join(10)


@contextlib.contextmanager
def in_thread(worker: object) -> Iterator[object]:
    """Run a worker's `run()` in a thread; `stop()` it afterwards."""
    t = threading.Thread(target=worker.run, daemon=True)  # type: ignore[attr-defined]
    t.start()
    try:
        yield worker
    finally:
        worker.stop()  # type: ignore[attr-defined]
        t.join(15)


def worker_env(settings: Settings, client_id: str) -> dict[str, str]:
    """Environment for a worker subprocess that uses the test database, Redis prefix and broker."""
    return {
        **os.environ,
        "CCS_ENVIRONMENT": settings.environment.value,
        "CCS_SECRET_KEY": settings.secret_key,
        "CCS_DATABASE_URL": settings.database_url,
        "CCS_REDIS_URL": settings.redis_url,
        "CCS_REDIS_PREFIX": settings.redis_prefix,
        "CCS_MQTT_HOST": settings.mqtt_host,
        "CCS_MQTT_PORT": str(settings.mqtt_port),
        "CCS_MQTT_CLIENT_ID": client_id,
        "CCS_MQTT_TOPIC_PREFIX": settings.mqtt_topic_prefix,
        "CCS_BATCH_MAX_WAIT_MS": "5",
        "CCS_WEBHOOK_ALLOW_PRIVATE": str(settings.webhook_allow_private).lower(),
    }


INGEST_WORKER_ID = "w1"


def ingest_process_client_id(client_id: str) -> str:
    """The MQTT client id of `start_ingest_process(settings, client_id, ...)`'s worker."""
    return f"{client_id}-{INGEST_WORKER_ID}"


def start_ingest_process(settings: Settings, client_id: str, log_path: str) -> subprocess.Popen[bytes]:
    """`python -m ingest` as a separate process (so it can be killed for real), logging to a file;
    a restarted one resumes the same MQTT session (`ingest_process_client_id`)."""
    env = {**worker_env(settings, client_id), "CCS_INGEST_WORKER_ID": INGEST_WORKER_ID}
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "ingest"], env=env,
                                stdout=log, stderr=subprocess.STDOUT)


def forget_session(settings: Settings, client_id: str) -> None:
    """Remove a persistent MQTT session left on the broker by a test worker."""
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                    protocol=mqtt.MQTTv5)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    c.connect(settings.mqtt_host, settings.mqtt_port, clean_start=True, properties=props)
    c.loop_start()
    time.sleep(0.2)
    c.disconnect()
    c.loop_stop()


class Phone:
    """A phone speaking the native protocol over the real broker (QoS 1)."""

    def __init__(self, settings: Settings, device_id: str) -> None:
        self.device_id = device_id
        self.prefix = settings.mqtt_topic_prefix
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id=f"phone-{device_id}", protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.connect(settings.mqtt_host, settings.mqtt_port)
        self.client.loop_start()

    def report(self, lon: float, lat: float, t: float, accuracy: float = 10.0,
               crs: str = "gcj02") -> mqtt.MQTTMessageInfo:
        body = {"time": t, "lon": lon, "lat": lat, "accuracy": accuracy, "crs": crs}
        topic = f"{self.prefix}devices/{self.device_id}/location"
        return self.client.publish(topic, orjson.dumps(body), qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def assert_nothing_lost(res: dict[str, Any], report: str) -> None:
    """A fault-injection run's promises: no broker-acknowledged fix lost, no alert opened twice,
    every phone told to stop alerted exactly once, none that kept reporting called silent."""
    assert res["lost_acked_fixes"] == 0, report
    assert res["alerts_opened_twice"] == 0, report
    assert res["silences_not_alerted"] == 0 and res["silences_alerted_twice"] == 0, report
    assert res["false_silence_alerts"] == 0, report


def chaos_run(out_dir: Path, *args: str) -> tuple[dict[str, Any], str]:
    """`python -m simulators.chaos *args` to the end; its counts (the --json file) and the tail
    of its report."""
    out = out_dir / "chaos.json"
    run = subprocess.run([sys.executable, "-m", "simulators.chaos", *args, "--json", str(out)],
                         cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                         timeout=600)
    assert out.exists(), f"the run did not finish:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return json.loads(out.read_text()), run.stdout[-4000:]
